//! Client → server messages: the envelope, the message types, and their
//! validation rules.
//!
//! A frame is taken apart in two steps so that the checks run in the order the
//! protocol fixes (`invalid_json` → `unknown_type` → `not_authenticated` →
//! `validation_error`): [`Envelope::parse`] finds the type and `ref`, the caller
//! decides whether the connection may send that type, and
//! [`Envelope::into_message`] turns the body into a typed, validated
//! [`ClientMessage`].

use super::ErrorCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Longest `ref` a client may attach to a frame.
const MAX_REF_CHARS: usize = 64;
/// Longest `client_msg_id`.
const MAX_CLIENT_MSG_ID_CHARS: usize = 64;
/// Longest guest display name.
const MAX_USERNAME_CHARS: usize = 32;
/// Longest user id in a `presence_subscribe` list.
const MAX_USER_ID_CHARS: usize = 256;
/// Largest `limit` of a `history` page.
const MAX_HISTORY_LIMIT: i64 = 200;
/// Largest `limit` of a `presence` page.
const MAX_PRESENCE_LIMIT: i64 = 1000;

/// An error to answer a frame with: the code, a human-readable message, and
/// the frame's `ref` where one could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    pub reference: Option<String>,
    /// For `rate_limited`: how long to wait before trying again.
    pub retry_after_ms: Option<u64>,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            reference: None,
            retry_after_ms: None,
        }
    }

    fn invalid(field: &str, rule: &str) -> Self {
        Rejection::new(ErrorCode::ValidationError, format!("`{field}` {rule}"))
    }

    pub fn with_reference(mut self, reference: Option<String>) -> Self {
        self.reference = reference;
        self
    }

    pub fn with_retry_after(mut self, retry_after_ms: Option<u64>) -> Self {
        self.retry_after_ms = retry_after_ms;
        self
    }
}

