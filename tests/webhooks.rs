//! Webhooks through real HTTP: a receiver started by the test fails, then
//! times out, then recovers, and every chat message, shared file and
//! project event of the chosen rooms arrives, signed; a restart of the
//! server loses no delivery; a delivery that fails every try is counted as
//! failed.

mod support;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::process::Process;
use support::{ADMIN_KEY, Client, SECRET, TestServer, args, join};

const HOOK_SECRET: &str = "webhook-test-secret";
const FAIL: u8 = 0;
const HANG: u8 = 1;
const ACCEPT: u8 = 2;

/// A webhook receiver on a port of its own.
#[derive(Clone)]
struct Receiver {
    mode: Arc<AtomicU8>,
    tries: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    url: String,
}

impl Receiver {
    async fn start(mode: u8) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let receiver = Receiver {
            mode: Arc::new(AtomicU8::new(mode)),
            tries: Arc::default(),
            got: Arc::default(),
            url: format!("http://{}/hook", listener.local_addr().expect("addr")),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// The accepted bodies, one per delivery id (a delivery may come twice:
    /// a try that timed out may have reached the receiver).
    fn deliveries(&self) -> Vec<Value> {
        let got = self.got.lock().expect("lock");
        let mut seen = BTreeSet::new();
        let mut bodies = Vec::new();
        for (headers, body) in got.iter() {
            let id = headers["x-roomcast-delivery"]
                .to_str()
                .expect("id")
                .to_owned();
            if seen.insert(id) {
                bodies.push(serde_json::from_str(body).expect("JSON body"));
            }
        }
        bodies
    }

    async fn wait_for(&self, count: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let bodies = self.deliveries();
            if bodies.len() >= count {
                return bodies;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {count} deliveries arrived",
                bodies.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn hook(State(receiver): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    receiver.tries.fetch_add(1, Ordering::SeqCst);
    match receiver.mode.load(Ordering::SeqCst) {
        FAIL => StatusCode::INTERNAL_SERVER_ERROR,
        HANG => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK
        }
        _ => {
            receiver.got.lock().expect("lock").push((headers, body));
            StatusCode::NO_CONTENT
        }
    }
}

/// Checks `X-Roomcast-Signature: t=<seconds>,v1=<hex>` the way docs/ says.
fn verify(headers: &HeaderMap, body: &str) {
    let header = headers["x-roomcast-signature"].to_str().expect("signature");
    let (t, v1) = header.split_once(',').expect("t=...,v1=...");
    let t = t.strip_prefix("t=").expect("t=");
    let v1 = v1.strip_prefix("v1=").expect("v1=");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(HOOK_SECRET.as_bytes()).expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    mac.verify_slice(&hex::decode(v1).expect("hex"))
        .expect("signature verifies");
    let age = chrono_free_now() - t.parse::<i64>().expect("seconds");
    assert!((0..600).contains(&age), "timestamp is recent");
}

fn chrono_free_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn say(client: &mut Client, room: &str, content: &str) -> i64 {
    let ack = client
        .reply_to(json!({"type": "chat_message", "ref": content, "room": room, "content": content}))
        .await;
    assert_eq!(ack["type"], "message_ack", "{ack}");
    ack["message_id"].as_i64().expect("id")
}

#[tokio::test]
async fn every_event_arrives_signed_after_the_receiver_failed_timed_out_and_recovered() {
    let receiver = Receiver::start(FAIL).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut args = args();
    args.data_dir = Some(dir.path().to_owned());
    args.webhook = Some(vec![receiver.url.clone()]);
    args.webhook_secret = Some(HOOK_SECRET.into());
    args.webhook_rooms = Some(vec!["support".into(), "project:p1".into()]);
    args.webhook_timeout_ms = Some(300);
    args.webhook_retry_base_ms = Some(50);
    args.webhook_max_attempts = Some(50);
    let server = TestServer::with(args).await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "support").await;
    join(&mut alice, "other").await;
    join(&mut alice, "project:p1").await;

    let mut ids = BTreeSet::new();
    for n in 0..5 {
        ids.insert(say(&mut alice, "support", &format!("help {n}")).await);
    }
    say(&mut alice, "other", "not for the webhook").await;
    let event = alice.reply_to(json!({"type": "project_update", "ref": "p", "project_id": "p1", "changes": {"status": "done"}}),
    )
    .await;
    assert_eq!(event["type"], "project_updated", "{event}");
    let grant = alice
        .reply_to(
            json!({"type": "file_upload_request", "ref": "f", "filename": "log.txt", "size": 5,
               "content_type": "text/plain", "room": "support"}),
        )
        .await;
    let response = reqwest::Client::new()
        .put(format!(
            "http://{}{}",
            server.addr,
            grant["upload_url"].as_str().expect("url")
        ))
        .bearer_auth(grant["upload_token"].as_str().expect("token"))
        .body("hello")
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), 201);

