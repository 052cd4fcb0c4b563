//! A WebSocket echo server on roomcast's own WebSocket layer (src/wire), for
//! running a conformance suite against it:
//!
//! ```sh
//! cargo run --release --example echo -- 127.0.0.1:9001
//! # then point Autobahn|Testsuite's fuzzingclient at ws://127.0.0.1:9001/ws
//! ```

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("echo: listening on ws://{addr}/ws");
    roomcast::wire::echo::serve(listener, 16 * 1024 * 1024).await;
    Ok(())
}
