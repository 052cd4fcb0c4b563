//! Presence requests: `presence` (a page of a joined room's members),
//! `presence_subscribe` / `presence_unsubscribe` (online announcements,
//! protocol rule 6), and the task that tells large rooms their member count
//! (rule 13).

use super::{HandlerError, require_joined};
use crate::app::App;
use crate::hub::Connection;
use crate::hub::{Audience, OutFrame};
use crate::protocol::{Presence, PresenceSubscribe, ServerMessage};
use std::sync::Arc;

/// Users a `presence_subscribe` reply lists at most.
const SUBSCRIBE_LISTED: usize = 100;

pub fn state(
    app: &App,
    connection: &Arc<Connection>,
    request: Presence,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    require_joined(connection, &request.room)?;
    let offset = usize::try_from(request.offset.unwrap_or(0)).unwrap_or(usize::MAX);
    let limit = usize::try_from(request.limit.unwrap_or(Presence::DEFAULT_LIMIT)).unwrap_or(0);
    let (members, member_count) = app.hub.room_members(&request.room, offset, limit);
    app.send(
        connection,
        &ServerMessage::PresenceState {
            room: Some(&request.room),
            members: &members,
            member_count,
        },
        reference,
    );
    Ok(())
}

pub async fn subscribe(
    app: &App,
    connection: &Arc<Connection>,
    request: PresenceSubscribe,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    // With several nodes, the users online on the others count too.
    let elsewhere = match app.broker.online_elsewhere(request.user_ids.as_deref()) {
        Some(reading) => reading.await,
        None => Vec::new(),
    };
    app.hub.subscribe(
        connection,
        request.user_ids,
        SUBSCRIBE_LISTED,
        &elsewhere,
        |watched| {
            OutFrame::from(
                ServerMessage::PresenceState {
                    room: None,
                    members: &watched.listed,
                    member_count: watched.count,
                }
                .encode(reference),
            )
        },
    );
    Ok(())
}

pub fn unsubscribe(
    app: &App,
    connection: &Arc<Connection>,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    app.hub.unsubscribe(connection);
    app.send(
        connection,
        &ServerMessage::PresenceUnsubscribed {},
        reference,
    );
    Ok(())
}

/// Sends each large room's member count when it changed, at most once a
/// second per room, until the hub is gone. Runs once per server.
pub async fn tell_counts(app: Arc<App>) {
    let Some(mut ticker) = app.hub.count_ticker() else {
        return;
    };
    while let Some(due) = ticker.next().await {
        for (room, member_count) in due {
            // The count is this node's members: each node tells its own
            // members (not through the broker, whose other nodes count
            // theirs).
            let frame = ServerMessage::PresenceCount {
                room: &room,
                member_count,
            }
            .encode(None);
            app.hub.broadcast(
                &Audience::Room(room.clone()),
                &crate::hub::OutFrame::from(frame),
                None,
            );
        }
    }
}
