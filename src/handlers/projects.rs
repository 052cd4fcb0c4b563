//! `project_update` and `ticket_update`: events about a project, recorded and
//! relayed to the room `project:<project_id>`.

use super::{HandlerError, require_joined, speaker};
use crate::app::App;
use crate::hub::Audience;
use crate::protocol::{ProjectUpdate, ServerMessage, TicketUpdate};
use crate::session::Session;
use crate::store::NewEvent;
use serde_json::json;

fn project_room(project_id: &str) -> String {
    format!("project:{project_id}")
}

pub async fn project_update(
    app: &App,
    session: &Session,
    request: ProjectUpdate,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let connection = &session.connection;
    let user = speaker(connection)?;
    let room = project_room(&request.project_id);
    require_joined(connection, &room)?;
    let event_id = app
        .store
        .record_event(NewEvent {
            room: room.as_str().into(),
            kind: "project_update",
            payload: json!({ "project_id": request.project_id, "changes": request.changes }),
            user_id: user.id.clone(),
        })
        .await?;
    app.send(
        connection,
        &ServerMessage::ProjectUpdated {
            project_id: &request.project_id,
            event_id,
        },
        reference,
    );
    app.publish(
        Audience::Room(room.into()),
        &ServerMessage::ProjectUpdate {
            project_id: &request.project_id,
            changes: &request.changes,
            user: &user,
            event_id,
        },
        Some(&connection.id),
    );
    Ok(())
}

pub async fn ticket_update(
    app: &App,
    session: &Session,
    request: TicketUpdate,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let connection = &session.connection;
    let user = speaker(connection)?;
    let room = project_room(&request.project_id);
    require_joined(connection, &room)?;
    let event_id = app
        .store
        .record_event(NewEvent {
            room: room.as_str().into(),
            kind: "ticket_update",
            payload: json!({
                "ticket_id": request.ticket_id,
                "project_id": request.project_id,
                "changes": request.changes,
            }),
            user_id: user.id.clone(),
        })
        .await?;
    app.send(
        connection,
        &ServerMessage::TicketUpdated {
            ticket_id: &request.ticket_id,
            event_id,
        },
        reference,
    );
    app.publish(
        Audience::Room(room.into()),
        &ServerMessage::TicketUpdate {
            ticket_id: &request.ticket_id,
            project_id: &request.project_id,
            changes: &request.changes,
            user: &user,
            event_id,
        },
        Some(&connection.id),
    );
    Ok(())
}
