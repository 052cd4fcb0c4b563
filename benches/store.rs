//! Storage throughput: persisted-and-acknowledged messages per second (one
//! room, 100 rooms) and history pages per second, on SQLite (a file, full
//! durability) and on PostgreSQL when `ROOMCAST_TEST_POSTGRES_URL` is set.
//!
//! `cargo bench --bench store` (add `-- --messages N` to change the size).
//! Numbers are printed, not asserted: this is a measurement, not a test.

use roomcast::protocol::{Timestamp, User, UserKind};
use roomcast::store::{MessageStore, NewMessage, Page, PostgresStore, SqliteStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// Appends in flight at once: what many connections sending together produce.
const IN_FLIGHT: usize = 2048;
/// Concurrent history readers.
const READERS: usize = 64;

fn main() {
    let messages = std::env::args()
        .skip_while(|arg| arg != "--messages")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000u64);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        println!("backend      scenario                      result");
        let dir = tempfile::tempdir().expect("tempdir");
        for rooms in [1, 100] {
            let path = dir.path().join(format!("bench-{rooms}.db"));
            let store: Arc<dyn MessageStore> =
                Arc::new(SqliteStore::open(Some(&path)).expect("open SQLite"));
            run("sqlite", store, messages, rooms).await;
        }
        match std::env::var("ROOMCAST_TEST_POSTGRES_URL") {
            Ok(url) => {
                for rooms in [1, 100] {
                    let schema = format!("rc_bench_{rooms}_{}", std::process::id());
                    let scoped = scoped_url(&url, &schema).await;
                    let store: Arc<dyn MessageStore> =
                        Arc::new(PostgresStore::open(&scoped).await.expect("open PostgreSQL"));
                    run("postgres", store, messages, rooms).await;
                    drop_schema(&url, &schema).await;
                }
            }
            Err(_) => println!("postgres     skipped: ROOMCAST_TEST_POSTGRES_URL is not set"),
        }
    });
}

async fn run(backend: &str, store: Arc<dyn MessageStore>, messages: u64, rooms: u64) {
    let started = Instant::now();
    append_all(&store, messages, rooms).await;
    let elapsed = started.elapsed();
    println!(
        "{backend:<12} append, {rooms:>3} room(s)             {:>9.0} acknowledged msg/s ({messages} in {:.2?})",
        messages as f64 / elapsed.as_secs_f64(),
        elapsed
    );
    let pages = 20_000;
    let started = Instant::now();
    read_pages(&store, pages, rooms, messages).await;
    let elapsed = started.elapsed();
    println!(
        "{backend:<12} history pages of 50, {rooms:>3} room(s) {:>9.0} pages/s",
        pages as f64 / elapsed.as_secs_f64()
    );
}

async fn append_all(store: &Arc<dyn MessageStore>, messages: u64, rooms: u64) {
    let window = Arc::new(Semaphore::new(IN_FLIGHT));
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(Notify::new());
    let user = User {
        id: "bench".into(),
        username: "bench".into(),
        kind: UserKind::User,
    };
    let room_names: Vec<Arc<str>> = (0..rooms).map(|r| format!("room-{r}").into()).collect();
    for n in 0..messages {
        let permit = window.clone().acquire_owned().await.expect("semaphore");
        let done = done.clone();
        let finished = finished.clone();
        store.append(
            NewMessage {
                room: room_names[(n % rooms) as usize].clone(),
                user: user.clone(),
                content: format!("benchmark message number {n} with some text"),
                created_at: Timestamp::now(),
                client_msg_id: Some(n.to_string()),
                reply_to: None,
                attachment: None,
            },
            Box::new(move |result| {
                if let Err(err) = result {
                    eprintln!("append failed: {err}");
                }
                drop(permit);
                if done.fetch_add(1, Ordering::AcqRel) + 1 == messages {
                    finished.notify_one();
                }
            }),
        );
    }
    if done.load(Ordering::Acquire) < messages {
        finished.notified().await;
    }
}

async fn read_pages(store: &Arc<dyn MessageStore>, pages: u64, rooms: u64, messages: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let store = store.clone();
        let next = next.clone();
        readers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= pages {
                    return;
                }
                let room = format!("room-{}", n % rooms);
                // Alternate the newest page with pages deep in the history.
                let page = if n.is_multiple_of(2) {
                    Page::Newest
                } else {
                    Page::Before(((n * 7919) % messages.max(1)) as i64 + 1)
                };
                if let Err(err) = store.history(&room, page, 50).await {
                    eprintln!("history failed: {err}");
                }
            }
        }));
    }
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(600), reader).await;
    }
}

async fn scoped_url(base: &str, schema: &str) -> String {
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .expect("schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-csearch_path%3D{schema}")
}

async fn drop_schema(base: &str, schema: &str) {
    if let Ok((client, connection)) = tokio_postgres::connect(base, tokio_postgres::NoTls).await {
        tokio::spawn(connection);
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
}
