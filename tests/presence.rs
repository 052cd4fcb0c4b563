//! Presence in protocol 1.1: online subscriptions (`presence_subscribe`,
//! `presence_unsubscribe`, rule 6) and large rooms (`presence_count`,
//! rule 13), through real WebSocket clients.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::{Client, TestServer, args, join, subscribe};

fn ids(members: &Value) -> Vec<String> {
    members
        .as_array()
        .expect("members is a list")
        .iter()
        .map(|user| user["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn only_subscribers_hear_users_come_and_go() {
    let server = TestServer::start().await;
    let mut watcher = server.user("watcher").await;
    let mut bystander = server.user("bystander").await;
    let state = subscribe(&mut watcher, None).await;
    assert_eq!(state["member_count"], 2, "{state}");
    assert_eq!(ids(&state["members"]), ["bystander", "watcher"]);

    let carol = server.user("carol").await;
    let joined = watcher.recv().await;
    assert_eq!(joined["type"], "user_join", "{joined}");
    assert_eq!(joined["user"]["id"], "carol");
    carol.close().await;
    let left = watcher.recv().await;
    assert_eq!(left["type"], "user_leave", "{left}");
    assert_eq!(left["user"]["id"], "carol");
    bystander.expect_silence().await;
}

#[tokio::test]
async fn a_list_watches_only_its_users_and_a_second_subscribe_replaces_it() {
    let server = TestServer::start().await;
    let mut watcher = server.user("watcher").await;
    let dave = server.user("dave").await;
    let state = subscribe(&mut watcher, Some(&["carol", "dave", "dave", "nobody"])).await;
    assert_eq!(state["member_count"], 1, "only dave is online: {state}");
    assert_eq!(ids(&state["members"]), ["dave"]);

    let erin = server.user("erin").await;
    let carol = server.user("carol").await;
    let joined = watcher.recv().await;
    assert_eq!(joined["type"], "user_join", "{joined}");
    assert_eq!(joined["user"]["id"], "carol", "erin is not on the list");
    watcher.expect_silence().await;

    // The second subscription replaces the first: now only erin.
    let state = subscribe(&mut watcher, Some(&["erin"])).await;
    assert_eq!(ids(&state["members"]), ["erin"]);
    carol.close().await;
    dave.close().await;
    watcher.expect_silence().await;
    erin.close().await;
    let left = watcher.recv().await;
    assert_eq!(left["type"], "user_leave", "{left}");
    assert_eq!(left["user"]["id"], "erin");
}

#[tokio::test]
async fn unsubscribe_stops_the_announcements() {
    let server = TestServer::start().await;
    let mut watcher = server.user("watcher").await;
    subscribe(&mut watcher, None).await;
    let reply = watcher
        .request(json!({"type": "presence_unsubscribe", "ref": "u"}))
        .await;
    assert_eq!(reply["type"], "presence_unsubscribed", "{reply}");
    assert_eq!(reply["ref"], "u");
    let carol = server.user("carol").await;
    carol.close().await;
    watcher.expect_silence().await;
    // Unsubscribing twice is harmless.
    let reply = watcher
        .request(json!({"type": "presence_unsubscribe"}))
        .await;
    assert_eq!(reply["type"], "presence_unsubscribed", "{reply}");
}

#[tokio::test]
async fn a_user_with_two_connections_comes_and_goes_once() {
    let server = TestServer::start().await;
    let mut watcher = server.user("watcher").await;
    subscribe(&mut watcher, Some(&["carol"])).await;
    let first = server.user("carol").await;
    assert_eq!(watcher.recv().await["type"], "user_join");
    let second = server.user("carol").await;
    first.close().await;
    watcher.expect_silence().await;
    second.close().await;
    assert_eq!(watcher.recv().await["type"], "user_leave");
}

#[tokio::test]
async fn bad_subscriptions_are_validation_errors() {
    let server = TestServer::start().await;
    let mut watcher = server.user("watcher").await;
    let too_many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    for user_ids in [
        json!([]),
        json!("alice"),
        json!([1, 2]),
        json!([""]),
        json!({"id": "alice"}),
        json!(too_many),
    ] {
        let error = watcher
            .request(json!({"type": "presence_subscribe", "user_ids": user_ids, "ref": "bad"}))
            .await;
        assert_eq!(error["error_code"], "validation_error", "{error}");
        assert_eq!(error["ref"], "bad");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("user_ids")),
            "{error}"
        );
    }
    // A refused subscription leaves none behind.
    let carol = server.user("carol").await;
    carol.close().await;
    watcher.expect_silence().await;
    // 1000 ids is the most, and allowed.
    let most: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let state = watcher
        .request(json!({"type": "presence_subscribe", "user_ids": most}))
        .await;
    assert_eq!(state["type"], "presence_state", "{state}");
    assert_eq!(state["member_count"], 0);
}

#[tokio::test]
async fn subscribing_needs_a_login() {
    let server = TestServer::start().await;
    let mut guest = server.guest().await;
    let error = guest.request(json!({"type": "presence_subscribe"})).await;
    assert_eq!(error["error_code"], "not_authenticated", "{error}");
    let error = guest.request(json!({"type": "presence_unsubscribe"})).await;
    assert_eq!(error["error_code"], "not_authenticated", "{error}");
}

