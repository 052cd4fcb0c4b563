//! The storage suite: every rule of the `MessageStore` contract, run against
//! SQLite and, where `ROOMCAST_TEST_POSTGRES_URL` is set, PostgreSQL.

mod support;

use roomcast::protocol::{Timestamp, User, UserKind};
use roomcast::store::{
    Appended, FileRecord, MessageStore, NewEvent, NewMessage, Page, PostgresStore, Retention,
    SqliteStore, Staleness, StoreError, UploadClaim, UploadRecord, WebhookRoutes,
};
use std::sync::Arc;
use std::time::Duration;
use support::PgSchema;
use tokio::sync::oneshot;

/// Runs `check` against every backend available here.
macro_rules! on_every_backend {
    ($name:ident, $check:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let store: Arc<dyn MessageStore> =
                    Arc::new(SqliteStore::open_with_webhooks(None, routes()).expect("open SQLite"));
                super::$check(store).await;
            }

            #[tokio::test]
            async fn sqlite_file() {
                let dir = tempfile::tempdir().expect("tempdir");
                let store: Arc<dyn MessageStore> = Arc::new(
                    SqliteStore::open_with_webhooks(Some(&dir.path().join("store.db")), routes())
                        .expect("open SQLite"),
                );
                super::$check(store).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(schema) = PgSchema::create(stringify!($name)).await else {
                    return;
                };
                let store: Arc<dyn MessageStore> = Arc::new(
                    PostgresStore::open_with_webhooks(&schema.url, routes())
                        .await
                        .expect("open PostgreSQL"),
                );
                super::$check(store).await;
            }
        }
    };
}

/// The stores of this suite have one webhook, `hook`, for the room `hooked`.
fn routes() -> Arc<WebhookRoutes> {
    WebhookRoutes::new(vec![("hook".into(), vec!["hooked".into()])])
}

fn user(id: &str) -> User {
    User {
        id: id.into(),
        username: id.into(),
        kind: UserKind::User,
    }
}

fn message(room: &str, author: &str, content: &str) -> NewMessage {
    NewMessage {
        room: room.into(),
        user: user(author),
        content: content.into(),
        created_at: Timestamp::now(),
        client_msg_id: None,
        reply_to: None,
        attachment: None,
    }
}

/// Hands a message to the store and returns a receiver for the outcome.
fn submit(
    store: &dyn MessageStore,
    new: NewMessage,
) -> oneshot::Receiver<Result<Appended, StoreError>> {
    let (tx, rx) = oneshot::channel();
    store.append(
        new,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    rx
}

async fn append(store: &dyn MessageStore, new: NewMessage) -> Result<Appended, StoreError> {
    submit(store, new).await.expect("callback ran")
}

async fn fill(store: &dyn MessageStore, room: &str, count: usize) -> Vec<i64> {
    let pending: Vec<_> = (0..count)
        .map(|n| submit(store, message(room, "ann", &format!("m{n}"))))
        .collect();
    let mut ids = Vec::new();
    for receiver in pending {
        ids.push(
            receiver
                .await
                .expect("callback")
                .expect("stored")
                .message
                .id,
        );
    }
    ids
}

on_every_backend!(
    pages_are_oldest_first_with_exact_has_more,
    check_pages_are_oldest_first_with_exact_has_more
);
async fn check_pages_are_oldest_first_with_exact_has_more(store: Arc<dyn MessageStore>) {
    let ids = fill(&*store, "r", 7).await;
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    let newest = store.history("r", Page::Newest, 3).await.expect("page");
    assert_eq!(
        newest.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[4..7]
    );
    assert!(newest.has_more);
    let all = store.history("r", Page::Newest, 7).await.expect("page");
    assert_eq!(all.messages.len(), 7);
    assert!(!all.has_more, "exactly the whole room: nothing more");

    let before = store
        .history("r", Page::Before(ids[4]), 3)
        .await
        .expect("page");
    assert_eq!(
        before.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[1..4]
    );
    assert!(before.has_more);
    let first = store
        .history("r", Page::Before(ids[3]), 3)
        .await
        .expect("page");
    assert_eq!(
        first.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[0..3]
    );
    assert!(!first.has_more);

    let after = store
        .history("r", Page::After(ids[1]), 5)
        .await
        .expect("page");
    assert_eq!(
        after.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[2..7]
    );
    assert!(!after.has_more);
    let after = store
        .history("r", Page::After(ids[0]), 2)
        .await
        .expect("page");
    assert!(after.has_more);
    let none = store
        .history("r", Page::After(ids[6]), 5)
        .await
        .expect("page");
    assert!(none.messages.is_empty() && !none.has_more);
    let huge = store
        .history("r", Page::Before(i64::MAX), 200)
        .await
        .expect("page");
    assert_eq!(huge.messages.len(), 7);
    let empty = store
        .history("elsewhere", Page::Newest, 50)
        .await
        .expect("page");
    assert!(empty.messages.is_empty() && !empty.has_more);

    let stored = &all.messages[0];
    assert_eq!(&*stored.room, "r");
    assert_eq!(stored.content, "m0");
    assert_eq!(stored.user, user("ann"));
}

on_every_backend!(
    ids_are_unique_across_rooms,
    check_ids_are_unique_across_rooms
);
async fn check_ids_are_unique_across_rooms(store: Arc<dyn MessageStore>) {
    let a = fill(&*store, "a", 20).await;
    let b = fill(&*store, "b", 20).await;
    let mut all: Vec<i64> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 40);
}

