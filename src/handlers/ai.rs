//! `ai_request`: ask the assistant. The answer streams back to the requester
//! as `ai_response_chunk` frames and ends with one `ai_response`; with a
//! `room`, the room sees the assistant typing, and the answer is stored as the
//! assistant's message and broadcast like any chat message.
//!
//! The request runs in a task of its own, so the connection keeps working
//! while the model thinks; if the requester disconnects, the provider call
//! is dropped.

use super::{HandlerError, require_joined, send_error_patiently};
use crate::ai::{Admission, AiError, Completion, Provider, Turn};
use crate::app::App;
use crate::hub::{Audience, Connection};
use crate::protocol::{
    AiCancel, AiRequest, ErrorCode, GLOBAL_ROOM, Message, ServerMessage, Timestamp, User, UserKind,
};
use crate::store::{NewMessage, Page};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

pub fn request(
    app: &Arc<App>,
    connection: &Arc<Connection>,
    request: AiRequest,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let room = request.room.clone().filter(|room| room != GLOBAL_ROOM);
    if let Some(room) = &room {
        require_joined(connection, room)?;
    }
    let Some(provider) = app.ai.clone() else {
        return Err(HandlerError::AiUnavailable(
            "no AI provider is configured on this server",
        ));
    };
    let requester = connection
        .user()
        .ok_or(HandlerError::NotAuthenticated("authenticate first"))?;
    let admission = app
        .ai_control
        .admit(&requester.id, room.as_deref())
        .map_err(HandlerError::RateLimited)?;
    let job = Job {
        app: app.clone(),
        connection: Some(connection.clone()),
        provider,
        _admission: admission,
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

/// Answers a stored room message on its own when it mentions the assistant
/// (`@name`) or the room answers everything — never a message of an
/// assistant (or the system), so assistants cannot talk to each other
/// forever. Called once the message is committed.
pub fn auto_reply(app: &Arc<App>, message: &Message) {
    let Some(provider) = app.ai.clone() else {
        return;
    };
    if matches!(message.user.kind, UserKind::Assistant | UserKind::System)
        || &*message.room == GLOBAL_ROOM
    {
        return;
    }
    let everything = app
        .config
        .ai_answer_all_rooms
        .iter()
        .any(|room| room.as_str() == &*message.room);
    if !everything && !mentions(&message.content, &app.config.ai_name) {
        return;
    }
    let Ok(admission) = app.ai_control.admit(&message.user.id, Some(&message.room)) else {
        tracing::debug!(room = %message.room, "auto-reply skipped: AI limits reached");
        return;
    };
    let job = Job {
        app: app.clone(),
        connection: None,
        provider,
        _admission: admission,
        request_id: format!("ai-{}", NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)),
        reference: None,
        requester: message.user.clone(),
        prompt: message.content.clone(),
        room: Some(message.room.to_string()),
        context: true,
    };
    app.runtime.spawn(job.run());
}

/// Whether `text` mentions `@name` (case-insensitively, as a whole word).
fn mentions(text: &str, name: &str) -> bool {
    let text = text.to_lowercase();
    let tag = format!("@{}", name.to_lowercase());
    text.match_indices(&tag).any(|(at, _)| {
        text[at + tag.len()..]
            .chars()
            .next()
            .is_none_or(|next| !(next.is_alphanumeric() || next == '_' || next == '-'))
    })
}

/// `ai_cancel` (extension): stops one of this connection's AI requests.
pub fn cancel(
    app: &App,
    connection: &Arc<Connection>,
    request: AiCancel,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    if !app.ai_control.cancel(&request.request_id, &connection.id) {
        return Err(HandlerError::NotFound(format!(
            "no running AI request `{}` on this connection",
            request.request_id
        )));
    }
    app.send(
        connection,
        &ServerMessage::AiCancelled {
            request_id: &request.request_id,
        },
        reference,
    );
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

/// How long the frame that ends a request (`ai_response`, or its error) may
/// wait for room in a slow client's outbox before the client is dropped as a
/// slow consumer. Intermediate chunks never wait: they are merged instead.
const FINAL_FRAME_PATIENCE: Duration = Duration::from_secs(10);

struct Job {
    app: Arc<App>,
    /// The requester's connection; `None` for an auto-reply.
    connection: Option<Arc<Connection>>,
    provider: Arc<dyn Provider>,
    /// Holds the requester's in-flight slot until the job ends.
    _admission: Admission,
    request_id: String,
    reference: Option<String>,
    requester: User,
    prompt: String,
    room: Option<String>,
    context: bool,
}

impl Job {
    async fn run(self) {
        let stats = &self.app.ai_control.stats;
        let assistant = assistant(&self.app);
        self.typing(&assistant, true);
        let cancelled = self.connection.as_ref().map(|connection| {
            self.app
                .ai_control
                .register(&self.request_id, connection.id.clone())
        });
        let requester_gone = async {
            match (&self.connection, &cancelled) {
                (Some(connection), Some(cancel)) => tokio::select! {
                    () = connection.closed() => {}
                    () = cancel.notified() => {}
                },
                _ => std::future::pending().await,
            }
        };
        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = async {
                // At most `--ai-max-concurrent` provider calls; the rest wait in order.
                let _slot = self.app.ai_control.slot().await;
                self.answer(started).await
            } => Some(outcome),
            // The requester left or cancelled: dropping `answer` drops the
            // provider call.
            () = requester_gone => None,
        };
        self.app.ai_control.unregister(&self.request_id);
        self.typing(&assistant, false);
        match outcome {
            Some(Ok(completion)) => {
                stats.answered.fetch_add(1, Ordering::Relaxed);
                stats.total.observe(started.elapsed());
                if let Some(tokens) = completion.prompt_tokens {
                    stats.prompt_tokens.fetch_add(tokens, Ordering::Relaxed);
                }
                if let Some(tokens) = completion.completion_tokens {
                    stats.completion_tokens.fetch_add(tokens, Ordering::Relaxed);
                }
                self.finish(&assistant, completion.content, completion.model)
                    .await;
            }
            Some(Err(err)) => {
                let code = match err {
                    AiError::Timeout => {
                        stats.timeouts.fetch_add(1, Ordering::Relaxed);
                        ErrorCode::AiTimeout
                    }
                    AiError::Unavailable(_) => {
                        stats.unavailable.fetch_add(1, Ordering::Relaxed);
                        ErrorCode::AiUnavailable
                    }
                };
                tracing::warn!(request = %self.request_id, error = %err, "AI request failed");
                let message = match code {
                    ErrorCode::AiTimeout => "the assistant took too long to answer",
                    _ => "the assistant is unavailable right now",
                };
                if let Some(connection) = &self.connection {
                    // The request's last word: waits for room like `ai_response`.
                    send_error_patiently(
                        &self.app,
                        connection,
                        code,
                        message,
                        self.reference.as_deref(),
                        FINAL_FRAME_PATIENCE,
                    )
                    .await;
                }
            }
            None => {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Streams the model's answer to the requester; returns it whole.
    async fn answer(&self, started: Instant) -> Result<Completion, AiError> {
        let conversation = self.conversation().await;
        let (deltas, mut received) = mpsc::unbounded_channel::<String>();
        let completion = self.provider.complete(conversation, deltas);
        tokio::pin!(completion);
        let mut first = true;
        // Deltas not yet sent: a client whose outbox is filling up gets them
        // merged into fewer, larger chunks instead of being disconnected.
        let mut unsent = String::new();
        loop {
            tokio::select! {
                biased;
                Some(delta) = received.recv() => {
                    if first {
                        first = false;
                        self.app.ai_control.stats.first_token.observe(started.elapsed());
                    }
                    unsent.push_str(&delta);
                    self.chunk(&mut unsent);
                }
                result = &mut completion => {
                    // Whatever was streamed before the end goes out first,
                    // and all of it: the client's concatenated chunks must
                    // equal the answer.
                    while let Ok(delta) = received.try_recv() {
                        unsent.push_str(&delta);
                    }
                    self.last_chunk(&unsent).await;
                    return result;
                }
            }
        }
    }

    /// Sends the unsent deltas as one chunk if the requester's outbox has
    /// room to spare; otherwise keeps them for the next chunk.
    fn chunk(&self, unsent: &mut String) {
        let Some(connection) = &self.connection else {
            unsent.clear();
            return;
        };
        // Over three quarters full: keep merging.
        let outbox = &connection.outbox;
        if unsent.is_empty() || outbox.len() * 4 > outbox.capacity() * 3 {
            return;
        }
        self.app.send(
            connection,
            &self.chunk_of(unsent),
            self.reference.as_deref(),
        );
        unsent.clear();
    }

    /// Sends what is left of the stream, waiting for room if need be.
    async fn last_chunk(&self, unsent: &str) {
        let Some(connection) = &self.connection else {
            return;
        };
        if unsent.is_empty() {
            return;
        }
        self.app
            .send_patiently(
                connection,
                &self.chunk_of(unsent),
                self.reference.as_deref(),
                FINAL_FRAME_PATIENCE,
            )
            .await;
    }

    fn chunk_of<'a>(&'a self, delta: &'a str) -> ServerMessage<'a> {
        ServerMessage::AiResponseChunk {
            request_id: &self.request_id,
            delta,
        }
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
                // Newest first until the budget is spent, then back in order.
                let mut budget = self.app.config.ai_context_chars;
                let mut kept = Vec::new();
                for message in page.messages.into_iter().rev() {
                    let size =
                        message.user.username.chars().count() + message.content.chars().count();
                    if size > budget {
                        break;
                    }
                    budget -= size;
                    kept.push(message);
                }
                for message in kept.into_iter().rev() {
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
        let Some(connection) = &self.connection else {
            return;
        };
        self.app
            .send_patiently(
                connection,
                &ServerMessage::AiResponse {
                    request_id: &self.request_id,
                    content: &content,
                    model: &model,
                    message: stored.as_ref(),
                },
                self.reference.as_deref(),
                FINAL_FRAME_PATIENCE,
            )
            .await;
    }

    async fn store(&self, room: &str, assistant: &User, content: &str) -> Option<Message> {
        let stored = self
            .app
            .store_and_publish(NewMessage {
                room: room.into(),
                user: assistant.clone(),
                content: content.to_owned(),
                created_at: Timestamp::now(),
                client_msg_id: None,
                reply_to: None,
                attachment: None,
            })
            .await;
        match stored {
            Ok(appended) => Some(appended.message),
            Err(err) => {
                tracing::error!(error = %err, "cannot store the assistant's answer");
                None
            }
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