impl MessageType {
    pub fn parse(name: &str) -> Option<MessageType> {
        MessageType::all().find(|t| t.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Every value, in declaration order (which [`Self::index`] follows).
    pub fn all() -> impl Iterator<Item = Self> {
        <Self as strum::IntoEnumIterator>::iter()
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether an unauthenticated, unnamed connection may send this type.
    /// `user_join` is open only where guest chat is enabled.
    pub fn allowed_before_login(self, guest_chat: bool) -> bool {
        match self {
            MessageType::Ping | MessageType::Authentication => true,
            MessageType::UserJoin => guest_chat,
            _ => false,
        }
    }
}

/// A frame whose type is known but whose body is not yet validated.
#[derive(Debug)]
pub struct Envelope {
    pub kind: MessageType,
    /// The frame's `ref`, when it is a valid one; echoed on the reply.
    pub reference: Option<String>,
    /// Set when `ref` was present but not a string of at most 64 characters;
    /// reported as `validation_error` after the authentication check.
    bad_reference: bool,
    body: Map<String, Value>,
}

/// Limits that depend on configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_chars: usize,
}

impl Envelope {
    /// Reads the type and `ref` of a text frame.
    pub fn parse(text: &str) -> Result<Envelope, Rejection> {
        let value: Value = serde_json::from_str(text).map_err(|err| {
            Rejection::new(
                ErrorCode::InvalidJson,
                format!("frame is not valid JSON: {err}"),
            )
        })?;
        let Value::Object(mut body) = value else {
            return Err(Rejection::new(
                ErrorCode::InvalidJson,
                "frame must be a JSON object",
            ));
        };
        let (reference, bad_reference) = match body.remove("ref") {
            None | Some(Value::Null) => (None, false),
            Some(Value::String(r)) if r.chars().count() <= MAX_REF_CHARS => (Some(r), false),
            Some(_) => (None, true),
        };
        let kind = match body.get("type") {
            Some(Value::String(name)) => MessageType::parse(name).ok_or_else(|| {
                Rejection::new(
                    ErrorCode::UnknownType,
                    format!("unknown message type `{}`", truncate(name, 64)),
                )
            }),
            Some(_) => Err(Rejection::new(
                ErrorCode::UnknownType,
                "`type` must be a string",
            )),
            None => Err(Rejection::new(ErrorCode::UnknownType, "`type` is missing")),
        }
        .map_err(|rejection| rejection.with_reference(reference.clone()))?;
        Ok(Envelope {
            kind,
            reference,
            bad_reference,
            body,
        })
    }

    /// Validates the body against the rules of its type.
    pub fn into_message(self, limits: Limits) -> Result<ClientMessage, Rejection> {
        let reference = self.reference.clone();
        self.decode(limits)
            .map_err(|rejection| rejection.with_reference(reference))
    }

    fn decode(self, limits: Limits) -> Result<ClientMessage, Rejection> {
        if self.bad_reference {
            return Err(Rejection::invalid(
                "ref",
                "must be a string of at most 64 characters",
            ));
        }
        let body = Value::Object(self.body);
        let message = match self.kind {
            MessageType::Authentication => {
                ClientMessage::Authentication(decode::<Authentication>(body)?.validated()?)
            }
            MessageType::ChatMessage => {
                ClientMessage::ChatMessage(decode::<ChatMessage>(body)?.validated(limits)?)
            }
            MessageType::UserTyping => {
                ClientMessage::UserTyping(decode::<UserTyping>(body)?.validated()?)
            }
            MessageType::UserJoin => {
                ClientMessage::UserJoin(decode::<UserJoin>(body)?.validated()?)
            }
            MessageType::UserLeave => ClientMessage::UserLeave,
            MessageType::PresenceSubscribe => {
                ClientMessage::PresenceSubscribe(decode::<PresenceSubscribe>(body)?.validated()?)
            }
            MessageType::PresenceUnsubscribe => ClientMessage::PresenceUnsubscribe,
            MessageType::RoomJoin => {
                ClientMessage::RoomJoin(decode::<RoomJoin>(body)?.validated()?)
            }
            MessageType::RoomLeave => {
                ClientMessage::RoomLeave(decode::<RoomLeave>(body)?.validated()?)
            }
            MessageType::History => ClientMessage::History(decode::<History>(body)?.validated()?),
            MessageType::Presence => {
                ClientMessage::Presence(decode::<Presence>(body)?.validated()?)
            }
            MessageType::AiRequest => {
                ClientMessage::AiRequest(decode::<AiRequest>(body)?.validated(limits)?)
            }
            MessageType::FileUploadRequest => {
                ClientMessage::FileUploadRequest(decode::<FileUploadRequest>(body)?.validated()?)
            }
            MessageType::ProjectUpdate => {
                ClientMessage::ProjectUpdate(decode::<ProjectUpdate>(body)?.validated()?)
            }
            MessageType::TicketUpdate => {
                ClientMessage::TicketUpdate(decode::<TicketUpdate>(body)?.validated()?)
            }
            MessageType::Ping => ClientMessage::Ping,
            MessageType::AiCancel => ClientMessage::AiCancel(decode::<AiCancel>(body)?),
        };
        Ok(message)
    }
}

/// Deserializes a body, naming the offending field in the error.
fn decode<T: DeserializeOwned>(body: Value) -> Result<T, Rejection> {
    serde_path_to_error::deserialize(body).map_err(|err| {
        let path = err.path().to_string();
        let detail = err.inner().to_string();
        let message = if path == "." {
            detail
        } else {
            format!("`{path}`: {detail}")
        };
        Rejection::new(ErrorCode::ValidationError, message)
    })
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

fn char_len(text: &str) -> usize {
    text.chars().count()
}

/// Checks a room name against `^[A-Za-z0-9_.:-]{1,64}$`.
pub fn validate_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Validates an optional `room` field: absent means the global room.
fn check_optional_room(room: &Option<String>) -> Result<(), Rejection> {
    match room {
        Some(name) if !validate_room_name(name) => Err(Rejection::invalid(
            "room",
            "must match ^[A-Za-z0-9_.:-]{1,64}$",
        )),
        _ => Ok(()),
    }
}

/// Validates a required `room` that names a joinable room (not `global`).
fn check_joinable_room(room: &str) -> Result<(), Rejection> {
    if !validate_room_name(room) {
        return Err(Rejection::invalid(
            "room",
            "must match ^[A-Za-z0-9_.:-]{1,64}$",
        ));
    }
    if room == super::GLOBAL_ROOM {
        return Err(Rejection::invalid(
            "room",
            "cannot be `global`: the global room is not joined",
        ));
    }
    Ok(())
}

fn check_id(field: &str, id: Option<i64>) -> Result<(), Rejection> {
    match id {
        Some(id) if id < 0 => Err(Rejection::invalid(field, "must be a non-negative integer")),
        _ => Ok(()),
    }
}

/// A validated client message. Its variants' names are the protocol's
/// `type`s (section 4); [`MessageType`], every `type` a client may send, is
/// derived from them.
#[derive(Debug, Clone, PartialEq, strum::EnumDiscriminants)]
#[strum_discriminants(
    name(MessageType),
    derive(Hash, strum::EnumCount, strum::EnumIter, strum::IntoStaticStr),
    strum(serialize_all = "snake_case")
)]
pub enum ClientMessage {
    Authentication(Authentication),
    ChatMessage(ChatMessage),
    UserTyping(UserTyping),
    UserJoin(UserJoin),
    UserLeave,
    PresenceSubscribe(PresenceSubscribe),
    PresenceUnsubscribe,
    RoomJoin(RoomJoin),
    RoomLeave(RoomLeave),
    History(History),
    Presence(Presence),
    AiRequest(AiRequest),
    FileUploadRequest(FileUploadRequest),
    ProjectUpdate(ProjectUpdate),
    TicketUpdate(TicketUpdate),
    Ping,
    /// Extension: stop an AI request of this connection.
    AiCancel(AiCancel),
}

/// `ai_cancel` (extension): stop the AI request with this id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AiCancel {
    pub request_id: String,
}

