//! The AI assistant's model provider, behind the small [`Provider`] trait.
//!
//! [`OpenAiCompatible`] talks to any OpenAI-compatible chat-completions API
//! (OpenAI, Ollama, vLLM, llama.cpp server, LM Studio), streaming by default.
//! The `ai_request` handler builds the conversation and relays the stream;
//! it knows nothing of HTTP.

mod control;
mod openai;

pub use control::{Admission, AiControl, AiStats};
pub use openai::OpenAiCompatible;

use crate::store::BoxFuture;
use tokio::sync::mpsc;

/// One turn of the conversation sent to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    pub content: String,
}

/// A finished answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    pub content: String,
    pub model: String,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// Why the model gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum AiError {
    /// The provider failed or answered something unusable. The text is for
    /// the log; it never contains the API key.
    #[error("AI provider failed: {0}")]
    Unavailable(String),
    #[error("AI provider took too long")]
    Timeout,
}

/// A model that answers a conversation.
///
/// Contract: `complete` sends the answer's text as it is produced, in order,
/// into `deltas` (possibly in one piece), and resolves with the whole answer;
/// the concatenated deltas equal `Completion::content`. Dropping the future
/// cancels the request.
pub trait Provider: Send + Sync + 'static {
    fn complete(
        &self,
        conversation: Vec<Turn>,
        deltas: mpsc::UnboundedSender<String>,
    ) -> BoxFuture<'_, Result<Completion, AiError>>;
}
