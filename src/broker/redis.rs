//! Several nodes on one Redis: every broadcast is delivered to this node's
//! connections at once and published once to Redis (`PUBLISH`), whence the
//! other nodes that have an interest deliver it to theirs.
//!
//! Channels (under the deployment's namespace, `roomcast` by default):
//! `roomcast:room:{room}` for a room, which a node subscribes to while it
//! has members in the room; `roomcast:everyone` (global chat) and
//! `roomcast:online` (online announcements), which every node subscribes
//! to. One Redis message per broadcast, however many nodes and recipients.
//!
//! On a Redis Cluster (`redis-cluster://...`) a room's channel is a shard
//! channel (`SSUBSCRIBE`/`SPUBLISH`), which lives on the shard that owns
//! it; the channels every node hears are classic ones. On one Redis rooms
//! use classic channels too (see [`super::connection`]). Every key carries
//! the namespace as a hash tag, so the keys a script or pipeline touches
//! together are on one shard.

use super::Broker;
use super::connection::{Connection, describe};
use super::envelope::{self, Envelope};
use super::sequencer::{Sequencer, Stored};
use crate::hub::{Audience, Hub, OutFrame, RoomInterest};
use crate::store::BoxFuture;
use crate::store::MessageStore;
use bytes::Bytes;
use redis::{PushInfo, PushKind, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The names of a deployment's channels, all under its namespace.
#[derive(Debug, Clone)]
struct Channels {
    namespace: String,
}

impl Channels {
    fn room(&self, room: &str) -> String {
        format!("{}:room:{room}", self.namespace)
    }

    /// Global chat.
    fn everyone(&self) -> String {
        format!("{}:everyone", self.namespace)
    }

    /// Online announcements (to online subscribers).
    fn online(&self) -> String {
        format!("{}:online", self.namespace)
    }

    /// Requests between nodes (kicks, evictions), heard by every node.
    fn control(&self) -> String {
        format!("{}:control", self.namespace)
    }

    /// Live nodes, scored by the time of their last report (ms). Keys carry
    /// the namespace as a hash tag, so that on a Redis Cluster the keys a
    /// script touches together live on one shard.
    fn nodes(&self) -> String {
        format!("{{{}}}:nodes", self.namespace)
    }

    /// Each node's last report, by node id.
    fn reports(&self) -> String {
        format!("{{{}}}:reports", self.namespace)
    }

    /// Users online anywhere: user id → the number of nodes they are on.
    fn online_users(&self) -> String {
        format!("{{{}}}:online", self.namespace)
    }

    /// The users online on one node (to count them off if it dies).
    fn node_users(&self, node: &str) -> String {
        format!("{{{}}}:users:{node}", self.namespace)
    }

    /// Users online anywhere: user id → the user object (for announcing a
    /// dead node's users as gone).
    fn who(&self) -> String {
        format!("{{{}}}:who", self.namespace)
    }

    /// A room's members on every node: `{node}|{user id}` → the user.
    fn members(&self, room: &str) -> String {
        format!("{{{}}}:members:{room}", self.namespace)
    }

    /// The rooms one node has recorded members of (to count them off if it
    /// dies).
    fn node_rooms(&self, node: &str) -> String {
        format!("{{{}}}:rooms:{node}", self.namespace)
    }

    /// Connections per user on every node: user id → count.
    fn connections(&self) -> String {
        format!("{{{}}}:connections", self.namespace)
    }

    /// Connections per user on one node (to count them off if it dies).
    fn node_connections(&self, node: &str) -> String {
        format!("{{{}}}:connections:{node}", self.namespace)
    }

    /// Answers to one node's requests.
    fn replies(&self, node: &str) -> String {
        format!("{}:reply:{node}", self.namespace)
    }
}

/// How often a node reports its figures, and how long a report lives.
const REPORT_EVERY: Duration = Duration::from_secs(5);
const REPORT_LIVES_MS: u64 = 15_000;

fn now_ms() -> u64 {
    std::time::UNIX_EPOCH.elapsed().map_or(0, |elapsed| {
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    })
}

/// Changes of users' presence on one node, counted in one call: for each
/// triple of arguments (`+` or `-`, user id, user object), `+` counts the
/// node once for the user (its first connection there) and `-` counts it
/// off (its last one left, or the node died). Returns, per change, the
/// number of nodes the user is on now, or -1 where nothing changed (the
/// node was counted already, or was not).
const CHANGE: &str = r"
local out = {}
for i = 1, #ARGV, 3 do
  local user = ARGV[i + 1]
  local nodes = -1
  if ARGV[i] == '+' then
    if redis.call('SADD', KEYS[2], user) == 1 then
      redis.call('HSET', KEYS[3], user, ARGV[i + 2])
      nodes = redis.call('HINCRBY', KEYS[1], user, 1)
    end
  elseif redis.call('SREM', KEYS[2], user) == 1 then
    nodes = redis.call('HINCRBY', KEYS[1], user, -1)
    if nodes <= 0 then
      redis.call('HDEL', KEYS[1], user)
      redis.call('HDEL', KEYS[3], user)
    end
  end
  out[#out + 1] = nodes
end
return out";

/// Connections logged in (+n) and out (-n) on one node, per user: pairs
/// of arguments (user id, n) added to the node's count (`KEYS[2]`) and the
/// total (`KEYS[1]`); a count never goes below zero, and at zero the field
/// goes.
const COUNT_CONNECTIONS: &str = r"
for i = 1, #ARGV, 2 do
  local user = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  if n < 0 then
    local here = tonumber(redis.call('HGET', KEYS[2], user) or '0')
    n = math.max(n, -here)
  end
  if n ~= 0 then
    if redis.call('HINCRBY', KEYS[2], user, n) <= 0 then
      redis.call('HDEL', KEYS[2], user)
    end
    if redis.call('HINCRBY', KEYS[1], user, n) <= 0 then
      redis.call('HDEL', KEYS[1], user)
    end
  end
end
return 0";

/// Counts off a dead node's connections (`KEYS[2]`) from the total
/// (`KEYS[1]`).
const SWEEP_CONNECTIONS: &str = r"
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if redis.call('HINCRBY', KEYS[1], all[i], -tonumber(all[i + 1])) <= 0 then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('DEL', KEYS[2])
return 0";

/// Announcements counted in one call, at most.
const COUNTED_TOGETHER: usize = 256;

/// A change of a user's presence on this node, to be counted in Redis.
struct Announcement {
    user: crate::protocol::User,
    arrived: bool,
    /// The frame to announce it with; `None`: counted only (recorded again
    /// after Redis came back).
    frame: Option<OutFrame>,
    except: Option<String>,
}

/// What the publishing task sends to Redis, in order.
enum Outgoing {
    /// A broadcast or a request for a channel every node hears.
    Publish(String, Bytes),
    /// A broadcast for a room's channel.
    PublishRoom(String, Bytes),
    /// A record that goes before the broadcasts after it (the members of
    /// rooms).
    Command(redis::Cmd),
}

/// How long a kick waits for the node that holds the connection.
const KICK_PATIENCE: Duration = Duration::from_secs(1);

/// A request or answer on the control channels.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Control {
    /// Close this connection with 4003 if it is yours, and say so.
    Kick {
        origin: String,
        request: u64,
        connection: String,
    },
    /// The connection of request `request` was found and closed.
    Kicked { request: u64 },
    /// A user's first connection in a room on `node` joined it (`joined`),
    /// or their last one there left. Sent on the room's channel.
    Member {
        node: String,
        room: String,
        user: crate::protocol::User,
        joined: bool,
    },
    /// This user was removed from this private room.
    Evict {
        origin: String,
        room: String,
        user: String,
    },
}

/// A user removed from a private room by a request on another node: this
/// node's connections of theirs leave the room (see `server::rooms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub room: String,
    pub user_id: String,
}

