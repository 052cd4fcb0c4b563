//! `project_update` and `ticket_update`: recorded with an event id and relayed
//! to the other connections of the room `project:<project_id>`.

mod support;

use serde_json::json;
use support::{TestServer, join};

#[tokio::test]
async fn project_and_ticket_events_reach_the_project_room() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    join(&mut alice, "project:apollo").await;
    join(&mut bob, "project:apollo").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.assert_alive().await;
    }

    let changes = json!({"status": "active", "owner": {"id": 7}});
    let reply = alice
        .request(json!({"type": "project_update", "project_id": "apollo", "changes": changes, "ref": "p"}))
        .await;
    assert_eq!(reply["type"], "project_updated", "{reply}");
    assert_eq!(reply["ref"], "p");
    assert_eq!(reply["project_id"], "apollo");
    let first_event = reply["event_id"].as_i64().expect("integer event id");
    let event = bob.recv().await;
    assert_eq!(event["type"], "project_update", "{event}");
    assert_eq!(event["project_id"], "apollo");
    assert_eq!(event["changes"], changes);
    assert_eq!(event["user"]["id"], "alice");
    assert_eq!(event["event_id"], first_event);

    let reply = bob
        .request(json!({"type": "ticket_update", "ticket_id": "T-1", "project_id": "apollo", "changes": {"done": true}}))
        .await;
    assert_eq!(reply["type"], "ticket_updated", "{reply}");
    assert_eq!(reply["ticket_id"], "T-1");
    assert!(reply["event_id"].as_i64().expect("integer") > first_event);
    let event = alice.recv().await;
    assert_eq!(event["type"], "ticket_update", "{event}");
    assert_eq!(event["ticket_id"], "T-1");
    assert_eq!(event["project_id"], "apollo");
    assert_eq!(event["changes"], json!({"done": true}));
    assert_eq!(event["user"]["id"], "bob");

    alice.expect_silence().await;
    carol.expect_silence().await;
    let error = carol
        .request(json!({"type": "project_update", "project_id": "apollo", "changes": {}}))
        .await;
    assert_eq!(error["error_code"], "forbidden", "{error}");
}
