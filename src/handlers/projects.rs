//! `project_update` and `ticket_update`: events about a project, recorded and
//! relayed to the room `project:<project_id>`.

use super::{HandlerError, require_joined, speaker};
use crate::app::App;
use crate::hub::Audience;
use crate::hub::Connection;
use crate::protocol::{ProjectUpdate, ServerMessage, TicketUpdate, User};
use crate::store::{NewEvent, RecordedEvent, StoreError};
use serde_json::{Value, json};
use std::sync::Arc;

/// A project or ticket event, from a connection or from a backend
/// (`POST /api/publish`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProjectEvent {
    ProjectUpdate(ProjectUpdate),
    TicketUpdate(TicketUpdate),
}

impl ProjectEvent {
    /// Checks the ids as the WebSocket messages do.
    pub fn validated(self) -> Result<Self, crate::protocol::Rejection> {
        Ok(match self {
            ProjectEvent::ProjectUpdate(update) => ProjectEvent::ProjectUpdate(update.validated()?),
            ProjectEvent::TicketUpdate(update) => ProjectEvent::TicketUpdate(update.validated()?),
        })
    }

    fn project_id(&self) -> &str {
        match self {
            ProjectEvent::ProjectUpdate(update) => &update.project_id,
            ProjectEvent::TicketUpdate(update) => &update.project_id,
        }
    }

    /// Its kind and payload as stored.
    fn stored(&self) -> (&'static str, Value) {
        match self {
            ProjectEvent::ProjectUpdate(update) => (
                "project_update",
                json!({ "project_id": update.project_id, "changes": update.changes }),
            ),
            ProjectEvent::TicketUpdate(update) => (
                "ticket_update",
                json!({
                    "ticket_id": update.ticket_id,
                    "project_id": update.project_id,
                    "changes": update.changes,
                }),
            ),
        }
    }

    /// What the room is told.
    fn told<'a>(&'a self, user: &'a User, event_id: i64) -> ServerMessage<'a> {
        match self {
            ProjectEvent::ProjectUpdate(update) => ServerMessage::ProjectUpdate {
                project_id: &update.project_id,
                changes: &update.changes,
                user,
                event_id,
            },
            ProjectEvent::TicketUpdate(update) => ServerMessage::TicketUpdate {
                ticket_id: &update.ticket_id,
                project_id: &update.project_id,
                changes: &update.changes,
                user,
                event_id,
            },
        }
    }
}

/// Records `event` in `room` as said by `user` and tells the room (but
/// `except`); with an idempotency key already used in the room, finds the
/// event recorded then and tells nobody again.
pub async fn record_and_tell(
    app: &App,
    room: Arc<str>,
    user: &User,
    event: &ProjectEvent,
    idempotency_key: Option<String>,
    except: Option<&str>,
) -> Result<RecordedEvent, StoreError> {
    let (kind, payload) = event.stored();
    let recorded = app
        .store
        .record_event(NewEvent {
            room: room.clone(),
            kind,
            payload,
            user_id: user.id.clone(),
            idempotency_key,
        })
        .await?;
    if !recorded.duplicate {
        app.publish(Audience::Room(room), &event.told(user, recorded.id), except);
    }
    Ok(recorded)
}

/// A connection's event, for the room `project:<project_id>` it must have
/// joined; the event's id.
async fn from_connection(
    app: &App,
    connection: &Arc<Connection>,
    event: &ProjectEvent,
) -> Result<i64, HandlerError> {
    let user = speaker(connection)?;
    let room: Arc<str> = format!("project:{}", event.project_id()).into();
    require_joined(connection, &room)?;
    let recorded = record_and_tell(app, room, &user, event, None, Some(&connection.id)).await?;
    Ok(recorded.id)
}

pub async fn project_update(
    app: &App,
    connection: &Arc<Connection>,
    request: ProjectUpdate,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let event = ProjectEvent::ProjectUpdate(request);
    let event_id = from_connection(app, connection, &event).await?;
    app.send(
        connection,
        &ServerMessage::ProjectUpdated {
            project_id: event.project_id(),
            event_id,
        },
        reference,
    );
    Ok(())
}

pub async fn ticket_update(
    app: &App,
    connection: &Arc<Connection>,
    request: TicketUpdate,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let ticket_id = request.ticket_id.clone();
    let event = ProjectEvent::TicketUpdate(request);
    let event_id = from_connection(app, connection, &event).await?;
    app.send(
        connection,
        &ServerMessage::TicketUpdated {
            ticket_id: &ticket_id,
            event_id,
        },
        reference,
    );
    Ok(())
}