/// Kicks waiting for their answer, by request number.
#[derive(Default)]
struct Kicks {
    next: u64,
    waiting: HashMap<u64, oneshot::Sender<()>>,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the Redis broker: {0}")]
pub struct BrokerError(String);

/// Which rooms' channels this node hears, shared by the follower (which
/// subscribes) and joins (which wait for their room's subscription).
#[derive(Default)]
struct Following {
    /// Room channels subscribed to.
    rooms: HashSet<Arc<str>>,
    /// Joins waiting for their room's subscription.
    waiters: HashMap<Arc<str>, Vec<oneshot::Sender<()>>>,
    /// Redis is lost: joins do not wait.
    lost: bool,
}

/// How long a join waits for its room's subscription at most.
const SUBSCRIBE_PATIENCE: Duration = Duration::from_secs(2);

fn lock(following: &Mutex<Following>) -> std::sync::MutexGuard<'_, Following> {
    following.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Broker for several nodes on one Redis.
pub struct RedisBroker {
    hub: Arc<Hub>,
    channels: Channels,
    following: Arc<Mutex<Following>>,
    sequencer: Arc<Sequencer>,
    kicks: Arc<Mutex<Kicks>>,
    /// For reading the other nodes' reports.
    reader: Connection,
    /// Online announcements on their way to be counted, in order.
    announcements: mpsc::UnboundedSender<Announcement>,
    /// Encoded broadcasts on their way to Redis, in publish order.
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// Logins asking how many connections their user has on other nodes.
    connection_queries: mpsc::UnboundedSender<ConnectionQuery>,
}

/// A user id and where to send their connection count on other nodes.
type ConnectionQuery = (Arc<str>, oneshot::Sender<usize>);

/// The broker's tasks, to abort at shutdown.
pub struct RedisTasks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Evictions requested on other nodes, for the server to carry out.
    pub evictions: Option<mpsc::UnboundedReceiver<Eviction>>,
}

