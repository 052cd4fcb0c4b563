//! Schema evolution and query plans, on SQLite and (where
//! `ROOMCAST_TEST_POSTGRES_URL` is set) PostgreSQL:
//! - a database created by an older roomcast (schema version 1) opens,
//!   upgrades, and keeps its messages;
//! - a database from a newer roomcast is refused with a clear error and left
//!   untouched;
//! - history pages are read through the `(room, id)` index, never a scan.

mod support;

use roomcast::store::{
    MessageStore, POSTGRES_HISTORY_QUERIES, Page, PostgresStore, SQLITE_HISTORY_QUERIES,
    SqliteStore, StoreError,
};
use support::PgSchema;
use support::process::Process;

const SQLITE_V1: &str = include_str!("../src/store/migrations/sqlite/0001_init.sql");
const POSTGRES_V1: &str = include_str!("../src/store/migrations/postgres/0001_init.sql");

fn sqlite_v1_database(path: &std::path::Path) {
    let connection = rusqlite::Connection::open(path).expect("open");
    connection.execute_batch(SQLITE_V1).expect("schema v1");
    connection
        .pragma_update(None, "user_version", 1)
        .expect("version");
    connection
        .execute(
            "INSERT INTO messages (room, user_id, username, user_kind, content, created_at) \
             VALUES ('dev', 'ann', 'ann', 'user', 'from version 1', 0)",
            [],
        )
        .expect("old message");
}

#[tokio::test]
async fn an_older_sqlite_database_is_upgraded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    sqlite_v1_database(&path);
    let store = SqliteStore::open(Some(&path)).expect("opens and upgrades");
    let page = store.history("dev", Page::Newest, 10).await.expect("page");
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].content, "from version 1");
    drop(store);
    let connection = rusqlite::Connection::open(&path).expect("open");
    let version: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .expect("version");
    assert_eq!(version, 6);
    let indexed: i64 = connection
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'messages_created_at'",
            [],
            |row| row.get(0),
        )
        .expect("index lookup");
    assert_eq!(indexed, 1);
}

#[tokio::test]
async fn a_newer_sqlite_database_is_refused_by_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new.db");
    sqlite_v1_database(&path);
    rusqlite::Connection::open(&path)
        .and_then(|c| c.pragma_update(None, "user_version", 7))
        .expect("pretend a newer roomcast wrote it");
    let before = std::fs::read(&path).expect("read");
    let mut server = Process::start(&["--database", path.to_str().expect("utf-8")], &[]);
    let code = server.exit_code(std::time::Duration::from_secs(10)).await;
    assert_ne!(code, 0);
    let mut stderr = String::new();
    use std::io::Read;
    server
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(stderr.contains("newer"), "{stderr}");
    let after = std::fs::read(&path).expect("read");
    assert!(after == before, "the newer database file was modified");
}

#[test]
fn sqlite_history_reads_use_the_room_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plans.db");
    drop(SqliteStore::open(Some(&path)).expect("create"));
    let connection = rusqlite::Connection::open(&path).expect("open");
    // As the store plans them: once, whatever the bound values.
    connection
        .set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .expect("qpsg");
    for sql in SQLITE_HISTORY_QUERIES {
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let values: [&dyn rusqlite::ToSql; 3] = [&"dev", &50, &10];
        let count = statement.parameter_count();
        let plan: Vec<String> = statement
            .query_map(&values[..count], |row| row.get::<_, String>(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("rows");
        let plan = plan.join(" | ");
        println!("{sql}\n  -> {plan}");
        assert!(
            plan.contains("USING INDEX messages_room_id"),
            "{sql}: {plan}"
        );
        assert!(!plan.contains("SCAN"), "{sql}: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "sorted by the index: {plan}");
    }
}

#[tokio::test]
async fn an_older_postgres_schema_is_upgraded_and_a_newer_one_refused() {
    let Some(schema) = PgSchema::create("schema_upgrade").await else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client.batch_execute(POSTGRES_V1).await.expect("schema v1");
    client
        .batch_execute(
            "CREATE TABLE roomcast_schema (version INT NOT NULL); \
             INSERT INTO roomcast_schema VALUES (1); \
             INSERT INTO messages (id, room, user_id, username, user_kind, content, created_at) \
             VALUES (nextval('message_ids'), 'dev', 'ann', 'ann', 'user', 'from version 1', 0);",
        )
        .await
        .expect("old data");
    let store = PostgresStore::open(&schema.url)
        .await
        .expect("opens and upgrades");
    let page = store.history("dev", Page::Newest, 10).await.expect("page");
    assert_eq!(page.messages[0].content, "from version 1");
    drop(store);
    let version: i32 = client
        .query_one("SELECT max(version) FROM roomcast_schema", &[])
        .await
        .expect("version")
        .get(0);
    assert_eq!(version, 6);

    client
        .batch_execute("INSERT INTO roomcast_schema VALUES (9)")
        .await
        .expect("pretend a newer roomcast wrote it");
    match PostgresStore::open(&schema.url).await {
        Err(StoreError::SchemaTooNew {
            found: 9,
            supported: 6,
        }) => {}
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 1, "data untouched");
}

#[tokio::test]
async fn postgres_history_reads_use_the_room_index() {
    let Some(schema) = PgSchema::create("query_plans").await else {
        return;
    };
    drop(PostgresStore::open(&schema.url).await.expect("create"));
    let (client, connection) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    // Enough rows in enough rooms that the planner has a real choice.
    client
        .batch_execute(
            "INSERT INTO messages (id, room, user_id, username, user_kind, content, created_at) \
             SELECT n, 'room' || (n % 100), 'u', 'u', 'user', 'x', n FROM generate_series(1, 50000) AS n; \
             ANALYZE messages;",
        )
        .await
        .expect("fill");
    for sql in POSTGRES_HISTORY_QUERIES {
        let explain = format!(
            "EXPLAIN {}",
            sql.replace("$1", "'room7'")
                .replace("$2", "51")
                .replace("$3", "25000")
        );
        let plan: Vec<String> = client
            .query(&explain, &[])
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect();
        let plan = plan.join(" | ");
        println!("{sql}\n  -> {plan}");
        assert!(plan.contains("messages_room_id"), "{sql}: {plan}");
        assert!(!plan.contains("Seq Scan"), "{sql}: {plan}");
        assert!(!plan.contains("Sort"), "sorted by the index: {plan}");
    }
}
