//! `room_join` and `room_leave`.

use super::{HandlerError, announce_departures, speaker};
use crate::app::App;
use crate::hub::Audience;
use crate::hub::Connection;
use crate::hub::Role;
use crate::protocol::{PresenceEvent, RoomJoin, RoomLeave, ServerMessage};
use crate::store::{Page, RoomRecord, StoreError};
use std::sync::Arc;

pub async fn join(
    app: &App,
    connection: &Arc<Connection>,
    request: RoomJoin,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let user = speaker(connection)?;
    let room = request.room;
    let limit = app.config.max_rooms_per_connection;
    if !connection.in_room(&room) && connection.room_count() >= limit {
        return Err(HandlerError::Forbidden(format!(
            "this connection is in {limit} rooms, the most allowed: leave one first"
        )));
    }
    let record = if app.config.room_auto_create {
        match app.store.room(&room).await? {
            Some(record) => record,
            // Joining a room that does not exist creates it, within the
            // user's allowance of new rooms per hour.
            None => {
                if let Some(creations) = &app.room_creations
                    && let Err(wait) = creations.take(&user.id)
                {
                    return Err(HandlerError::RateLimited(wait));
                }
                app.store.ensure_room(&room).await?
            }
        }
    } else {
        app.store
            .room(&room)
            .await?
            .ok_or_else(|| HandlerError::NotFound(format!("no room `{room}`")))?
    };
    let role = connection.role().unwrap_or(Role::User);
    if !may_enter(app, &record, &user.id, role).await? {
        return Err(HandlerError::Forbidden(format!(
            "room `{room}` is private: ask its owner to add you"
        )));
    }
    // Join before reading history, so that a message stored in between is
    // broadcast to this connection rather than lost (it may arrive twice:
    // clients de-duplicate by id).
    let joined = app.hub.join_room(connection, &room);
    // With several nodes, the room's broadcasts from the others must reach
    // this node before history is read, or one could fall in between.
    if joined.is_some()
        && let Some(subscribed) = app.broker.following(&room)
    {
        subscribed.await;
    }
    let (page, limit) = match request.since_id {
        Some(since_id) => (Page::After(since_id), app.config.max_recovery),
        None => (Page::Newest, app.config.room_history),
    };
    let recent = match app.store.history(&room, page, limit).await {
        Ok(recent) => recent,
        Err(err) => {
            if joined.is_some() {
                let departure = app.hub.leave_room(connection, &room);
                announce_departures(app, departure.as_slice());
            }
            return Err(err.into());
        }
    };
    if joined.is_some() {
        app.broker
            .history_read(&room, recent.messages.last().map(|message| message.id));
    }
    let (members, member_count) = app
        .hub
        .room_members(&room, 0, app.config.max_members_listed);
    app.send(
        connection,
        &ServerMessage::RoomJoined {
            room: &room,
            members: &members,
            member_count,
            recent_messages: &recent.messages,
            missed: request.since_id.is_some() && recent.has_more,
        },
        reference,
    );
    if let Some(change) = joined {
        if change.here_changed {
            app.broker.membership(&room, &user, true);
        }
        // In a large room the join is told by the next `presence_count`.
        if change.user_changed && !change.quiet {
            app.tell_here(
                &Audience::Room(room.as_str().into()),
                &ServerMessage::Presence {
                    room: &room,
                    event: PresenceEvent::Join,
                    user: &user,
                },
                Some(&connection.id),
            );
        }
    }
    Ok(())
}

/// Whether a user may join (and so read) a room: anyone for a public room;
/// for a private one, its owner, its members, and administrators.
pub async fn may_enter(
    app: &App,
    record: &RoomRecord,
    user_id: &str,
    role: Role,
) -> Result<bool, StoreError> {
    if !record.private || role == Role::Admin || record.owner_id.as_deref() == Some(user_id) {
        return Ok(true);
    }
    app.store.is_member(&record.name, user_id).await
}

pub fn leave(
    app: &App,
    connection: &Arc<Connection>,
    request: RoomLeave,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let departure = app
        .hub
        .leave_room(connection, &request.room)
        .ok_or_else(|| {
            HandlerError::NotFound(format!("this connection is not in room `{}`", request.room))
        })?;
    app.send(
        connection,
        &ServerMessage::RoomLeft {
            room: &request.room,
        },
        reference,
    );
    announce_departures(app, &[departure]);
    Ok(())
}

/// Takes this node's connections of `user_id` (admins aside) out of `room`,
/// which they may no longer enter: `room_left` to them, a presence leave to
/// the room.
pub fn evict(app: &App, room: &str, user_id: &str) {
    let spared = |connection: &crate::hub::Connection| connection.role() == Some(Role::Admin);
    for (connection, departure) in app.hub.evict(room, user_id, spared) {
        app.send(&connection, &ServerMessage::RoomLeft { room }, None);
        announce_departures(app, &[departure]);
    }
}