impl RedisTasks {
    pub fn abort(&self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl RedisBroker {
    /// Connects to Redis at `url` (RESP3), subscribes to the channels every
    /// node hears, and starts following the hub's rooms. Redis being
    /// unreachable does not stop the start: the node serves its own
    /// connections and keeps trying.
    pub async fn connect(
        url: &str,
        namespace: &str,
        hub: Arc<Hub>,
        store: Arc<dyn MessageStore>,
    ) -> Result<(RedisBroker, RedisTasks), BrokerError> {
        let sequencer = Sequencer::new(hub.clone(), store);
        let (pushes, push_receiver) = mpsc::unbounded_channel::<PushInfo>();
        let subscriber = Connection::open(url, Some(pushes))
            .await
            .map_err(BrokerError)?;
        let publisher = Connection::open(url, None).await.map_err(BrokerError)?;
        let interest = hub
            .watch_rooms()
            .ok_or_else(|| BrokerError("the hub already has a broker".into()))?;
        let channels = Channels {
            namespace: namespace.to_owned(),
        };
        let following = Arc::new(Mutex::new(Following::default()));
        let kicks = Arc::new(Mutex::new(Kicks::default()));
        let (outgoing, queue) = mpsc::unbounded_channel();
        let (evicted, evictions) = mpsc::unbounded_channel();
        let (announcements, announced) = mpsc::unbounded_channel();
        let follower = Follower {
            announcements: announcements.clone(),
            hub: hub.clone(),
            channels: channels.clone(),
            following: following.clone(),
            sequencer: sequencer.clone(),
            kicks: kicks.clone(),
            outgoing: outgoing.clone(),
            evicted,
            connection: subscriber,
            lost: false,
        };
        let presence = Presence {
            connection: publisher.clone(),
            hub: hub.clone(),
            channels: channels.clone(),
            outgoing: outgoing.clone(),
            change: redis::Script::new(CHANGE),
        };
        let logins = hub
            .watch_logins()
            .ok_or_else(|| BrokerError("the hub already has a broker".into()))?;
        let (connection_queries, queries) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(answer_connection_queries(
                publisher.clone(),
                channels.clone(),
                hub.node_id().to_owned(),
                queries,
            )),
            tokio::spawn(count_connections(
                logins,
                channels.clone(),
                hub.node_id().to_owned(),
                outgoing.clone(),
            )),
            tokio::spawn(follower.run(interest, push_receiver)),
            tokio::spawn(presence.clone().run(announced)),
            tokio::spawn(report(publisher.clone(), presence)),
            tokio::spawn(publish(publisher.clone(), queue)),
        ];
        Ok((
            RedisBroker {
                hub,
                channels,
                following,
                sequencer,
                kicks,
                reader: publisher,
                announcements,
                outgoing,
                connection_queries,
            },
            RedisTasks {
                tasks,
                evictions: Some(evictions),
            },
        ))
    }
}

impl Broker for RedisBroker {
    fn publish(&self, audience: Audience, frame: OutFrame, except: Option<&str>) {
        if let Some(bytes) = envelope::encode(self.hub.node_id(), &audience, except, None, &frame) {
            let outgoing = match &audience {
                Audience::Room(room) => Outgoing::PublishRoom(self.channels.room(room), bytes),
                Audience::Everyone => Outgoing::Publish(self.channels.everyone(), bytes),
                Audience::Watchers { .. } => Outgoing::Publish(self.channels.online(), bytes),
            };
            // The task is gone only at shutdown.
            let _ = self.outgoing.send(outgoing);
        }
        self.hub.broadcast(&audience, &frame, except);
    }

    fn publish_stored(&self, message: Stored) {
        let audience = super::sequencer::audience(&message.room);
        let sequence = Some((message.id, message.previous));
        if let Some(bytes) = envelope::encode(
            self.hub.node_id(),
            &audience,
            None,
            sequence,
            &message.frame,
        ) {
            let outgoing = match &audience {
                Audience::Everyone => Outgoing::Publish(self.channels.everyone(), bytes),
                _ => Outgoing::PublishRoom(self.channels.room(&message.room), bytes),
            };
            let _ = self.outgoing.send(outgoing);
        }
        self.sequencer.offer(message);
    }

    fn spans_nodes(&self) -> bool {
        true
    }

    fn kick(&self, connection_id: &str) -> BoxFuture<'static, bool> {
        if super::local::kick_here(&self.hub, connection_id) {
            return Box::pin(std::future::ready(true));
        }
        // Connection ids start with their node's id: one of this node's
        // that is not here is gone.
        let own = connection_id
            .strip_prefix(self.hub.node_id())
            .is_some_and(|rest| rest.starts_with('-'));
        if own {
            return Box::pin(std::future::ready(false));
        }
        let (found, answer) = oneshot::channel();
        let request = {
            let mut kicks = lock_kicks(&self.kicks);
            kicks.next += 1;
            let request = kicks.next;
            kicks.waiting.insert(request, found);
            request
        };
        let control = Control::Kick {
            origin: self.hub.node_id().to_owned(),
            request,
            connection: connection_id.to_owned(),
        };
        self.send_control(self.channels.control(), &control);
        let kicks = self.kicks.clone();
        Box::pin(async move {
            let found = matches!(
                tokio::time::timeout(KICK_PATIENCE, answer).await,
                Ok(Ok(()))
            );
            lock_kicks(&kicks).waiting.remove(&request);
            found
        })
    }