on_every_backend!(
    client_msg_id_deduplicates_per_user_and_room,
    check_client_msg_id_deduplicates_per_user_and_room
);
async fn check_client_msg_id_deduplicates_per_user_and_room(store: Arc<dyn MessageStore>) {
    let with_id = |room: &str, author: &str, id: &str| {
        let mut new = message(room, author, "hello");
        new.client_msg_id = Some(id.into());
        new
    };
    let first = append(&*store, with_id("r", "ann", "c1"))
        .await
        .expect("stored");
    assert!(!first.duplicate);
    let again = append(&*store, with_id("r", "ann", "c1"))
        .await
        .expect("stored");
    assert!(again.duplicate);
    assert_eq!(again.message.id, first.message.id);
    assert_eq!(again.message.client_msg_id.as_deref(), Some("c1"));
    let other_user = append(&*store, with_id("r", "bob", "c1"))
        .await
        .expect("stored");
    let other_room = append(&*store, with_id("s", "ann", "c1"))
        .await
        .expect("stored");
    assert!(!other_user.duplicate && !other_room.duplicate);
    assert_ne!(other_user.message.id, first.message.id);

    // Several retries in flight at once (one batch) are one message.
    let pending: Vec<_> = (0..10)
        .map(|_| submit(&*store, with_id("r", "ann", "c2")))
        .collect();
    let mut ids = Vec::new();
    let mut fresh = 0;
    for receiver in pending {
        let appended = receiver.await.expect("callback").expect("stored");
        ids.push(appended.message.id);
        fresh += usize::from(!appended.duplicate);
    }
    assert_eq!(fresh, 1);
    assert!(ids.iter().all(|id| *id == ids[0]));
    let page = store.history("r", Page::Newest, 50).await.expect("page");
    assert_eq!(page.messages.len(), 3);
}

on_every_backend!(
    reply_to_must_exist_in_the_same_room,
    check_reply_to_must_exist_in_the_same_room
);
async fn check_reply_to_must_exist_in_the_same_room(store: Arc<dyn MessageStore>) {
    let target = append(&*store, message("r", "ann", "q"))
        .await
        .expect("stored");
    let mut reply = message("r", "bob", "a");
    reply.reply_to = Some(target.message.id);
    let stored = append(&*store, reply).await.expect("stored");
    assert_eq!(stored.message.reply_to, Some(target.message.id));
    let mut elsewhere = message("s", "bob", "a");
    elsewhere.reply_to = Some(target.message.id);
    assert!(matches!(
        append(&*store, elsewhere).await,
        Err(StoreError::ReplyToNotFound)
    ));
    let mut missing = message("r", "bob", "a");
    missing.reply_to = Some(i64::MAX);
    assert!(matches!(
        append(&*store, missing).await,
        Err(StoreError::ReplyToNotFound)
    ));
    // A failed message does not take the batch down with it.
    let page = store.history("r", Page::Newest, 50).await.expect("page");
    assert_eq!(page.messages.len(), 2);
}

on_every_backend!(rooms_are_created_once, check_rooms_are_created_once);
async fn check_rooms_are_created_once(store: Arc<dyn MessageStore>) {
    assert!(store.room("dev").await.expect("lookup").is_none());
    let created = store.ensure_room("dev").await.expect("create");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = store.ensure_room("dev").await.expect("create");
    assert_eq!(created, again);
    assert_eq!(store.room("dev").await.expect("lookup"), Some(created));
}