    // Failing, then too slow, then answering.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        receiver.tries.load(Ordering::SeqCst) > 7,
        "retried while failing"
    );
    receiver.set(HANG);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    receiver.set(ACCEPT);
    let bodies = receiver.wait_for(7).await;
    let chats: BTreeSet<i64> = bodies
        .iter()
        .filter(|b| b["type"] == "chat_message")
        .map(|b| b["message"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(chats, ids);
    let files: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["type"] == "file_shared")
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["file"]["name"], "log.txt");
    let events: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["type"] == "project_update")
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_id"], event["event_id"]);
    assert_eq!(events[0]["changes"]["status"], "done");
    assert!(bodies.iter().all(|b| b["message"]["room"] != "other"));
    for (headers, body) in receiver.got.lock().expect("lock").iter() {
        verify(headers, body);
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers.contains_key("x-roomcast-event"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.deliveries().len(), 7, "nothing more than the 7");

    let (_, stats) = server.get_json("/api/stats", Some(ADMIN_KEY)).await;
    let webhooks = &stats["webhooks"];
    assert_eq!(webhooks["configured"], 1);
    assert!(
        webhooks["delivered"].as_u64().expect("delivered") >= 7,
        "{webhooks}"
    );
    assert!(
        webhooks["retried"].as_u64().expect("retried") > 7,
        "{webhooks}"
    );
    assert_eq!(webhooks["failed"], 0);
    let (_, metrics) = server.get("/metrics", None).await;
    assert!(
        metrics.contains("roomcast_webhook_deliveries_total{outcome=\"retried\"}"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_restart_loses_no_delivery() {
    let receiver = Receiver::start(FAIL).await;
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("roomcast.db");
    let flags = [
        "--database",
        database.to_str().expect("path"),
        "--jwt-secret",
        SECRET,
        "--webhook",
        &receiver.url,
        "--webhook-retry-base-ms",
        "50",
        "--webhook-max-attempts",
        "1000",
    ];
    let mut node = Process::start(&flags, &[]);
    node.ready().await;
    let mut alice = node.user("alice").await;
    join(&mut alice, "team").await;
    let mut ids = BTreeSet::new();
    for n in 0..20 {
        ids.insert(say(&mut alice, "team", &format!("m{n}")).await);
    }
    node.terminate();
    assert_eq!(node.exit_code(Duration::from_secs(10)).await, 0);
    receiver.set(ACCEPT);
    assert!(receiver.deliveries().is_empty());
    let node = Process::start(&flags, &[]);
    node.ready().await;
    let bodies = receiver.wait_for(20).await;
    let got: BTreeSet<i64> = bodies
        .iter()
        .map(|b| b["message"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(got, ids);
    // Unsigned without a secret.
    assert!(
        !receiver.got.lock().expect("lock")[0]
            .0
            .contains_key("x-roomcast-signature")
    );
}

#[tokio::test]
async fn a_delivery_that_fails_every_try_is_counted_as_failed() {
    let receiver = Receiver::start(FAIL).await;
    let mut args = args();
    args.webhook = Some(vec![receiver.url.clone()]);
    args.webhook_retry_base_ms = Some(20);
    args.webhook_max_attempts = Some(3);
    let server = TestServer::with(args).await;
    let mut alice = server.user("alice").await;
    join(&mut alice, "team").await;
    say(&mut alice, "team", "into the void").await;
    let stats = server
        .stats_when(|stats| stats["webhooks"]["failed"] == 1)
        .await;
    assert_eq!(stats["webhooks"]["retried"], 2, "{}", stats["webhooks"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.tries.load(Ordering::SeqCst),
        3,
        "three tries, then no more"
    );
    server.stop().await;
}

#[tokio::test]
async fn two_nodes_on_postgresql_deliver_each_event_once() {
    let receiver = Receiver::start(ACCEPT).await;
    let Some((a, b, _schema, _redis, _ns)) = support::nodes::two_nodes_with(
        "webhooks_two_nodes",
        &["--webhook", &receiver.url, "--webhook-secret", HOOK_SECRET],
        &[],
    )
    .await
    else {
        return;
    };
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    join(&mut alice, "team").await;
    join(&mut bob, "team").await;
    let mut ids = BTreeSet::new();
    for n in 0..15 {
        ids.insert(say(&mut alice, "team", &format!("a{n}")).await);
        ids.insert(say(&mut bob, "team", &format!("b{n}")).await);
    }
    let event = bob
        .reply_to(
            json!({"type": "ticket_update", "ref": "t", "ticket_id": "T-1", "project_id": "p1",
               "changes": {"state": "open"}}),
        )
        .await;
    assert_eq!(
        event["type"], "error",
        "bob has not joined project:p1: {event}"
    );
    let bodies = receiver.wait_for(30).await;
    let got: BTreeSet<i64> = bodies
        .iter()
        .map(|b| b["message"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(got, ids);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Each row went to one node: no delivery was sent twice.
    assert_eq!(receiver.got.lock().expect("lock").len(), 30);
    for (headers, body) in receiver.got.lock().expect("lock").iter() {
        verify(headers, body);
    }
}