    fn cluster(&self) -> Option<BoxFuture<'static, Option<super::ClusterTotals>>> {
        let mut connection = self.reader.clone();
        let (nodes, reports) = (self.channels.nodes(), self.channels.reports());
        Some(Box::pin(async move {
            let live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(nodes)
                .arg(now_ms().saturating_sub(REPORT_LIVES_MS))
                .arg("+inf")
                .query_async(&mut connection)
                .await
                .ok()?;
            let mut totals = super::ClusterTotals::default();
            if live.is_empty() {
                return Some(totals);
            }
            let figures: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(reports)
                .arg(&live)
                .query_async(&mut connection)
                .await
                .ok()?;
            for figures in figures.into_iter().flatten() {
                if let Ok(node) = serde_json::from_str::<super::ClusterTotals>(&figures) {
                    totals.nodes += 1;
                    totals.active_connections += node.active_connections;
                    totals.total_connections += node.total_connections;
                    totals.online_users += node.online_users;
                }
            }
            Some(totals)
        }))
    }

    fn announce(
        &self,
        user: &crate::protocol::User,
        arrived: bool,
        frame: OutFrame,
        except: Option<&str>,
    ) {
        let _ = self.announcements.send(Announcement {
            user: user.clone(),
            arrived,
            frame: Some(frame),
            except: except.map(str::to_owned),
        });
    }

    fn membership(&self, room: &str, user: &crate::protocol::User, joined: bool) {
        record_member(
            &self.outgoing,
            &self.channels,
            self.hub.node_id(),
            room,
            user,
            joined,
        );
    }

    fn connections_elsewhere(&self, user_id: &str) -> Option<BoxFuture<'static, usize>> {
        let (answer, counted) = oneshot::channel();
        let asked = self.connection_queries.send((user_id.into(), answer));
        Some(Box::pin(async move {
            // Redis away (or the task gone at shutdown): this node's count only.
            match asked {
                Ok(()) => counted.await.unwrap_or(0),
                Err(_) => 0,
            }
        }))
    }

    fn online_elsewhere(
        &self,
        user_ids: Option<&[String]>,
    ) -> Option<BoxFuture<'static, Vec<crate::protocol::User>>> {
        let mut connection = self.reader.clone();
        let who = self.channels.who();
        let user_ids = user_ids.map(<[String]>::to_vec);
        Some(Box::pin(async move {
            // Redis away: this node's own users only.
            let recorded: Vec<String> = match user_ids {
                Some(ids) if ids.is_empty() => Vec::new(),
                Some(ids) => redis::cmd("HMGET")
                    .arg(who)
                    .arg(ids)
                    .query_async::<Vec<Option<String>>>(&mut connection)
                    .await
                    .map(|found| found.into_iter().flatten().collect())
                    .unwrap_or_default(),
                None => redis::cmd("HVALS")
                    .arg(who)
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default(),
            };
            recorded
                .iter()
                .filter_map(|user| serde_json::from_str(user).ok())
                .collect()
        }))
    }

    fn history_read(&self, room: &str, newest: Option<i64>) {
        self.sequencer.start(room, newest.unwrap_or(0));
    }

    fn evict(&self, room: &str, user_id: &str) {
        let control = Control::Evict {
            origin: self.hub.node_id().to_owned(),
            room: room.to_owned(),
            user: user_id.to_owned(),
        };
        self.send_control(self.channels.control(), &control);
    }

    fn following(&self, room: &str) -> Option<BoxFuture<'static, ()>> {
        let mut following = lock(&self.following);
        if following.lost || following.rooms.contains(room) {
            return None;
        }
        let (ready, subscribed) = oneshot::channel();
        following
            .waiters
            .entry(room.into())
            .or_default()
            .push(ready);
        Some(Box::pin(async move {
            let _ = tokio::time::timeout(SUBSCRIBE_PATIENCE, subscribed).await;
        }))
    }
}

impl RedisBroker {
    fn send_control(&self, channel: String, control: &Control) {
        if let Ok(text) = serde_json::to_vec(control) {
            let _ = self
                .outgoing
                .send(Outgoing::Publish(channel, Bytes::from(text)));
        }
    }
}

fn lock_kicks(kicks: &Mutex<Kicks>) -> std::sync::MutexGuard<'_, Kicks> {
    kicks.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts users online across nodes and announces their arrivals and
/// departures to every node's watchers when they change whether the user
/// is online anywhere.
#[derive(Clone)]
struct Presence {
    connection: Connection,
    hub: Arc<Hub>,
    channels: Channels,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    change: redis::Script,
}

impl Presence {
    async fn run(mut self, mut announced: mpsc::UnboundedReceiver<Announcement>) {
        let node = self.hub.node_id().to_owned();
        let mut batch = Vec::with_capacity(COUNTED_TOGETHER);
        while announced.recv_many(&mut batch, COUNTED_TOGETHER).await > 0 {
            let changes: Vec<(bool, &crate::protocol::User)> = batch
                .iter()
                .map(|announcement| (announcement.arrived, &announcement.user))
                .collect();
            let counted = self.count(&node, &changes).await;
            for (n, announcement) in batch.drain(..).enumerate() {
                let nodes = counted.as_ref().and_then(|counted| counted.get(n).copied());
                // Announced when the user came online anywhere (1 node) or
                // went offline everywhere (0); without Redis, as this node
                // sees it.
                let tell = match nodes {
                    Some(nodes) if announcement.arrived => nodes == 1,
                    Some(nodes) => nodes == 0,
                    None => true,
                };
                if tell && let Some(frame) = &announcement.frame {
                    self.tell(
                        &announcement.user,
                        frame,
                        announcement.except.as_deref(),
                        nodes.is_some(),
                    );
                }
            }
        }
    }

