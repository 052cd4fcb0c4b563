//! File sharing on an S3-compatible bucket (moto's server, started by each
//! test on a port of its own): two nodes on one Redis and one PostgreSQL
//! share files through the bucket (either node takes the PUT, either node
//! serves the file), and a bucket that fails in the middle of an upload
//! leaves nothing behind and the upload can be sent again.

mod support;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::process::Process;
use support::{Client, SECRET, join};

const BUCKET: &str = "roomcast-test";

/// A moto S3 server of this test's own.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts `moto_server` (from `ROOMCAST_TEST_MOTO_SERVER`) with an empty
    /// bucket, or says the test was skipped.
    async fn start(test: &str) -> Option<Moto> {
        let Ok(program) = std::env::var("ROOMCAST_TEST_MOTO_SERVER") else {
            support::skipped(test, "an S3-compatible server", "ROOMCAST_TEST_MOTO_SERVER");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        Some(Moto::start_on(&program, port).await)
    }

    async fn start_on(program: &str, port: u16) -> Moto {
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Moto { child, port };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let created = reqwest::Client::new()
                .put(format!("{}/{BUCKET}", moto.endpoint()))
                .send()
                .await;
            if created.is_ok_and(|response| response.status().is_success()) {
                return moto;
            }
            assert!(tokio::time::Instant::now() < deadline, "moto did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The names of the bucket's objects.
    async fn keys(&self) -> String {
        reqwest::Client::new()
            .get(format!("{}/{BUCKET}?list-type=2", self.endpoint()))
            .send()
            .await
            .expect("list")
            .text()
            .await
            .expect("list body")
    }
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}

async fn authorize(client: &mut Client, size: usize) -> Value {
    let reply = client
        .reply_to(
            json!({"type": "file_upload_request", "ref": "up", "filename": "notes.txt",
               "size": size, "content_type": "text/plain", "room": "team"}),
        )
        .await;
    assert_eq!(reply["type"], "file_upload_authorized", "{reply}");
    reply
}

fn upload_url(addr: std::net::SocketAddr, grant: &Value) -> String {
    format!(
        "http://{addr}{}",
        grant["upload_url"].as_str().expect("url")
    )
}

#[tokio::test]
async fn two_nodes_share_files_through_a_bucket() {
    let Some(moto) = Moto::start("files_s3_two_nodes").await else {
        return;
    };
    let env = moto.env();
    let store = format!("s3://{BUCKET}/shared/files");
    let Some((a, b, _schema, _redis, _ns)) = support::nodes::two_nodes_with(
        "files_s3_two_nodes",
        &["--file-store", &store],
        &pairs(&env),
    )
    .await
    else {
        return;
    };
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    join(&mut alice, "team").await;
    join(&mut bob, "team").await;
    let text = "a line of text\n".repeat(1000);
    let grant = authorize(&mut alice, text.len()).await;
    // Alice asked node A; the PUT goes to node B.
    let response = reqwest::Client::new()
        .put(upload_url(b.addr(), &grant))
        .bearer_auth(grant["upload_token"].as_str().expect("token"))
        .body(text.clone())
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), 201);
    let body: Value = serde_json::from_str(&response.text().await.expect("body")).expect("json");
    let file = &body["file"];
    assert_eq!(file["sha256"], hex::encode(Sha256::digest(text.as_bytes())));
    assert_eq!(alice.recv_type("file_shared").await["file"], *file);
    assert_eq!(bob.recv_type("file_shared").await["file"], *file);
    let id = file["id"].as_str().expect("id");
    assert!(moto.keys().await.contains(&format!("shared/files/{id}")));
    for node in [&a, &b] {
        let token = roomcast::auth::Tokens::new(SECRET).mint("bob", None, None, 600);
        let response = reqwest::Client::new()
            .get(format!(
                "http://{}{}",
                node.addr(),
                file["url"].as_str().expect("url")
            ))
            .bearer_auth(token)
            .header("Range", "bytes=15-29")
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 206);
        assert_eq!(response.text().await.expect("body"), "a line of text\n");
    }
}

#[tokio::test]
async fn a_bucket_that_fails_mid_upload_leaves_nothing_and_the_upload_can_be_sent_again() {
    let Some(mut moto) = Moto::start("files_s3_failure").await else {
        return;
    };
    let program = std::env::var("ROOMCAST_TEST_MOTO_SERVER").expect("moto");
    let env = moto.env();
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("roomcast.db");
    let store = format!("s3://{BUCKET}");
    let node = Process::start(
        &[
            "--database",
            database.to_str().expect("path"),
            "--jwt-secret",
            SECRET,
            "--file-store",
            &store,
        ],
        &pairs(&env),
    );
    node.ready().await;
    let mut alice = node.user("alice").await;
    let mut bob = node.user("bob").await;
    join(&mut alice, "team").await;
    join(&mut bob, "team").await;
    // Two parts of 5 MiB and a little more: the first part goes to the
    // bucket while the body is still coming.
    let line = "0123456789abcdef0123456789abcde\n";
    let text = line.repeat(11 * 1024 * 1024 / line.len());
    let grant = authorize(&mut alice, text.len()).await;
    let token = grant["upload_token"].as_str().expect("token").to_owned();
    let (chunks, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let put = tokio::spawn({
        let url = upload_url(node.addr(), &grant);
        let token = token.clone();
        let length = text.len().to_string();
        async move {
            let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|chunk| (chunk, receiver))
            });
            reqwest::Client::new()
                .put(url)
                .bearer_auth(token)
                .header("Content-Length", length)
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await
                .expect("PUT")
        }
    });
    let bytes = text.as_bytes();
    chunks
        .send(Ok(bytes[..6 * 1024 * 1024].to_vec()))
        .await
        .expect("first half");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The bucket goes away in the middle of the upload.
    let _ = moto.child.kill();
    let _ = moto.child.wait();
    chunks
        .send(Ok(bytes[6 * 1024 * 1024..].to_vec()))
        .await
        .expect("second half");
    drop(chunks);
    let response = tokio::time::timeout(Duration::from_secs(60), put)
        .await
        .expect("an answer within a minute")
        .expect("PUT task");
    assert_eq!(response.status(), 503);
    let error: Value = serde_json::from_str(&response.text().await.expect("body")).expect("json");
    assert_eq!(error["error_code"], "unavailable");
    bob.expect_none_of("file_shared").await;

    // The bucket is back (empty, as moto keeps nothing); the same token works.
    let port = moto.port;
    drop(moto);
    let moto = Moto::start_on(&program, port).await;
    let response = reqwest::Client::new()
        .put(upload_url(node.addr(), &grant))
        .bearer_auth(&token)
        .body(text.clone())
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), 201);
    let shared = bob.recv_type("file_shared").await;
    assert_eq!(shared["file"]["size"], text.len());
    let keys = moto.keys().await;
    assert!(
        keys.contains(shared["file"]["id"].as_str().expect("id")),
        "{keys}"
    );
}