on_every_backend!(events_are_numbered, check_events_are_numbered);
async fn check_events_are_numbered(store: Arc<dyn MessageStore>) {
    let event = |n: i64, key: Option<&str>| NewEvent {
        room: "project:p".into(),
        kind: "project_update",
        payload: serde_json::json!({"n": n}),
        user_id: "ann".into(),
        idempotency_key: key.map(str::to_owned),
    };
    let first = store.record_event(event(1, None)).await.expect("event");
    let second = store.record_event(event(2, None)).await.expect("event");
    assert!(second.id > first.id && !first.duplicate && !second.duplicate);
    // The same idempotency key in the same room finds the first event.
    let keyed = store
        .record_event(event(3, Some("k1")))
        .await
        .expect("event");
    let again = store
        .record_event(event(4, Some("k1")))
        .await
        .expect("event");
    assert_eq!(again.id, keyed.id);
    assert!(again.duplicate && !keyed.duplicate);
    let other = store
        .record_event(event(5, Some("k2")))
        .await
        .expect("event");
    assert!(other.id > keyed.id && !other.duplicate);
}

on_every_backend!(
    retention_keeps_the_newest_per_room,
    check_retention_keeps_the_newest_per_room
);
async fn check_retention_keeps_the_newest_per_room(store: Arc<dyn MessageStore>) {
    let ids = fill(&*store, "busy", 30).await;
    fill(&*store, "quiet", 3).await;
    let policy = Retention {
        max_messages_per_room: Some(10),
        max_age: None,
    };
    let mut deleted = 0;
    loop {
        let chunk = store.prune(policy, 7).await.expect("prune");
        deleted += chunk;
        if chunk == 0 {
            break;
        }
    }
    assert_eq!(deleted, 20);
    let page = store
        .history("busy", Page::Newest, 200)
        .await
        .expect("page");
    assert_eq!(
        page.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[20..]
    );
    assert_eq!(
        store
            .history("quiet", Page::Newest, 200)
            .await
            .expect("page")
            .messages
            .len(),
        3
    );
    // New messages keep coming after retention.
    let newer = fill(&*store, "busy", 1).await;
    assert!(newer[0] > ids[29]);
}

on_every_backend!(
    retention_drops_messages_past_their_age,
    check_retention_drops_messages_past_their_age
);
async fn check_retention_drops_messages_past_their_age(store: Arc<dyn MessageStore>) {
    let mut old = message("r", "ann", "old");
    old.created_at = Timestamp(Timestamp::now().as_millis() - 3_600_000);
    append(&*store, old).await.expect("stored");
    append(&*store, message("r", "ann", "new"))
        .await
        .expect("stored");
    let policy = Retention {
        max_messages_per_room: None,
        max_age: Some(Duration::from_secs(60)),
    };
    assert_eq!(store.prune(policy, 100).await.expect("prune"), 1);
    let page = store.history("r", Page::Newest, 50).await.expect("page");
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].content, "new");
}

on_every_backend!(
    flush_waits_for_earlier_appends,
    check_flush_waits_for_earlier_appends
);
async fn check_flush_waits_for_earlier_appends(store: Arc<dyn MessageStore>) {
    let pending: Vec<_> = (0..50)
        .map(|n| submit(&*store, message("r", "ann", &n.to_string())))
        .collect();
    store.flush().await.expect("flush");
    for mut receiver in pending {
        assert!(
            receiver.try_recv().is_ok(),
            "every append committed before flush returned"
        );
    }
}