    /// Counts `changes` of users' presence on `node` (`true`: arrived);
    /// returns the number of nodes each user is on now (-1: no change), or
    /// `None` when Redis cannot say (then nothing was counted).
    async fn count(
        &mut self,
        node: &str,
        changes: &[(bool, &crate::protocol::User)],
    ) -> Option<Vec<i64>> {
        let mut invocation = self.change.prepare_invoke();
        invocation
            .key(self.channels.online_users())
            .key(self.channels.node_users(node))
            .key(self.channels.who());
        for (arrived, user) in changes {
            let who = if *arrived {
                serde_json::to_string(user).unwrap_or_default()
            } else {
                String::new()
            };
            invocation
                .arg(if *arrived { "+" } else { "-" })
                .arg(&*user.id)
                .arg(who);
        }
        invocation
            .invoke_async::<Vec<i64>>(&mut self.connection)
            .await
            .ok()
    }

    /// Delivers an announcement to the watchers here and on every node.
    fn tell(
        &self,
        user: &crate::protocol::User,
        frame: &OutFrame,
        except: Option<&str>,
        everywhere: bool,
    ) {
        let audience = Audience::Watchers {
            user: user.clone(),
            if_online: None,
        };
        if everywhere
            && let Some(bytes) =
                envelope::encode(self.hub.node_id(), &audience, except, None, frame)
        {
            let _ = self
                .outgoing
                .send(Outgoing::Publish(self.channels.online(), bytes));
        }
        self.hub.broadcast(&audience, frame, except);
    }

    /// Counts off the users of nodes that stopped reporting, announcing as
    /// gone those on no other node.
    async fn sweep(&mut self, cutoff: u64) -> redis::RedisResult<()> {
        let dead: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.channels.nodes())
            .arg("-inf")
            .arg(format!("({cutoff}"))
            .query_async(&mut self.connection)
            .await?;
        for node in dead {
            let users: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.channels.node_users(&node))
                .query_async(&mut self.connection)
                .await?;
            let whos: Vec<Option<String>> = if users.is_empty() {
                Vec::new()
            } else {
                redis::cmd("HMGET")
                    .arg(self.channels.who())
                    .arg(&users)
                    .query_async(&mut self.connection)
                    .await?
            };
            let gone: Vec<crate::protocol::User> = whos
                .into_iter()
                .flatten()
                .filter_map(|who| serde_json::from_str(&who).ok())
                .collect();
            for chunk in gone.chunks(COUNTED_TOGETHER) {
                let changes: Vec<(bool, &crate::protocol::User)> =
                    chunk.iter().map(|user| (false, user)).collect();
                let Some(counted) = self.count(&node, &changes).await else {
                    return Ok(());
                };
                for (user, nodes) in chunk.iter().zip(counted) {
                    if nodes == 0 {
                        let frame = OutFrame::from(
                            crate::protocol::ServerMessage::UserLeave { user }.encode(None),
                        );
                        self.tell(user, &frame, None, true);
                    }
                }
            }
            self.sweep_members(&node).await?;
            redis::cmd("EVAL")
                .arg(SWEEP_CONNECTIONS)
                .arg(2)
                .arg(self.channels.connections())
                .arg(self.channels.node_connections(&node))
                .query_async::<()>(&mut self.connection)
                .await?;
            // What is left of the node's list (users counted off already) goes.
            redis::cmd("DEL")
                .arg(self.channels.node_users(&node))
                .query_async::<()>(&mut self.connection)
                .await?;
            redis::pipe()
                .cmd("ZREM")
                .arg(self.channels.nodes())
                .arg(&node)
                .ignore()
                .cmd("HDEL")
                .arg(self.channels.reports())
                .arg(&node)
                .ignore()
                .query_async::<()>(&mut self.connection)
                .await?;
        }
        Ok(())
    }
}

impl Presence {
    /// Takes a dead node's members out of its rooms, telling every node.
    async fn sweep_members(&mut self, node: &str) -> redis::RedisResult<()> {
        let rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.channels.node_rooms(node))
            .query_async(&mut self.connection)
            .await?;
        let prefix = format!("{node}|");
        for room in rooms {
            let recorded: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(self.channels.members(&room))
                .query_async(&mut self.connection)
                .await?;
            let theirs: Vec<(String, String)> = recorded
                .into_iter()
                .filter(|(field, _)| field.starts_with(&prefix))
                .collect();
            if theirs.is_empty() {
                continue;
            }
            redis::cmd("HDEL")
                .arg(self.channels.members(&room))
                .arg(theirs.iter().map(|(field, _)| field).collect::<Vec<_>>())
                .query_async::<()>(&mut self.connection)
                .await?;
            for (_, user) in theirs {
                let Ok(user) = serde_json::from_str(&user) else {
                    continue;
                };
                let member = Control::Member {
                    node: node.to_owned(),
                    room: room.clone(),
                    user,
                    joined: false,
                };
                if let Ok(text) = serde_json::to_vec(&member) {
                    let _ = self.outgoing.send(Outgoing::PublishRoom(
                        self.channels.room(&room),
                        Bytes::from(text),
                    ));
                }
            }
        }
        redis::cmd("DEL")
            .arg(self.channels.node_rooms(node))
            .query_async::<()>(&mut self.connection)
            .await
    }
}

