//! `ai_request`: ask the assistant. The answer streams back to the requester
//! as `ai_response_chunk` frames and ends with one `ai_response`; with a
//! `room`, the room sees the assistant typing, and the answer is stored as the
//! assistant's message and broadcast like any chat message.
//!
//! The request runs in a task of its own, so the connection keeps working
//! while the model thinks; if the requester disconnects, the provider call
//! is dropped.

use super::{HandlerError, require_joined, send_error};
use crate::ai::{AiError, Provider, Turn};
use crate::app::App;
use crate::hub::{Audience, Connection};
use crate::protocol::{
    AiRequest, ErrorCode, GLOBAL_ROOM, Message, ServerMessage, Timestamp, User, UserKind,
};
use crate::session::Session;
use crate::store::{NewMessage, Page};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

pub fn request(
    app: &Arc<App>,
    session: &Session,
    request: AiRequest,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let room = request.room.clone().filter(|room| room != GLOBAL_ROOM);
    if let Some(room) = &room {
        require_joined(&session.connection, room)?;
    }
    let Some(provider) = app.ai.clone() else {
        return Err(HandlerError::AiUnavailable(
            "no AI provider is configured on this server",
        ));
    };
    let requester = session
        .connection
        .user()
        .ok_or(HandlerError::NotAuthenticated("authenticate first"))?;
    let job = Job {
        app: app.clone(),
        connection: session.connection.clone(),
        provider,
        request_id: format!("ai-{}", NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)),
        reference: reference.map(str::to_owned),
        requester,
        prompt: request.prompt,
        room,
        context: request.context,
    };
    tokio::spawn(job.run());
    Ok(())
}

/// The assistant as a user of the rooms it answers in.
pub fn assistant(app: &App) -> User {
    User {
        id: "assistant".into(),
        username: app.config.ai_name.as_str().into(),
        kind: UserKind::Assistant,
    }
}

struct Job {
    app: Arc<App>,
    connection: Arc<Connection>,
    provider: Arc<dyn Provider>,
    request_id: String,
    reference: Option<String>,
    requester: User,
    prompt: String,
    room: Option<String>,
    context: bool,
}

impl Job {
    async fn run(self) {
        let assistant = assistant(&self.app);
        self.typing(&assistant, true);
        let outcome = tokio::select! {
            outcome = self.answer() => Some(outcome),
            // The requester left: dropping `answer` drops the provider call.
            () = self.connection.closed() => None,
        };
        self.typing(&assistant, false);
        match outcome {
            Some(Ok((content, model))) => self.finish(&assistant, content, model).await,
            Some(Err(err)) => {
                let code = match err {
                    AiError::Timeout => ErrorCode::AiTimeout,
                    AiError::Unavailable(_) => ErrorCode::AiUnavailable,
                };
                tracing::warn!(request = %self.request_id, error = %err, "AI request failed");
                let message = match code {
                    ErrorCode::AiTimeout => "the assistant took too long to answer",
                    _ => "the assistant is unavailable right now",
                };
                send_error(
                    &self.app,
                    &self.connection,
                    code,
                    message,
                    None,
                    self.reference.as_deref(),
                );
            }
            None => {}
        }
    }

    /// Streams the model's answer to the requester; returns it whole.
    async fn answer(&self) -> Result<(String, String), AiError> {
        let conversation = self.conversation().await;
        let (deltas, mut received) = mpsc::unbounded_channel::<String>();
        let completion = self.provider.complete(conversation, deltas);
        tokio::pin!(completion);
        loop {
            tokio::select! {
                biased;
                Some(delta) = received.recv() => self.chunk(&delta),
                result = &mut completion => {
                    // Whatever was streamed before the end goes out first.
                    while let Ok(delta) = received.try_recv() {
                        self.chunk(&delta);
                    }
                    let completion = result?;
                    return Ok((completion.content, completion.model));
                }
            }
        }
    }

    fn chunk(&self, delta: &str) {
        self.app.send(
            &self.connection,
            &ServerMessage::AiResponseChunk {
                request_id: &self.request_id,
                delta,
            },
            self.reference.as_deref(),
        );
    }

    /// The system prompt, the room's recent messages (the assistant's own as
    /// its turns, everyone else's as user turns with their names), then the
    /// prompt.
    async fn conversation(&self) -> Vec<Turn> {
        let mut turns = vec![Turn {
            role: "system",
            content: self.app.config.ai_system_prompt.clone(),
        }];
        if let (Some(room), true) = (&self.room, self.context) {
            let limit = self.app.config.ai_context_messages;
            if limit > 0
                && let Ok(page) = self.app.store.history(room, Page::Newest, limit).await
            {
                for message in page.messages {
                    turns.push(if message.user.kind == UserKind::Assistant {
                        Turn {
                            role: "assistant",
                            content: message.content,
                        }
                    } else {
                        Turn {
                            role: "user",
                            content: format!("{}: {}", message.user.username, message.content),
                        }
                    });
                }
            }
        }
        turns.push(Turn {
            role: "user",
            content: format!("{}: {}", self.requester.username, self.prompt),
        });
        turns
    }

    /// Stores and broadcasts the answer (with a room), then sends `ai_response`.
    async fn finish(&self, assistant: &User, content: String, model: String) {
        let stored = match &self.room {
            Some(room) => self.store(room, assistant, &content).await,
            None => None,
        };
        self.app.send(
            &self.connection,
            &ServerMessage::AiResponse {
                request_id: &self.request_id,
                content: &content,
                model: &model,
                message: stored.as_ref(),
            },
            self.reference.as_deref(),
        );
    }

    async fn store(&self, room: &str, assistant: &User, content: &str) -> Option<Message> {
        let (done, stored) = oneshot::channel();
        self.app.store.append(
            NewMessage {
                room: room.into(),
                user: assistant.clone(),
                content: content.to_owned(),
                created_at: Timestamp::now(),
                client_msg_id: None,
                reply_to: None,
                attachment: None,
            },
            Box::new(move |result| {
                // The task waits for this; if it is gone, nobody needs it.
                let _ = done.send(result);
            }),
        );
        match stored.await {
            Ok(Ok(appended)) => {
                self.app.publish(
                    Audience::Room(appended.message.room.clone()),
                    &ServerMessage::ChatMessage {
                        message: &appended.message,
                    },
                    None,
                );
                Some(appended.message)
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot store the assistant's answer");
                None
            }
            Err(_) => None,
        }
    }

    fn typing(&self, assistant: &User, is_typing: bool) {
        if let Some(room) = &self.room {
            self.app.publish(
                Audience::Room(room.as_str().into()),
                &ServerMessage::UserTyping {
                    room,
                    user: assistant,
                    is_typing,
                },
                None,
            );
        }
    }
}