on_every_backend!(
    newest_global_page_follows_appends_and_retention,
    check_newest_global_page_follows_appends_and_retention
);
/// The newest page of `global` (what a welcome carries; the embedded store
/// keeps it in memory) always equals the same page read by id from the
/// database: when empty, after a few messages, past the hundred it keeps,
/// right after a commit, and after retention deleted messages.
async fn check_newest_global_page_follows_appends_and_retention(store: Arc<dyn MessageStore>) {
    let store = &*store;
    async fn ids(store: &dyn MessageStore, page: Page, limit: usize) -> (Vec<i64>, bool) {
        let page = store.history("global", page, limit).await.expect("page");
        (page.messages.iter().map(|m| m.id).collect(), page.has_more)
    }
    async fn agree(store: &dyn MessageStore, expected_newest: Option<i64>) {
        for limit in [1, 3, 50, 100, 101, 250] {
            let newest = ids(store, Page::Newest, limit).await;
            let by_id = ids(store, Page::Before(i64::MAX), limit).await;
            assert_eq!(newest, by_id, "limit {limit}");
            assert_eq!(newest.0.last().copied(), expected_newest, "limit {limit}");
        }
    }
    agree(store, None).await;
    let first = fill(store, "global", 5).await;
    agree(store, first.last().copied()).await;
    let many = fill(store, "global", 150).await;
    fill(store, "elsewhere", 3).await;
    agree(store, many.last().copied()).await;
    // Read right after the callback (the contract's promise).
    let just_now = submit(store, message("global", "ann", "just now"))
        .await
        .expect("callback")
        .expect("stored")
        .message
        .id;
    assert_eq!(ids(store, Page::Newest, 10).await.0.last(), Some(&just_now));
    let policy = Retention {
        max_messages_per_room: Some(20),
        max_age: None,
    };
    while store.prune(policy, 50).await.expect("prune") > 0 {}
    agree(store, Some(just_now)).await;
    assert_eq!(ids(store, Page::Newest, 250).await.0.len(), 20);
    let after = fill(store, "global", 2).await;
    agree(store, after.last().copied()).await;
}

on_every_backend!(
    look_alike_accounts_are_found,
    check_look_alike_accounts_are_found
);
async fn check_look_alike_accounts_are_found(store: Arc<dyn MessageStore>) {
    let account = roomcast::store::Account {
        id: "u-1".into(),
        username: "Modern_Cl1ent".into(),
        password_hash: "$argon2id$x".into(),
        role: "user".into(),
        created_at: Timestamp::now(),
    };
    store.create_account(account).await.expect("create");
    for alike in [
        "modern_client",
        "MODERN_CL1ENT",
        "rnodern_dient",
        "m0dern_cIient",
    ] {
        let found = store
            .account_alike(&roomcast::auth::skeleton(alike))
            .await
            .expect("query");
        assert!(found, "{alike}");
    }
    let found = store
        .account_alike(&roomcast::auth::skeleton("modern_clients"))
        .await
        .expect("query");
    assert!(!found);
}

on_every_backend!(uploads_are_claimed_once, check_uploads_are_claimed_once);
async fn check_uploads_are_claimed_once(store: Arc<dyn MessageStore>) {
    let now = Timestamp::now();
    let later = Timestamp(now.as_millis() + 60_000);
    let upload = |id: &str, expires_at| UploadRecord {
        id: id.into(),
        file_id: format!("blob-{id}"),
        token_hash: "hash".into(),
        room: "team".into(),
        user: user("alice"),
        filename: "a.txt".into(),
        size: 5,
        content_type: "text/plain".into(),
        expires_at,
    };
    store
        .create_upload(upload("u1", later))
        .await
        .expect("create");
    store
        .create_upload(upload("old", Timestamp(now.as_millis() - 1)))
        .await
        .expect("create");
    assert_eq!(
        store
            .claim_upload("nope", "hash", now)
            .await
            .expect("claim"),
        UploadClaim::Unknown
    );
    assert_eq!(
        store.claim_upload("u1", "wrong", now).await.expect("claim"),
        UploadClaim::Refused
    );
    assert_eq!(
        store.claim_upload("old", "hash", now).await.expect("claim"),
        UploadClaim::Refused
    );
    assert_eq!(
        store.claim_upload("u1", "hash", now).await.expect("claim"),
        UploadClaim::Claimed(upload("u1", later))
    );
    assert_eq!(
        store.claim_upload("u1", "hash", now).await.expect("claim"),
        UploadClaim::Busy
    );
    store.release_upload("u1").await.expect("release");
    assert!(matches!(
        store.claim_upload("u1", "hash", now).await.expect("claim"),
        UploadClaim::Claimed(_)
    ));
    let file = FileRecord {
        id: "blob-u1".into(),
        room: "team".into(),
        user_id: "alice".into(),
        name: "a.txt".into(),
        size: 5,
        content_type: "text/plain".into(),
        sha256: "00".into(),
        created_at: now,
    };
    assert!(
        store
            .finish_upload("u1", file.clone())
            .await
            .expect("finish")
    );
    assert!(
        !store
            .finish_upload("u1", file.clone())
            .await
            .expect("finish twice")
    );
    assert_eq!(
        store.claim_upload("u1", "hash", now).await.expect("claim"),
        UploadClaim::Refused
    );
    assert_eq!(store.file("blob-u1").await.expect("file"), Some(file));

    // The expired upload is abandoned; the new file is not yet (it waits
    // for its message, for an hour).
    let hour_ago = Timestamp(now.as_millis() - 3_600_000);
    let stale = store
        .stale_blobs(
            Staleness {
                now,
                before: hour_ago,
            },
            100,
        )
        .await
        .expect("stale");
    assert_eq!(stale, vec!["blob-old".to_owned()]);
    // Shared by a message that retention then deletes, it is stale.
    let shared = append(&*store, message("team", "alice", "a.txt"))
        .await
        .expect("append");
    store
        .attach_file("blob-u1", shared.message.id)
        .await
        .expect("attach");
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .prune(
            Retention {
                max_messages_per_room: None,
                max_age: Some(Duration::from_millis(1)),
            },
            100,
        )
        .await
        .expect("prune");
    let mut stale = store
        .stale_blobs(
            Staleness {
                now,
                before: hour_ago,
            },
            100,
        )
        .await
        .expect("stale");
    stale.sort();
    assert_eq!(stale, vec!["blob-old".to_owned(), "blob-u1".to_owned()]);
    store.forget_blobs(stale).await.expect("forget");
    assert_eq!(store.file("blob-u1").await.expect("file"), None);
    assert!(
        store
            .stale_blobs(
                Staleness {
                    now,
                    before: hour_ago
                },
                100
            )
            .await
            .expect("stale")
            .is_empty()
    );
}