/// Reports this node's figures every few seconds, and counts off the users
/// of nodes that stopped (see [`Broker::cluster`]): a node silent for 15 s
/// is dead, its users announced gone within 20 s of its death.
async fn report(mut connection: Connection, mut presence: Presence) {
    let hub = presence.hub.clone();
    let channels = presence.channels.clone();
    let node = hub.node_id().to_owned();
    loop {
        let stats = hub.stats();
        let figures = super::ClusterTotals {
            nodes: 1,
            active_connections: stats.active(),
            total_connections: stats.total(),
            online_users: hub.online_users() as u64,
        };
        if let Ok(text) = serde_json::to_string(&figures) {
            let now = now_ms();
            // Redis may be away; the next report tries again.
            let _ = redis::pipe()
                .cmd("HSET")
                .arg(channels.reports())
                .arg(&node)
                .arg(text)
                .ignore()
                .cmd("ZADD")
                .arg(channels.nodes())
                .arg(now)
                .arg(&node)
                .ignore()
                .query_async::<()>(&mut connection)
                .await;
            if let Err(err) = presence.sweep(now.saturating_sub(REPORT_LIVES_MS)).await {
                tracing::debug!(
                    error = describe(&err),
                    "cannot count off dead nodes' users yet"
                );
            }
        }
        tokio::time::sleep(REPORT_EVERY).await;
    }
}

/// Answers logins' questions of their user's connections on other nodes:
/// those waiting together with one round trip.
async fn answer_connection_queries(
    mut connection: Connection,
    channels: Channels,
    node: String,
    mut queries: mpsc::UnboundedReceiver<ConnectionQuery>,
) {
    let mut batch = Vec::with_capacity(COUNTED_TOGETHER);
    while queries.recv_many(&mut batch, COUNTED_TOGETHER).await > 0 {
        let users: Vec<&str> = batch.iter().map(|(user, _)| &**user).collect();
        let reading = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(channels.connections())
            .arg(&users)
            .cmd("HMGET")
            .arg(channels.node_connections(&node))
            .arg(&users)
            .query_async::<(Vec<Option<u64>>, Vec<Option<u64>>)>(&mut connection)
            .await;
        // Redis away: this node's count only (nothing elsewhere).
        let (all, here) = reading.unwrap_or_default();
        for (n, (_, answer)) in batch.drain(..).enumerate() {
            let all = all.get(n).copied().flatten().unwrap_or(0);
            let here = here.get(n).copied().flatten().unwrap_or(0);
            let elsewhere = usize::try_from(all.saturating_sub(here)).unwrap_or(usize::MAX);
            let _ = answer.send(elsewhere);
        }
    }
}

/// Counts this node's connections per user in Redis, a batch of changes
/// per call, in order with the broadcasts (so retried while Redis is away).
async fn count_connections(
    mut logins: mpsc::UnboundedReceiver<crate::hub::Login>,
    channels: Channels,
    node: String,
    outgoing: mpsc::UnboundedSender<Outgoing>,
) {
    let mut batch = Vec::with_capacity(COUNTED_TOGETHER);
    while logins.recv_many(&mut batch, COUNTED_TOGETHER).await > 0 {
        let mut changes: HashMap<Arc<str>, i64> = HashMap::new();
        for (user, change) in batch.drain(..) {
            *changes.entry(user).or_default() += i64::from(change);
        }
        changes.retain(|_, change| *change != 0);
        if changes.is_empty() {
            continue;
        }
        let mut counting = redis::cmd("EVAL");
        counting
            .arg(COUNT_CONNECTIONS)
            .arg(2)
            .arg(channels.connections())
            .arg(channels.node_connections(&node));
        for (user, change) in changes {
            counting.arg(&*user).arg(change);
        }
        if outgoing.send(Outgoing::Command(counting)).is_err() {
            return;
        }
    }
}

/// Broadcasts waiting for Redis beyond which, while it is unreachable, the
/// oldest are given up (stored messages among them are read from the store
/// by the other nodes when they see the gap).
const MAX_WAITING: usize = 100_000;

