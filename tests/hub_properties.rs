//! Property tests of the connection manager: any interleaving of connect,
//! log in (or change user), join, leave, disconnect and kick leaves the
//! hub's indexes — connections, users online, room members and their
//! counts, the rooms with members — as a plain model of the same steps says,
//! and every join or leave reports the membership change the model expects.

use proptest::prelude::*;
use roomcast::hub::{Connection, Hub, Identity, Role};
use roomcast::protocol::{CloseReason, User, UserKind};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const SLOTS: usize = 6;
const USERS: [&str; 3] = ["ann", "bob", "cy"];
const ROOMS: [&str; 3] = ["r1", "r2", "r3"];

#[derive(Debug, Clone)]
enum Step {
    Connect(usize),
    LogIn(usize, usize),
    Join(usize, usize),
    Leave(usize, usize),
    Disconnect(usize),
    Kick(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..SLOTS).prop_map(Step::Connect),
        (0..SLOTS, 0..USERS.len()).prop_map(|(slot, user)| Step::LogIn(slot, user)),
        (0..SLOTS, 0..ROOMS.len()).prop_map(|(slot, room)| Step::Join(slot, room)),
        (0..SLOTS, 0..ROOMS.len()).prop_map(|(slot, room)| Step::Leave(slot, room)),
        (0..SLOTS).prop_map(Step::Disconnect),
        (0..SLOTS).prop_map(Step::Kick),
    ]
}

fn identity(user: &str) -> Identity {
    Identity {
        user: User {
            id: user.into(),
            username: user.into(),
            kind: UserKind::User,
        },
        role: Role::User,
        expires_at: None,
    }
}

/// What each connection slot holds, as the model sees it.
#[derive(Debug, Default, Clone)]
struct Slot {
    user: Option<&'static str>,
    rooms: BTreeSet<&'static str>,
}

#[derive(Default)]
struct Model {
    slots: BTreeMap<usize, Slot>,
}

impl Model {
    fn users_in(&self, room: &str) -> BTreeSet<&'static str> {
        self.slots
            .values()
            .filter(|slot| slot.rooms.contains(room))
            .filter_map(|slot| slot.user)
            .collect()
    }

    fn connections_in(&self, room: &str) -> usize {
        self.slots
            .values()
            .filter(|slot| slot.rooms.contains(room))
            .count()
    }

    fn connections_of(&self, user: &str) -> usize {
        self.slots
            .values()
            .filter(|slot| slot.user == Some(user))
            .count()
    }

    fn online(&self) -> BTreeSet<&'static str> {
        self.slots.values().filter_map(|slot| slot.user).collect()
    }
}

fn check(hub: &Hub, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(hub.connections().len(), model.slots.len());
    prop_assert_eq!(hub.online_users(), model.online().len());
    for user in USERS {
        prop_assert_eq!(
            hub.user_connections(user),
            model.connections_of(user),
            "{}",
            user
        );
    }
    let mut live: Vec<String> = hub
        .room_names()
        .iter()
        .map(|room| room.to_string())
        .collect();
    live.sort();
    let expected: Vec<String> = ROOMS
        .iter()
        .filter(|room| model.connections_in(room) > 0)
        .map(|room| room.to_string())
        .collect();
    prop_assert_eq!(live, expected);
    for room in ROOMS {
        let (members, count) = hub.room_members(room, 0, usize::MAX);
        let ids: BTreeSet<String> = members.iter().map(|user| user.id.to_string()).collect();
        let expected: BTreeSet<String> =
            model.users_in(room).iter().map(|u| u.to_string()).collect();
        prop_assert_eq!(count, expected.len(), "{}", room);
        prop_assert_eq!(ids, expected, "{}", room);
        prop_assert_eq!(
            hub.room_connection_count(room),
            model.connections_in(room),
            "{}",
            room
        );
    }
    Ok(())
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let hub = Hub::new(64);
    let mut model = Model::default();
    let mut connections: BTreeMap<usize, Arc<Connection>> = BTreeMap::new();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], 4000).into();
    for step in steps {
        match step {
            Step::Connect(slot) => {
                if let std::collections::btree_map::Entry::Vacant(free) = connections.entry(slot) {
                    free.insert(hub.register(addr, None, None));
                    model.slots.insert(slot, Slot::default());
                }
            }
            Step::LogIn(slot, user) => {
                let (Some(connection), Some(state)) =
                    (connections.get(&slot), model.slots.get_mut(&slot))
                else {
                    continue;
                };
                let user = USERS[user];
                // As the handlers do: a connection that changes user leaves
                // its rooms first (membership is kept per user).
                if state.user != Some(user) {
                    let left = hub.leave_all_rooms(connection);
                    prop_assert_eq!(left.len(), state.rooms.len());
                    state.rooms.clear();
                }
                hub.set_identity(connection, identity(user));
                state.user = Some(user);
            }
            Step::Join(slot, room) => {
                let (Some(connection), Some(state)) =
                    (connections.get(&slot), model.slots.get(&slot))
                else {
                    continue;
                };
                let room = ROOMS[room];
                let change = hub.join_room(connection, room);
                match state.user {
                    None => prop_assert!(change.is_none(), "joined without a user"),
                    Some(_) if state.rooms.contains(room) => prop_assert!(change.is_none()),
                    Some(user) => {
                        let first = !model.users_in(room).contains(user);
                        let change = change.ok_or_else(|| TestCaseError::fail("join refused"))?;
                        prop_assert_eq!(change.user_changed, first);
                        if let Some(state) = model.slots.get_mut(&slot) {
                            state.rooms.insert(room);
                        }
                    }
                }
            }
            Step::Leave(slot, room) => {
                let Some(connection) = connections.get(&slot) else {
                    continue;
                };
                let room = ROOMS[room];
                let departure = hub.leave_room(connection, room);
                let was_in = model
                    .slots
                    .get(&slot)
                    .is_some_and(|s| s.rooms.contains(room));
                prop_assert_eq!(departure.is_some(), was_in);
                if let Some(departure) = departure {
                    if let Some(state) = model.slots.get_mut(&slot) {
                        state.rooms.remove(room);
                    }
                    let user = model.slots.get(&slot).and_then(|s| s.user);
                    let still = user.is_some_and(|user| model.users_in(room).contains(user));
                    prop_assert_eq!(departure.last_of_user, !still);
                    prop_assert_eq!(departure.emptied, model.connections_in(room) == 0);
                }
            }
            Step::Disconnect(slot) | Step::Kick(slot) => {
                let Some(connection) = connections.remove(&slot) else {
                    continue;
                };
                if matches!(step, Step::Kick(_)) {
                    prop_assert!(connection.close(CloseReason::KICKED));
                }
                let state = model.slots.remove(&slot).unwrap_or_default();
                let (left, offline) = hub.unregister(&connection);
                prop_assert_eq!(left.len(), state.rooms.len());
                let gone = state
                    .user
                    .filter(|user| model.connections_of(user) == 0)
                    .map(str::to_owned);
                prop_assert_eq!(offline.map(|user| user.id.to_string()), gone);
            }
        }
        check(&hub, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_interleaving_keeps_the_indexes_consistent(
        steps in proptest::collection::vec(step(), 1..80)
    ) {
        run(steps)?;
    }
}
