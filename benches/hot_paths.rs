//! Micro-benchmarks of the hot paths: parsing and validating a client frame,
//! encoding a broadcast, and fanning one frame out to many outboxes.
//! (Storage batch writes are in `benches/store.rs`.)
//!
//! `cargo bench --bench hot_paths`. Prints nanoseconds per operation; a
//! measurement, not a test.

use roomcast::hub::{Audience, Hub, Identity, OutFrame, Role};
use roomcast::protocol::{Envelope, Limits, Message, ServerMessage, Timestamp, User, UserKind};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

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

    for members in [100usize, 1000, 2000] {
        let hub = Hub::new(1 << 16);
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut outboxes = Vec::with_capacity(members);
        for n in 0..members {
            let (connection, outbox) = hub.register(addr, None);
            hub.set_identity(
                &connection,
                Identity {
                    user: user(&format!("u{n}")),
                    role: Role::User,
                    expires_at: None,
                },
            );
            hub.join_room(&connection, "dev");
            outboxes.push((connection, outbox));
        }
        let out = OutFrame::from(ServerMessage::ChatMessage { message: &message }.encode(None));
        let audience = Audience::Room("dev".into());
        let rounds = 2_000_000 / members as u64;
        let started = Instant::now();
        for _ in 0..rounds {
            hub.broadcast(&audience, &out, None);
            for (_, outbox) in outboxes.iter_mut() {
                while outbox.try_recv().is_ok() {}
            }
        }
        let per = started.elapsed().as_nanos() as f64 / (rounds * members as u64) as f64;
        println!(
            "{:<48} {per:>10.1} ns/delivery",
            format!("fan-out to {members} outboxes (queue + drain)")
        );
    }
}