on_every_backend!(
    webhook_rows_follow_their_messages,
    check_webhook_rows_follow_their_messages
);
async fn check_webhook_rows_follow_their_messages(store: Arc<dyn MessageStore>) {
    let hooks = vec!["hook".to_owned()];
    let now = || Timestamp::now();
    let lease = |at: Timestamp| Timestamp(at.as_millis() + 30_000);
    let first = append(&*store, message("hooked", "alice", "one"))
        .await
        .expect("append");
    append(&*store, message("elsewhere", "alice", "not wanted"))
        .await
        .expect("append");
    let mut keyed = message("hooked", "alice", "two");
    keyed.client_msg_id = Some("k".into());
    append(&*store, keyed.clone()).await.expect("append");
    append(&*store, keyed)
        .await
        .expect("a retry writes no second row");
    let event = store
        .record_event(NewEvent {
            room: "hooked".into(),
            kind: "project_update",
            payload: serde_json::json!({"project_id": "p", "changes": {"a": 1}}),
            user_id: "alice".into(),
            idempotency_key: None,
        })
        .await
        .expect("event");

    let at = now();
    let leased = store
        .lease_webhooks("node-a", hooks.clone(), at, lease(at), 10)
        .await
        .expect("lease");
    assert_eq!(leased.len(), 3, "{leased:?}");
    let body: serde_json::Value = serde_json::from_str(&leased[0].body).expect("json");
    assert_eq!(body["type"], "chat_message");
    assert_eq!(body["message"]["id"], first.message.id);
    let body: serde_json::Value = serde_json::from_str(&leased[2].body).expect("json");
    assert_eq!(
        (body["type"].as_str(), body["event_id"].as_i64()),
        (Some("project_update"), Some(event.id))
    );
    assert_eq!(body["changes"]["a"], 1);
    // Leased rows are not leased again meanwhile.
    assert!(
        store
            .lease_webhooks("node-a", hooks.clone(), at, lease(at), 10)
            .await
            .expect("lease")
            .is_empty()
    );
    store
        .webhook_delivered(leased[0].id)
        .await
        .expect("delivered");
    store
        .webhook_failed(leased[1].id, Some(now()), "answered 500".into())
        .await
        .expect("failed");
    store
        .webhook_failed(leased[2].id, None, "gave up".into())
        .await
        .expect("failed");
    let at = Timestamp(now().as_millis() + 1);
    let again = store
        .lease_webhooks("node-a", hooks.clone(), at, lease(at), 10)
        .await
        .expect("lease");
    assert_eq!(again.len(), 1, "only the retried one: {again:?}");
    assert_eq!((again[0].id, again[0].attempts), (leased[1].id, 1));
    // A node that stops gives back what it leased: the rows are due again
    // at once, for any node.
    store.release_webhooks("node-a").await.expect("release");
    let released = store
        .lease_webhooks("node-b", hooks.clone(), at, lease(at), 10)
        .await
        .expect("lease");
    assert_eq!(released.len(), 1, "{released:?}");
    // Another webhook's rows are not this one's.
    assert!(
        store
            .lease_webhooks("node-a", vec!["other".into()], at, lease(at), 10)
            .await
            .expect("lease")
            .is_empty()
    );
}
