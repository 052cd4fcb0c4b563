//! `ping`: answers `pong` with the server's clock.

use super::HandlerError;
use crate::app::App;
use crate::hub::Connection;
use crate::protocol::{ServerMessage, Timestamp};
use std::sync::Arc;

pub fn ping(
    app: &App,
    connection: &Arc<Connection>,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    app.send(
        connection,
        &ServerMessage::Pong {
            server_time: Timestamp::now(),
        },
        reference,
    );
    Ok(())
}