/// `authentication`: a token, or a username and password.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Authentication {
    pub token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Authentication {
    fn validated(self) -> Result<Self, Rejection> {
        match (&self.token, &self.username, &self.password) {
            (Some(token), _, _) if token.is_empty() => {
                Err(Rejection::invalid("token", "must not be empty"))
            }
            (Some(_), _, _) => Ok(self),
            (None, Some(_), Some(_)) => Ok(self),
            (None, Some(_), None) => Err(Rejection::invalid("password", "is required")),
            (None, None, _) => Err(Rejection::invalid(
                "token",
                "is required (or `username` and `password`)",
            )),
        }
    }
}

/// `chat_message`: text for a room, or for everyone when `room` is absent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatMessage {
    pub content: String,
    pub room: Option<String>,
    pub client_msg_id: Option<String>,
    pub reply_to: Option<i64>,
}

impl ChatMessage {
    fn validated(self, limits: Limits) -> Result<Self, Rejection> {
        let chars = char_len(&self.content);
        if chars == 0 || chars > limits.max_message_chars {
            return Err(Rejection::invalid(
                "content",
                &format!("must be 1..{} characters", limits.max_message_chars),
            ));
        }
        check_optional_room(&self.room)?;
        if let Some(id) = &self.client_msg_id
            && (id.is_empty() || char_len(id) > MAX_CLIENT_MSG_ID_CHARS)
        {
            return Err(Rejection::invalid(
                "client_msg_id",
                "must be 1..64 characters",
            ));
        }
        check_id("reply_to", self.reply_to)?;
        Ok(self)
    }
}

fn default_true() -> bool {
    true
}

/// `user_typing`: a typing indicator for a room (or the global room).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserTyping {
    pub room: Option<String>,
    #[serde(default = "default_true")]
    pub is_typing: bool,
}

impl UserTyping {
    fn validated(self) -> Result<Self, Rejection> {
        check_optional_room(&self.room)?;
        Ok(self)
    }
}

/// `user_join`: a guest names itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserJoin {
    pub username: String,
}

impl UserJoin {
    fn validated(self) -> Result<Self, Rejection> {
        let chars = char_len(&self.username);
        let printable = self.username.chars().all(|c| !c.is_control());
        let trimmed = self.username.trim() == self.username;
        if chars == 0 || chars > MAX_USERNAME_CHARS || !printable || !trimmed {
            return Err(Rejection::invalid(
                "username",
                "must be 1..32 printable characters without leading or trailing spaces",
            ));
        }
        Ok(self)
    }
}

/// `presence_subscribe`: watch every user (no `user_ids`) or those listed
/// come online and go offline.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PresenceSubscribe {
    pub user_ids: Option<Vec<String>>,
}

impl PresenceSubscribe {
    /// Most users one subscription may list.
    pub const MAX_USER_IDS: usize = 1000;