/// Publishes broadcasts in order, as many as are waiting in one pipeline.
/// While Redis is unreachable the pipeline is tried again, with a growing
/// pause (up to a second), so that what was said meanwhile still goes out.
async fn publish(mut connection: Connection, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
    let mut failing = false;
    let mut waiting = Vec::new();
    while queue.recv_many(&mut waiting, 512).await > 0 {
        let mut pipeline = redis::pipe();
        for outgoing in waiting.drain(..) {
            match outgoing {
                Outgoing::Publish(channel, bytes) => {
                    pipeline
                        .cmd("PUBLISH")
                        .arg(channel)
                        .arg(bytes.as_ref())
                        .ignore();
                }
                Outgoing::PublishRoom(channel, bytes) => {
                    pipeline
                        .cmd(connection.room_publish())
                        .arg(channel)
                        .arg(bytes.as_ref())
                        .ignore();
                }
                Outgoing::Command(command) => {
                    pipeline.add_command(command).ignore();
                }
            }
        }
        let mut done = 0;
        let mut pause = Duration::from_millis(50);
        loop {
            match connection.run_in_order(&pipeline, done).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("publishing to Redis again");
                        failing = false;
                    }
                    break;
                }
                Err((sent, err)) => {
                    done += sent;
                    if !failing {
                        tracing::error!(
                            error = describe(&err),
                            "cannot publish to Redis: other nodes get this node's broadcasts once it is back"
                        );
                        failing = true;
                    }
                    if queue.len() > MAX_WAITING {
                        tracing::warn!(
                            "Redis unreachable for long: gave up a batch of broadcasts to other nodes"
                        );
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Records in Redis that `user` is in `room` on `node` (`joined`) or no
/// longer is, then tells the room's channel, in that order.
fn record_member(
    outgoing: &mpsc::UnboundedSender<Outgoing>,
    channels: &Channels,
    node: &str,
    room: &str,
    user: &crate::protocol::User,
    joined: bool,
) {
    let field = format!("{node}|{}", user.id);
    let members = channels.members(room);
    let record = if joined {
        let mut listed = redis::cmd("SADD");
        listed.arg(channels.node_rooms(node)).arg(room);
        let _ = outgoing.send(Outgoing::Command(listed));
        let mut record = redis::cmd("HSET");
        record.arg(members).arg(field);
        record.arg(serde_json::to_string(user).unwrap_or_default());
        record
    } else {
        let mut record = redis::cmd("HDEL");
        record.arg(members).arg(field);
        record
    };
    let _ = outgoing.send(Outgoing::Command(record));
    let member = Control::Member {
        node: node.to_owned(),
        room: room.to_owned(),
        user: user.clone(),
        joined,
    };
    if let Ok(text) = serde_json::to_vec(&member) {
        let _ = outgoing.send(Outgoing::PublishRoom(
            channels.room(room),
            Bytes::from(text),
        ));
    }
}

/// The members `room` has on other nodes, as Redis has them.
async fn members_elsewhere(
    connection: &mut Connection,
    channels: &Channels,
    hub: &Hub,
    room: &str,
) -> redis::RedisResult<Vec<(Arc<str>, crate::protocol::User)>> {
    let recorded: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(channels.members(room))
        .query_async(connection)
        .await?;
    let mut nodes: HashMap<String, Arc<str>> = HashMap::new();
    Ok(recorded
        .into_iter()
        .filter_map(|(field, user)| {
            let (node, _) = field.split_once('|')?;
            if node == hub.node_id() {
                return None;
            }
            let user = serde_json::from_str(&user).ok()?;
            let node = nodes
                .entry(node.to_owned())
                .or_insert_with(|| node.into())
                .clone();
            Some((node, user))
        })
        .collect())
}

/// Tells this node's members of `room` that `user` joined or left it, if
/// that changed the room's membership and the room is not large.
fn tell_room(
    hub: &Hub,
    room: &str,
    user: &crate::protocol::User,
    joined: bool,
    change: crate::hub::RoomChange,
) {
    if change.user_changed && !change.quiet {
        let event = if joined {
            crate::protocol::PresenceEvent::Join
        } else {
            crate::protocol::PresenceEvent::Leave
        };
        let frame = OutFrame::from(
            crate::protocol::ServerMessage::Presence { room, event, user }.encode(None),
        );
        hub.broadcast(&Audience::Room(room.into()), &frame, None);
    }
}

/// Follows the hub's rooms with subscriptions and delivers what arrives.
struct Follower {
    hub: Arc<Hub>,
    channels: Channels,
    sequencer: Arc<Sequencer>,
    kicks: Arc<Mutex<Kicks>>,
    /// For answers to other nodes' kicks.
    outgoing: mpsc::UnboundedSender<Outgoing>,
    evicted: mpsc::UnboundedSender<Eviction>,
    /// For recording this node's online users again after Redis is back.
    announcements: mpsc::UnboundedSender<Announcement>,
    following: Arc<Mutex<Following>>,
    connection: Connection,
    /// The connection was lost: subscriptions are to be made again.
    lost: bool,
}

impl Follower {
    async fn run(
        mut self,
        mut interest: mpsc::UnboundedReceiver<RoomInterest>,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    ) {
        if let Err(err) = self.subscribe_all().await {
            self.lose(&err);
        }
        loop {
            tokio::select! {
                change = interest.recv() => match change {
                    Some((room, open)) => self.follow(room, open).await,
                    None => return,
                },
                push = pushes.recv() => match push {
                    Some(push) => self.received(push),
                    None => return,
                },
                () = tokio::time::sleep(Duration::from_millis(500)), if self.lost => {
                    if self.subscribe_all().await.is_ok() {
                        tracing::info!("subscribed to Redis again");
                        self.lost = false;
                    }
                }
            }
        }
    }

    async fn follow(&mut self, room: Arc<str>, open: bool) {
        if self.lost {
            // Done when the connection is back, from the hub's rooms then.
            return;
        }
        let channel = self.channels.room(&room);
        let result = if open {
            self.connection.follow(channel).await
        } else {
            self.connection.unfollow(channel).await
        };
        match result {
            Ok(_) if open => {
                // The members the room has elsewhere, before the joins that
                // wait for the subscription go on; they are told by
                // `room_joined`, not by events.
                match members_elsewhere(&mut self.connection, &self.channels, &self.hub, &room)
                    .await
                {
                    Ok(members) => {
                        self.hub.members_elsewhere(&room, &members);
                    }
                    Err(err) => self.lose(&err),
                }
                self.subscribed(room);
            }
            Ok(_) => {
                lock(&self.following).rooms.remove(&room);
                self.sequencer.forget(&room);
            }
            Err(err) => self.lose(&err),
        }
    }

    /// Subscribes to the channels every node hears and to every room with
    /// members here.
    async fn subscribe_all(&mut self) -> redis::RedisResult<()> {
        for channel in [
            self.channels.everyone(),
            self.channels.online(),
            self.channels.control(),
            self.channels.replies(self.hub.node_id()),
        ] {
            self.connection.subscribe(channel).await?;
        }
        lock(&self.following).rooms.clear();
        // Redis may have lost who is online (a restart): this node's users
        // are counted again (a user counted already is not counted twice).
        for user in self.hub.online_list() {
            let _ = self.announcements.send(Announcement {
                user,
                arrived: true,
                frame: None,
                except: None,
            });
        }
        for room in self.hub.room_names() {
            self.connection.follow(self.channels.room(&room)).await?;
            // Redis may have lost the room's members (a restart): this
            // node's are recorded again, and the others' read as they are
            // now, the differences told as events.
            for user in self.hub.room_users_here(&room) {
                record_member(
                    &self.outgoing,
                    &self.channels,
                    self.hub.node_id(),
                    &room,
                    &user,
                    true,
                );
            }
            let members =
                members_elsewhere(&mut self.connection, &self.channels, &self.hub, &room).await?;
            for (user, joined, change) in self.hub.members_elsewhere(&room, &members) {
                tell_room(&self.hub, &room, &user, joined, change);
            }
            self.subscribed(room);
        }
        lock(&self.following).lost = false;
        Ok(())
    }

    /// Records and announces this node's `user` in `room` again.
    /// The room's channel is subscribed: joins waiting for it go on.
    fn subscribed(&self, room: Arc<str>) {
        let mut following = lock(&self.following);
        for waiter in following.waiters.remove(&room).into_iter().flatten() {
            let _ = waiter.send(());
        }
        following.rooms.insert(room);
    }

    /// Carries out another node's request, or takes an answer to ours.
    fn controlled(&self, payload: &[u8]) {
        match serde_json::from_slice::<Control>(payload) {
            Ok(Control::Kick {
                origin,
                request,
                connection,
            }) => {
                if origin != self.hub.node_id()
                    && super::local::kick_here(&self.hub, &connection)
                    && let Ok(answer) = serde_json::to_vec(&Control::Kicked { request })
                {
                    let _ = self.outgoing.send(Outgoing::Publish(
                        self.channels.replies(&origin),
                        Bytes::from(answer),
                    ));
                }
            }
            Ok(Control::Kicked { request }) => {
                if let Some(found) = lock_kicks(&self.kicks).waiting.remove(&request) {
                    let _ = found.send(());
                }
            }
            Ok(Control::Member {
                node,
                room,
                user,
                joined,
            }) => {
                if node != self.hub.node_id() {
                    let node: Arc<str> = node.into();
                    if let Some(change) = self.hub.member_elsewhere(&room, &node, &user, joined) {
                        tell_room(&self.hub, &room, &user, joined, change);
                    }
                }
            }
            Ok(Control::Evict { origin, room, user }) => {
                if origin != self.hub.node_id() {
                    let _ = self.evicted.send(Eviction {
                        room,
                        user_id: user,
                    });
                }
            }
            Err(_) => tracing::warn!("ignored a control message roomcast does not know"),
        }
    }

    /// Redis is lost: joins stop waiting for subscriptions, which are made
    /// again once it is back.
    fn set_lost(&mut self) {
        self.lost = true;
        let mut following = lock(&self.following);
        following.lost = true;
        following.waiters.clear();
    }

    fn lose(&mut self, err: &redis::RedisError) {
        if !self.lost {
            tracing::error!(
                error = describe(err),
                "lost Redis: this node serves its own connections alone until it is back"
            );
            self.set_lost();
        }
    }

    fn received(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                let Some(Value::BulkString(payload)) = push.data.get(1) else {
                    return;
                };
                if let Some(Value::BulkString(channel)) = push.data.first()
                    && (*channel == self.channels.control().as_bytes()
                        || *channel == self.channels.replies(self.hub.node_id()).as_bytes()
                        || payload.first() == Some(&b'{'))
                {
                    self.controlled(payload);
                    return;
                }
                let Some(Envelope {
                    origin,
                    audience,
                    except,
                    sequence,
                    frame,
                }) = envelope::decode(&Bytes::copy_from_slice(payload))
                else {
                    tracing::warn!("ignored a Redis message that is not a roomcast broadcast");
                    return;
                };
                if origin == self.hub.node_id() {
                    return;
                }
                match (sequence, &audience) {
                    (Some((id, previous)), Audience::Room(room)) => {
                        self.sequencer.offer(Stored {
                            room: room.clone(),
                            id,
                            previous,
                            frame,
                        });
                    }
                    (Some((id, previous)), Audience::Everyone) => {
                        self.sequencer.offer(Stored {
                            room: crate::protocol::GLOBAL_ROOM.into(),
                            id,
                            previous,
                            frame,
                        });
                    }
                    _ => {
                        self.hub.broadcast(&audience, &frame, except.as_deref());
                    }
                }
            }
            PushKind::Disconnection if !self.lost => {
                tracing::error!(
                    "lost Redis: this node serves its own connections alone until it is back"
                );
                self.set_lost();
            }
            _ => {}
        }
    }
}
