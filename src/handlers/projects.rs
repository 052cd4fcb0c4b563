//! `project_update` and `ticket_update`: events about a project, recorded and
//! relayed to the room `project:<project_id>`.

use super::{HandlerError, require_joined, speaker};
use crate::app::App;
use crate::hub::Audience;
use crate::protocol::{ProjectUpdate, ServerMessage, TicketUpdate, User};
use crate::session::Session;
use crate::store::NewEvent;
use serde_json::{Value, json};
use std::sync::Arc;

/// An event stored for a project's room.
struct Recorded {
    user: User,
    room: Arc<str>,
    event_id: i64,
}

/// Checks that the connection is in the project's room and stores the event.
async fn record(
    app: &App,
    session: &Session,
    project_id: &str,
    kind: &'static str,
    payload: Value,
) -> Result<Recorded, HandlerError> {
    let user = speaker(&session.connection)?;
    let room: Arc<str> = format!("project:{project_id}").into();
    require_joined(&session.connection, &room)?;
    let event_id = app
        .store
        .record_event(NewEvent {
            room: room.clone(),
            kind,
            payload,
            user_id: user.id.clone(),
            idempotency_key: None,
        })
        .await?
        .id;
    Ok(Recorded {
        user,
        room,
        event_id,
    })
}

pub async fn project_update(
    app: &App,
    session: &Session,
    request: ProjectUpdate,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let payload = json!({ "project_id": request.project_id, "changes": request.changes });
    let event = record(app, session, &request.project_id, "project_update", payload).await?;
    app.send(
        &session.connection,
        &ServerMessage::ProjectUpdated {
            project_id: &request.project_id,
            event_id: event.event_id,
        },
        reference,
    );
    app.publish(
        Audience::Room(event.room),
        &ServerMessage::ProjectUpdate {
            project_id: &request.project_id,
            changes: &request.changes,
            user: &event.user,
            event_id: event.event_id,
        },
        Some(&session.connection.id),
    );
    Ok(())
}

pub async fn ticket_update(
    app: &App,
    session: &Session,
    request: TicketUpdate,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let payload = json!({
        "ticket_id": request.ticket_id,
        "project_id": request.project_id,
        "changes": request.changes,
    });
    let event = record(app, session, &request.project_id, "ticket_update", payload).await?;
    app.send(
        &session.connection,
        &ServerMessage::TicketUpdated {
            ticket_id: &request.ticket_id,
            event_id: event.event_id,
        },
        reference,
    );
    app.publish(
        Audience::Room(event.room),
        &ServerMessage::TicketUpdate {
            ticket_id: &request.ticket_id,
            project_id: &request.project_id,
            changes: &request.changes,
            user: &event.user,
            event_id: event.event_id,
        },
        Some(&session.connection.id),
    );
    Ok(())
}
