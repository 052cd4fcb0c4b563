//! Micro-benchmarks of the hot paths: parsing and validating a client frame,
//! encoding a broadcast, and fanning frames out to many real sockets,
//! next to the floor of writing the same bytes with nothing around them.
//! (Storage batch writes are in `benches/store.rs`.)
//!
//! `cargo bench --bench hot_paths`. Prints nanoseconds per operation; a
//! measurement, not a test.

use roomcast::hub::{Audience, Batch, Hub, Identity, OutFrame, Role};
use roomcast::protocol::{Envelope, Limits, Message, ServerMessage, Timestamp, User, UserKind};
use roomcast::wire::Stream;
use std::hint::black_box;
use std::io::{IoSlice, Read, Write};
use std::time::{Duration, Instant};

fn measure(name: &str, operations: u64, mut body: impl FnMut()) {
    // Warm up, then time.
    for _ in 0..operations / 10 {
        body();
    }
    let started = Instant::now();
    for _ in 0..operations {
        body();
    }
    let per = started.elapsed().as_nanos() as f64 / operations as f64;
    println!("{name:<48} {per:>10.1} ns/op");
}

fn user(id: &str) -> User {
    User {
        id: id.into(),
        username: id.into(),
        kind: UserKind::User,
    }
}

fn main() {
    let frame = r#"{"type":"chat_message","room":"dev","content":"hello there, how is the release going?","client_msg_id":"c-1234","ref":"r1"}"#;
    let limits = Limits {
        max_message_chars: 4000,
    };
    measure("parse + validate a chat_message frame", 1_000_000, || {
        let envelope = Envelope::parse(black_box(frame)).expect("valid");
        black_box(envelope.into_message(limits).expect("valid"));
    });

    let message = Message {
        id: 123_456,
        room: "dev".into(),
        user: user("alice"),
        content: "hello there, how is the release going?".into(),
        created_at: Timestamp::now(),
        client_msg_id: Some("c-1234".into()),
        reply_to: None,
        attachment: None,
    };
    measure("encode a chat_message broadcast", 1_000_000, || {
        black_box(ServerMessage::ChatMessage { message: &message }.encode(None));
    });

    let out = OutFrame::from(ServerMessage::ChatMessage { message: &message }.encode(None));
    roomcast::server::connection_capacity();
    // A worker thread drives the reactor, so that sockets are known writable.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _inside = runtime.enter();
    for members in [100usize, 1000, 2000] {
        fan_out(members, &out);
    }
}

/// Fan-out into real loopback TCP sockets, against the floor: the same
/// frames written to the same sockets with nothing else around them.
fn fan_out(members: usize, out: &OutFrame) {
    let hub = Hub::new(1 << 16);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut clients = Vec::with_capacity(members);
    let mut servers = Vec::with_capacity(members);
    for n in 0..members {
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (server, peer) = listener.accept().expect("accept");
        server.set_nodelay(true).expect("nodelay");
        server.set_nonblocking(true).expect("nonblocking");
        client.set_nonblocking(true).expect("nonblocking");
        let raw = server.try_clone().expect("dup");
        let stream = Stream::Tcp(tokio::net::TcpStream::from_std(server).expect("register"));
        let connection = hub.register(peer, None, Some(stream));
        connection.outbox.release(out.bytes.clone());
        hub.set_identity(
            &connection,
            Identity {
                user: user(&format!("u{n}")),
                role: Role::User,
                expires_at: None,
            },
        );
        hub.join_room(&connection, "dev");
        clients.push(client);
        servers.push((connection, raw));
    }
    // Once the reactor has seen the sockets writable, the welcomes go out
    // (a session task does this in the server).
    std::thread::sleep(Duration::from_millis(100));
    for (connection, _) in &servers {
        connection.outbox.flush();
    }
    let drain = |clients: &mut Vec<std::net::TcpStream>| {
        let mut buf = vec![0u8; 1 << 16];
        for client in clients.iter_mut() {
            while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
        }
    };
    drain(&mut clients);
    let audience = Audience::Room("dev".into());

    // One frame per socket per round, then twenty, as when a burst is
    // committed at once (written as one batch).
    for burst in [1usize, 20] {
        let rounds = (400_000 / (members * burst) as u64).max(20);
        let slices = vec![IoSlice::new(&out.bytes); burst];
        let mut floor = Duration::ZERO;
        let mut hub_time = Duration::ZERO;
        for _ in 0..rounds {
            let started = Instant::now();
            for (_, mut raw) in servers.iter().map(|(c, r)| (c, r)) {
                let written = if burst == 1 {
                    raw.write(&out.bytes)
                } else {
                    raw.write_vectored(&slices)
                };
                black_box(written.ok());
            }
            floor += started.elapsed();
            drain(&mut clients);
            let started = Instant::now();
            {
                let _batch = (burst > 1).then(Batch::start);
                for _ in 0..burst {
                    hub.broadcast(&audience, out, None);
                }
            }
            hub_time += started.elapsed();
            drain(&mut clients);
        }
        let deliveries = (rounds * (members * burst) as u64) as f64;
        for (name, total) in [
            (
                format!("floor: {burst} frame(s) to {members} sockets"),
                floor,
            ),
            (
                format!("broadcast {burst} frame(s) to {members} sockets"),
                hub_time,
            ),
        ] {
            let per = total.as_nanos() as f64 / deliveries;
            println!("{name:<48} {per:>10.1} ns/delivery");
        }
    }
    let queued: usize = servers.iter().map(|(c, _)| c.outbox.len()).sum();
    assert_eq!(queued, 0, "every frame went straight into its socket");
}
