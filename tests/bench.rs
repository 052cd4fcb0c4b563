//! `roomcast bench` against a real server: each scenario runs, loses
//! nothing, and reports its figures as JSON. (The figures themselves are
//! measured by hand and recorded in docs/performance.md; nothing here times
//! anything.)

mod support;

use serde_json::Value;
use support::SECRET;
use support::process::Process;

fn bench(server: &Process, args: &[&str]) -> Value {
    let url = format!("ws://{}/ws", server.addr());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["bench", "--json"])
        .args(args)
        .args(["--url", &url, "--jwt-secret", SECRET])
        .output()
        .expect("run roomcast bench");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON report")
}

#[tokio::test]
async fn every_scenario_runs_and_loses_nothing() {
    let server = Process::start(
        &[
            "--database",
            "sqlite::memory:",
            "--jwt-secret",
            SECRET,
            "--rate-limit-messages",
            "0",
        ],
        &[],
    );
    server.ready().await;

    let burst = bench(&server, &["burst", "--messages", "500", "--window", "16"]);
    assert_eq!(burst["acknowledged"], 500, "{burst}");
    assert_eq!(burst["partial"], false);
    assert!(burst["acknowledged_rate"].as_f64().is_some_and(|r| r > 0.0));

    let pid = server.child.id().to_string();
    let idle = bench(
        &server,
        &[
            "idle",
            "--connections",
            "50",
            "--hold",
            "0",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(idle["connections_open"], 50, "{idle}");
    assert_eq!(idle["failures"], 0);
    assert!(
        idle["server_rss_kib"].as_u64().is_some_and(|kib| kib > 0),
        "{idle}"
    );
    assert!(idle["connect_latency_p99_ms"].is_number());

    let fanout = bench(
        &server,
        &[
            "fanout",
            "--rooms",
            "2",
            "--members",
            "5",
            "--senders",
            "1",
            "--rate",
            "20",
            "--duration",
            "1",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(fanout["lost"], 0, "{fanout}");
    let acknowledged = fanout["messages_acknowledged"].as_u64().expect("count");
    assert!(acknowledged > 0, "{fanout}");
    assert_eq!(fanout["deliveries"].as_u64(), Some(acknowledged * 5));
    assert!(fanout["latency_p99_ms"].is_number());
    assert!(fanout["server_cpu_per_delivery_us"].is_number());
}