#[tokio::test]
async fn the_state_lists_the_first_hundred_by_username() {
    let server = TestServer::start().await;
    let mut users = Vec::new();
    for i in 0..104 {
        users.push(server.user(&format!("user-{i:03}")).await);
    }
    let mut watcher = server.user("zz-watcher").await;
    let state = subscribe(&mut watcher, None).await;
    assert_eq!(state["member_count"], 105, "{}", state["member_count"]);
    let listed = ids(&state["members"]);
    assert_eq!(listed.len(), 100);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "ordered by username");
    assert_eq!(listed[0], "user-000");
    assert_eq!(listed[99], "user-099");
}

#[tokio::test]
async fn named_guests_are_announced_and_unnamed_ones_are_not() {
    let mut settings = args();
    settings.guest_chat = Some(true);
    let server = TestServer::with(settings).await;
    let mut watcher = server.user("watcher").await;
    subscribe(&mut watcher, None).await;
    let mut guest = server.guest().await;
    watcher.expect_silence().await;
    let named = guest
        .request(json!({"type": "user_join", "username": "Visitor"}))
        .await;
    assert_eq!(named["type"], "user_join", "the direct reply: {named}");
    let announced = watcher.recv().await;
    assert_eq!(announced["type"], "user_join", "{announced}");
    assert_eq!(announced["user"]["username"], "Visitor");
    assert_eq!(announced["user"]["kind"], "guest");
    guest.expect_silence().await;
    guest.close().await;
    let left = watcher.recv().await;
    assert_eq!(left["type"], "user_leave", "{left}");
    assert_eq!(left["user"]["username"], "Visitor");
}

/// Milliseconds since midnight of a frame's `timestamp`
/// (`2026-12-05T03:47:38.123Z`).
fn millis_of_day(frame: &Value) -> i64 {
    let stamp = frame["timestamp"].as_str().expect("timestamp");
    let field = |at: usize, len: usize| -> i64 {
        stamp
            .get(at..at + len)
            .and_then(|digits| digits.parse().ok())
            .expect("RFC 3339 with milliseconds")
    };
    ((field(11, 2) * 60 + field(14, 2)) * 60 + field(17, 2)) * 1000 + field(20, 3)
}

/// A server whose rooms are large above two members.
async fn small_limit_server() -> TestServer {
    let mut settings = args();
    settings.presence_max_members = Some(2);
    TestServer::with(settings).await
}

/// The next frame, which must be a `presence_count` of `room`; returns the
/// count.
async fn count_in(client: &mut Client, room: &str) -> u64 {
    let frame = client.recv().await;
    assert_eq!(frame["type"], "presence_count", "{frame}");
    assert_eq!(frame["room"], room);
    frame["member_count"].as_u64().expect("member_count")
}

#[tokio::test]
async fn a_room_above_the_limit_sends_counts_and_below_it_events_again() {
    let server = small_limit_server().await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "big").await;
    let mut bob = server.user("bob").await;
    join(&mut bob, "big").await;
    assert_eq!(alice.recv().await["event"], "join", "2 of 2: an event");

    // Carol makes three: no event, a count instead.
    let mut carol = server.user("carol").await;
    let joined = join(&mut carol, "big").await;
    assert_eq!(joined["member_count"], 3);
    assert_eq!(count_in(&mut alice, "big").await, 3);
    assert_eq!(count_in(&mut bob, "big").await, 3);
    assert_eq!(count_in(&mut carol, "big").await, 3);
    // Nothing changes: nothing more is sent.
    alice.expect_silence().await;

    // A second connection of carol is not a new member.
    let mut carol2 = server.user("carol").await;
    join(&mut carol2, "big").await;
    carol2.close().await;
    // `presence` and `room_joined` work as in any room.
    let page = alice
        .request(json!({"type": "presence", "room": "big"}))
        .await;
    assert_eq!(page["member_count"], 3, "{page}");
    assert_eq!(ids(&page["members"]), ["alice", "bob", "carol"]);
    alice.expect_silence().await;

    // Carol leaves: two members, events again, starting with this leave.
    carol.close().await;
    let left = alice.recv().await;
    assert_eq!(left["type"], "presence", "{left}");
    assert_eq!(left["event"], "leave");
    assert_eq!(left["user"]["id"], "carol");
    let mut erin = server.user("erin").await;
    join(&mut erin, "big").await;
    // Erin makes three again: a count, not an event.
    assert_eq!(count_in(&mut alice, "big").await, 3);
}

#[tokio::test]
async fn counts_come_at_most_once_a_second() {
    let server = small_limit_server().await;
    let mut watcher = server.user("watcher").await;
    join(&mut watcher, "big").await;
    let mut others = Vec::new();
    let mut counts = Vec::new();
    for i in 0..12 {
        let mut user = server.user(&format!("user-{i}")).await;
        join(&mut user, "big").await;
        others.push(user);
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Collect whatever arrived, without waiting.
        while let Ok(frame) = tokio::time::timeout(Duration::from_millis(1), watcher.recv()).await {
            if frame["type"] == "presence_count" {
                counts.push(frame);
            }
        }
    }
    loop {
        let frame = watcher.recv().await;
        if frame["type"] == "presence_count" {
            let last = frame["member_count"] == 13;
            counts.push(frame);
            if last {
                break;
            }
        }
    }
    assert!(
        counts.len() >= 2 && counts.len() <= 3,
        "12 joins over 1.8 s: 2 or 3 counts, got {counts:?}"
    );
    let millis: Vec<i64> = counts.iter().map(millis_of_day).collect();
    for pair in millis.windows(2) {
        let apart = (pair[1] - pair[0]).rem_euclid(86_400_000);
        assert!(apart >= 1000, "counts {millis:?} too close");
    }
}
