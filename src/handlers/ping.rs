//! `ping`: answers `pong` with the server's clock.

use super::HandlerError;
use crate::app::App;
use crate::protocol::{ServerMessage, Timestamp};
use crate::session::Session;

pub fn ping(app: &App, session: &Session, reference: Option<&str>) -> Result<(), HandlerError> {
    app.send(
        &session.connection,
        &ServerMessage::Pong {
            server_time: Timestamp::now(),
        },
        reference,
    );
    Ok(())
}
