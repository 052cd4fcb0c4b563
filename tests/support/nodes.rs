//! Several roomcast processes on the machine's Redis and PostgreSQL.

use super::process::Process;
use super::{ADMIN_KEY, PgSchema, SECRET};
use std::time::Duration;

/// `ROOMCAST_TEST_REDIS_URL`, or `None` (and a visible skip).
pub fn redis_url(test: &str) -> Option<String> {
    let url = std::env::var("ROOMCAST_TEST_REDIS_URL").ok();
    if url.is_none() {
        super::skipped(test, "Redis", "ROOMCAST_TEST_REDIS_URL");
    }
    url
}

/// A channel namespace of the test's own (tests run side by side on one
/// Redis).
pub fn namespace(test: &str) -> String {
    format!("rc-test-{}-{test}", std::process::id())
}

/// The flags of a node on `schema`'s PostgreSQL and the broker `broker`.
pub fn node_flags<'a>(schema: &'a PgSchema, broker: &'a str, namespace: &'a str) -> Vec<&'a str> {
    vec![
        "--database",
        schema.url.as_str(),
        "--broker",
        broker,
        "--broker-namespace",
        namespace,
        "--jwt-secret",
        SECRET,
        "--admin-key",
        ADMIN_KEY,
    ]
}

/// Two nodes with `flags` and `env`, returned once both answer.
pub async fn start_two(flags: &[&str], env: &[(&str, &str)]) -> (Process, Process) {
    let (a, b) = (Process::start(flags, env), Process::start(flags, env));
    a.ready().await;
    b.ready().await;
    (a, b)
}

/// Two nodes on one PostgreSQL schema and one Redis, with a channel
/// namespace of their own, started with `extra` flags and `env`; returned
/// once both hear each other.
pub async fn two_nodes_with(
    test: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Option<(Process, Process, PgSchema, String, String)> {
    let redis = redis_url(test)?;
    let schema = PgSchema::create(test).await?;
    let namespace = namespace(test);
    let mut flags = node_flags(&schema, &redis, &namespace);
    flags.extend_from_slice(extra);
    let (a, b) = start_two(&flags, env).await;
    // Ready to hear each other: both nodes subscribed (they subscribe just
    // after they start listening).
    let client = redis::Client::open(redis.as_str()).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let control = format!("{namespace}:control");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&control)
            .query_async(&mut connection)
            .await
            .expect("PUBSUB NUMSUB");
        if counts.first().is_some_and(|(_, count)| *count == 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some((a, b, schema, redis, namespace))
}
