//! `history`: one page of a joined room's stored messages.
//!
//! The global room cannot be joined; every authenticated connection and named
//! guest receives its messages, so every one of them may page through it too.

use super::{HandlerError, require_joined};
use crate::app::App;
use crate::hub::Connection;
use crate::protocol::{GLOBAL_ROOM, History, ServerMessage};
use crate::store::Page;
use std::sync::Arc;

pub async fn page(
    app: &App,
    connection: &Arc<Connection>,
    request: History,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    if request.room != GLOBAL_ROOM {
        require_joined(connection, &request.room)?;
    }
    let page = match (request.before_id, request.after_id) {
        (Some(before), _) => Page::Before(before),
        (None, Some(after)) => Page::After(after),
        (None, None) => Page::Newest,
    };
    let limit = usize::try_from(request.limit.unwrap_or(History::DEFAULT_LIMIT)).unwrap_or(1);
    let found = app.store.history(&request.room, page, limit).await?;
    app.send(
        connection,
        &ServerMessage::History {
            room: &request.room,
            messages: &found.messages,
            has_more: found.has_more,
        },
        reference,
    );
    Ok(())
}