    fn validated(self) -> Result<Self, Rejection> {
        if let Some(ids) = &self.user_ids {
            if ids.is_empty() || ids.len() > Self::MAX_USER_IDS {
                return Err(Rejection::invalid(
                    "user_ids",
                    "must list 1..1000 user ids (leave it out to watch every user)",
                ));
            }
            if ids
                .iter()
                .any(|id| id.is_empty() || char_len(id) > MAX_USER_ID_CHARS)
            {
                return Err(Rejection::invalid(
                    "user_ids",
                    "must hold user ids of 1..256 characters",
                ));
            }
        }
        Ok(self)
    }
}

/// `room_join`: join a room, optionally recovering what was missed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoomJoin {
    pub room: String,
    pub since_id: Option<i64>,
}

impl RoomJoin {
    fn validated(self) -> Result<Self, Rejection> {
        check_joinable_room(&self.room)?;
        check_id("since_id", self.since_id)?;
        Ok(self)
    }
}

/// `room_leave`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoomLeave {
    pub room: String,
}

impl RoomLeave {
    fn validated(self) -> Result<Self, Rejection> {
        check_joinable_room(&self.room)?;
        Ok(self)
    }
}

/// `history`: one page of a room's stored messages.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct History {
    pub room: String,
    pub before_id: Option<i64>,
    pub after_id: Option<i64>,
    pub limit: Option<i64>,
}

impl History {
    pub const DEFAULT_LIMIT: i64 = 50;

    fn validated(self) -> Result<Self, Rejection> {
        if !validate_room_name(&self.room) {
            return Err(Rejection::invalid(
                "room",
                "must match ^[A-Za-z0-9_.:-]{1,64}$",
            ));
        }
        check_id("before_id", self.before_id)?;
        check_id("after_id", self.after_id)?;
        if self.before_id.is_some() && self.after_id.is_some() {
            return Err(Rejection::invalid(
                "after_id",
                "cannot be combined with `before_id`",
            ));
        }
        if let Some(limit) = self.limit
            && !(1..=MAX_HISTORY_LIMIT).contains(&limit)
        {
            return Err(Rejection::invalid("limit", "must be 1..200"));
        }
        Ok(self)
    }
}

/// `presence`: a page of the distinct users online in a room.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Presence {
    pub room: String,
    pub offset: Option<i64>,
    pub limit: Option<i64>,
}

impl Presence {
    pub const DEFAULT_LIMIT: i64 = 100;

    fn validated(self) -> Result<Self, Rejection> {
        check_joinable_room(&self.room)?;
        if let Some(offset) = self.offset
            && offset < 0
        {
            return Err(Rejection::invalid(
                "offset",
                "must be a non-negative integer",
            ));
        }
        if let Some(limit) = self.limit
            && !(1..=MAX_PRESENCE_LIMIT).contains(&limit)
        {
            return Err(Rejection::invalid("limit", "must be 1..1000"));
        }
        Ok(self)
    }
}

/// `ai_request`: ask the assistant, optionally in a room.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AiRequest {
    pub prompt: String,
    pub room: Option<String>,
    #[serde(default = "default_true")]
    pub context: bool,
}

impl AiRequest {
    fn validated(self, limits: Limits) -> Result<Self, Rejection> {
        let chars = char_len(&self.prompt);
        if chars == 0 || chars > limits.max_message_chars {
            return Err(Rejection::invalid(
                "prompt",
                &format!("must be 1..{} characters", limits.max_message_chars),
            ));
        }
        check_optional_room(&self.room)?;
        Ok(self)
    }
}

/// `file_upload_request`: ask for permission to upload a file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileUploadRequest {
    pub filename: String,
    pub size: u64,
    pub content_type: String,
    pub room: Option<String>,
}

impl FileUploadRequest {
    fn validated(self) -> Result<Self, Rejection> {
        if self.filename.is_empty() || char_len(&self.filename) > 255 {
            return Err(Rejection::invalid("filename", "must be 1..255 characters"));
        }
        if self.size == 0 {
            return Err(Rejection::invalid("size", "must be at least 1"));
        }
        if self.content_type.is_empty() || self.content_type.len() > 255 {
            return Err(Rejection::invalid(
                "content_type",
                "must be 1..255 characters",
            ));
        }
        check_optional_room(&self.room)?;
        Ok(self)
    }
}

/// `project_update`: an event about a project, for the room `project:<id>`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProjectUpdate {
    pub project_id: String,
    pub changes: Map<String, Value>,
}

