//! An OpenAI-compatible chat-completions client: `POST {base}/chat/completions`
//! with `stream: true`, reading server-sent events (`data: {...}` lines,
//! ending with `data: [DONE]`).

use super::{AiError, Completion, Provider, Turn};
use crate::store::BoxFuture;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest SSE line accepted from a provider; a longer one is an error, not
/// unbounded memory.
const MAX_LINE_BYTES: usize = 1 << 20;

/// Client for one OpenAI-compatible endpoint and model.
pub struct OpenAiCompatible {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The API key stays out of every log line.
        f.debug_struct("OpenAiCompatible")
            .field("url", &self.url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl OpenAiCompatible {
    pub fn new(base_url: &str, model: &str, api_key: Option<String>, timeout: Duration) -> Self {
        OpenAiCompatible {
            client: reqwest::Client::new(),
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_owned(),
            api_key,
            timeout,
        }
    }

    async fn stream(
        &self,
        conversation: Vec<Turn>,
        deltas: mpsc::UnboundedSender<String>,
    ) -> Result<Completion, AiError> {
        let messages: Vec<Value> = conversation
            .iter()
            .map(|turn| json!({"role": turn.role, "content": turn.content}))
            .collect();
        let body = json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|err| {
            AiError::Unavailable(format!("cannot reach {}: {}", self.url, err.without_url()))
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(AiError::Unavailable(format!(
                "{} answered {status}",
                self.url
            )));
        }
        let streaming = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        let mut completion = Completion {
            model: self.model.clone(),
            ..Completion::default()
        };
        if !streaming {
            // A server that ignores `stream` answers with one JSON object.
            let bytes = response
                .bytes()
                .await
                .map_err(|err| AiError::Unavailable(err.without_url().to_string()))?;
            let answer: Value = serde_json::from_slice(&bytes)
                .map_err(|err| AiError::Unavailable(format!("malformed answer: {err}")))?;
            let content = answer["choices"][0]["message"]["content"]
                .as_str()
                .ok_or_else(|| AiError::Unavailable("answer without content".into()))?;
            completion.content = content.to_owned();
            read_usage(&answer, &mut completion);
            let _ = deltas.send(completion.content.clone());
            return Ok(completion);
        }
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        let mut done = false;
        while !done {
            let Some(chunk) = body.next().await else {
                return Err(AiError::Unavailable(
                    "the stream ended before [DONE]".into(),
                ));
            };
            let chunk = chunk.map_err(|err| AiError::Unavailable(err.without_url().to_string()))?;
            buffer.extend_from_slice(&chunk);
            // Lines are cut from `start`; the consumed part is dropped once
            // per network chunk, not once per line.
            let mut start = 0;
            while let Some(end) = buffer[start..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&buffer[start..start + end]);
                start += end + 1;
                let Some(data) = line.trim_end().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    break;
                }
                let event: Value = serde_json::from_str(data).map_err(|err| {
                    AiError::Unavailable(format!("malformed stream chunk: {err}"))
                })?;
                if let Some(message) = event["error"]["message"].as_str() {
                    return Err(AiError::Unavailable(format!("provider error: {message}")));
                }
                if let Some(delta) = event["choices"][0]["delta"]["content"].as_str()
                    && !delta.is_empty()
                {
                    completion.content.push_str(delta);
                    // The receiver may be gone (requester left); keep the answer anyway.
                    let _ = deltas.send(delta.to_owned());
                }
                if let Some(model) = event["model"].as_str() {
                    completion.model = model.to_owned();
                }
                read_usage(&event, &mut completion);
            }
            buffer.drain(..start);
            if buffer.len() > MAX_LINE_BYTES {
                return Err(AiError::Unavailable(
                    "the stream sent a line over 1 MiB".into(),
                ));
            }
        }
        Ok(completion)
    }
}

fn read_usage(event: &Value, completion: &mut Completion) {
    if let Some(tokens) = event["usage"]["prompt_tokens"].as_u64() {
        completion.prompt_tokens = Some(tokens);
    }
    if let Some(tokens) = event["usage"]["completion_tokens"].as_u64() {
        completion.completion_tokens = Some(tokens);
    }
}

impl Provider for OpenAiCompatible {
    fn complete(
        &self,
        conversation: Vec<Turn>,
        deltas: mpsc::UnboundedSender<String>,
    ) -> BoxFuture<'_, Result<Completion, AiError>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.stream(conversation, deltas))
                .await
                .map_err(|_| AiError::Timeout)?
        })
    }
}
