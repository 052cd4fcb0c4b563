//! The welcome package: the first frame of every connection.

use crate::app::App;
use crate::hub::{Connection, OutFrame};
use crate::protocol::{GLOBAL_ROOM, ServerInfo, ServerMessage, WelcomeLimits};
use crate::store::Page;

/// The `welcome` frame for `connection`: who it is, the server's limits and
/// heartbeat, and (for a logged-in user or named guest) the newest
/// messages of `global`.
pub async fn welcome(app: &App, connection: &Connection) -> OutFrame {
    let recent = if connection.is_announced() && app.config.welcome_history > 0 {
        match app
            .store
            .history(GLOBAL_ROOM, Page::Newest, app.config.welcome_history)
            .await
        {
            Ok(page) => page.messages,
            Err(err) => {
                tracing::error!(error = %err, "cannot read recent messages for a welcome");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let user = connection.user();
    OutFrame::from(
        ServerMessage::Welcome {
            connection_id: &connection.id,
            server: ServerInfo::THIS,
            heartbeat_interval_ms: u64::try_from(app.config.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            authenticated: connection.is_authenticated(),
            user: user.as_ref(),
            recent_messages: &recent,
            limits: WelcomeLimits {
                max_frame_bytes: app.config.max_frame_bytes,
                max_message_chars: app.config.max_message_chars,
            },
        }
        .encode(None),
    )
}
