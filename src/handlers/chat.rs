//! `chat_message`: store the message, acknowledge it, broadcast it.
//!
//! The handler does not wait for the store: it hands the message over with a
//! callback and returns, so a connection can have several messages in flight
//! and they share one commit (the session bounds how many). The callback runs
//! once the message is durable — only then is it acknowledged and broadcast —
//! and callbacks run in commit order, so a room sees its messages in id order.

use super::{HandlerError, auto_reply, report, require_joined, speaker};
use crate::app::App;
use crate::hub::Connection;
use crate::protocol::{ChatMessage, GLOBAL_ROOM, ServerMessage, Timestamp};
use crate::store::NewMessage;
use std::sync::Arc;

pub fn send(
    app: &Arc<App>,
    connection: &Arc<Connection>,
    request: ChatMessage,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let connection = connection.clone();
    let user = speaker(&connection)?;
    let room: Arc<str> = match request.room.as_deref() {
        None | Some(GLOBAL_ROOM) => GLOBAL_ROOM.into(),
        Some(room) => {
            require_joined(&connection, room)?;
            room.into()
        }
    };
    let message = NewMessage {
        room,
        user,
        content: request.content,
        created_at: Timestamp::now(),
        client_msg_id: request.client_msg_id,
        reply_to: request.reply_to,
        attachment: None,
    };
    let app = app.clone();
    let reference = reference.map(str::to_owned);
    connection.pending_writes.start();
    app.store.clone().append(
        message,
        Box::new(move |result| {
            match result {
                Ok(appended) => {
                    let message = &appended.message;
                    app.send(
                        &connection,
                        &ServerMessage::MessageAck {
                            message_id: message.id,
                            room: &message.room,
                            client_msg_id: message.client_msg_id.as_deref(),
                        },
                        reference.as_deref(),
                    );
                    // A retried send was broadcast the first time.
                    if !appended.duplicate {
                        app.publish_stored(&appended);
                        auto_reply(&app, message);
                    }
                }
                Err(err) => report(
                    &app,
                    &connection,
                    &HandlerError::from(err),
                    reference.as_deref(),
                ),
            }
            connection.write_stored();
        }),
    );
    Ok(())
}