impl ProjectUpdate {
    pub fn validated(self) -> Result<Self, Rejection> {
        if !validate_room_name(&self.project_id) {
            return Err(Rejection::invalid(
                "project_id",
                "must match ^[A-Za-z0-9_.:-]{1,64}$",
            ));
        }
        Ok(self)
    }
}

/// `ticket_update`: an event about a ticket of a project.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TicketUpdate {
    pub ticket_id: String,
    pub project_id: String,
    pub changes: Map<String, Value>,
}

impl TicketUpdate {
    pub fn validated(self) -> Result<Self, Rejection> {
        if !validate_room_name(&self.ticket_id) {
            return Err(Rejection::invalid(
                "ticket_id",
                "must match ^[A-Za-z0-9_.:-]{1,64}$",
            ));
        }
        if !validate_room_name(&self.project_id) {
            return Err(Rejection::invalid(
                "project_id",
                "must match ^[A-Za-z0-9_.:-]{1,64}$",
            ));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message_chars: 10,
    };

    fn parse(text: &str) -> Result<ClientMessage, Rejection> {
        Envelope::parse(text)?.into_message(LIMITS)
    }

    fn code(text: &str) -> ErrorCode {
        parse(text).expect_err("frame should be rejected").code
    }

    #[test]
    fn frames_that_are_not_objects_are_invalid_json() {
        assert_eq!(code("nope"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidJson);
        assert_eq!(code("\"ping\""), ErrorCode::InvalidJson);
        assert_eq!(
            code(r#"{"type":"ping","x":"\ud800"}"#),
            ErrorCode::InvalidJson
        );
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(code(&deep), ErrorCode::InvalidJson);
    }

    #[test]
    fn type_must_be_known() {
        assert_eq!(code("{}"), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"shout"}"#), ErrorCode::UnknownType);
    }

    #[test]
    fn ref_is_kept_on_rejections() {
        let rejection = parse(r#"{"type":"chat_message","ref":"r1"}"#).expect_err("no content");
        assert_eq!(rejection.code, ErrorCode::ValidationError);
        assert_eq!(rejection.reference.as_deref(), Some("r1"));
        assert!(
            rejection.message.contains("content"),
            "{}",
            rejection.message
        );
    }

    #[test]
    fn field_errors_name_the_field() {
        let rejection = parse(r#"{"type":"chat_message","content":5}"#).expect_err("bad type");
        assert!(
            rejection.message.contains("content"),
            "{}",
            rejection.message
        );
        let rejection = parse(r#"{"type":"user_typing","is_typing":"yes"}"#).expect_err("bad");
        assert!(
            rejection.message.contains("is_typing"),
            "{}",
            rejection.message
        );
        let rejection = parse(r#"{"type":"chat_message","content":"x","reply_to":1e40}"#)
            .expect_err("huge number");
        assert!(
            rejection.message.contains("reply_to"),
            "{}",
            rejection.message
        );
    }

    #[test]
    fn content_length_counts_code_points() {
        assert!(parse(r#"{"type":"chat_message","content":"ééééééééé🎉"}"#).is_ok());
        assert_eq!(
            code(r#"{"type":"chat_message","content":"ééééééééééé"}"#),
            ErrorCode::ValidationError
        );
        assert_eq!(
            code(r#"{"type":"chat_message","content":""}"#),
            ErrorCode::ValidationError
        );
    }

    #[test]
    fn room_names_follow_the_pattern() {
        assert!(validate_room_name("team-1:dev.ops_x"));
        assert!(!validate_room_name(""));
        assert!(!validate_room_name("has space"));
        assert!(!validate_room_name("../etc"));
        assert!(!validate_room_name(&"a".repeat(65)));
        assert_eq!(
            code(r#"{"type":"room_join","room":"global"}"#),
            ErrorCode::ValidationError
        );
    }

    #[test]
    fn history_rejects_both_directions() {
        assert_eq!(
            code(r#"{"type":"history","room":"a","before_id":5,"after_id":1}"#),
            ErrorCode::ValidationError
        );
        assert_eq!(
            code(r#"{"type":"history","room":"a","limit":201}"#),
            ErrorCode::ValidationError
        );
        assert_eq!(
            code(r#"{"type":"history","room":"a","before_id":-1}"#),
            ErrorCode::ValidationError
        );
    }
}
