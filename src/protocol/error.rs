//! Error codes (section 5 of the protocol) and WebSocket close codes (section 1).

use serde::Serialize;

/// The `error_code` of an `error` frame. An error never closes the connection
/// by itself; the few cases that do close (five failed authentications) say so
/// with a [`CloseReason`].
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    strum::EnumCount,
    strum::EnumIter,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    UnknownType,
    ValidationError,
    UnsupportedFrame,
    NotAuthenticated,
    AuthFailed,
    Forbidden,
    NotFound,
    UsernameTaken,
    RateLimited,
    FileTooLarge,
    FileTypeNotAllowed,
    AiUnavailable,
    AiTimeout,
    InternalError,
    /// Extension: the connection's token expired; send `authentication`
    /// with a fresh one before the grace period ends.
    TokenExpired,
    /// Extension: storage did not answer in time (`--store-timeout-ms`);
    /// the frame was not carried out, retry after `retry_after_ms`.
    Unavailable,
    /// Extension (HTTP API): what is to be created exists already (409).
    Conflict,
    /// Extension (HTTP API): no such method on this path (405).
    MethodNotAllowed,
}

impl ErrorCode {
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
}

/// Why the server closes a WebSocket: the close code and a short reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const NORMAL: CloseReason = CloseReason {
        code: 1000,
        reason: "normal closure",
    };
    pub const SHUTTING_DOWN: CloseReason = CloseReason {
        code: 1001,
        reason: "server shutting down",
    };
    pub const POLICY: CloseReason = CloseReason {
        code: 1008,
        reason: "too many failed authentications",
    };
    pub const ORIGIN_REFUSED: CloseReason = CloseReason {
        code: 1008,
        reason: "origin not allowed",
    };
    pub const TOKEN_EXPIRED: CloseReason = CloseReason {
        code: 1008,
        reason: "token expired",
    };
    pub const FRAME_TOO_BIG: CloseReason = CloseReason {
        code: 1009,
        reason: "frame too big",
    };
    pub const INTERNAL: CloseReason = CloseReason {
        code: 1011,
        reason: "internal error",
    };
    pub const IDLE: CloseReason = CloseReason {
        code: 4001,
        reason: "idle timeout",
    };
    pub const SLOW_CONSUMER: CloseReason = CloseReason {
        code: 4002,
        reason: "slow consumer",
    };
    pub const KICKED: CloseReason = CloseReason {
        code: 4003,
        reason: "kicked by an administrator",
    };
    pub const CONNECTION_LIMIT: CloseReason = CloseReason {
        code: 4004,
        reason: "connection limit reached",
    };

    /// Extension: the client broke the WebSocket framing rules (RFC 6455).
    pub const PROTOCOL_ERROR: CloseReason = CloseReason {
        code: 1002,
        reason: "WebSocket protocol error",
    };
    /// Extension: a text frame that is not UTF-8 (RFC 6455).
    pub const INVALID_PAYLOAD: CloseReason = CloseReason {
        code: 1007,
        reason: "text frame is not valid UTF-8",
    };

    /// Every reason the server closes with.
    pub const ALL: [CloseReason; 13] = [
        CloseReason::NORMAL,
        CloseReason::PROTOCOL_ERROR,
        CloseReason::INVALID_PAYLOAD,
        CloseReason::SHUTTING_DOWN,
        CloseReason::POLICY,
        CloseReason::ORIGIN_REFUSED,
        CloseReason::TOKEN_EXPIRED,
        CloseReason::FRAME_TOO_BIG,
        CloseReason::INTERNAL,
        CloseReason::IDLE,
        CloseReason::SLOW_CONSUMER,
        CloseReason::KICKED,
        CloseReason::CONNECTION_LIMIT,
    ];

    /// This reason's position in [`CloseReason::ALL`] (0 if it is not there).
    pub fn index(self) -> u32 {
        CloseReason::ALL
            .iter()
            .position(|reason| *reason == self)
            .map_or(0, |at| at as u32)
    }

    /// The first reason the server uses with this code; other codes close
    /// as "normal".
    pub fn from_code(code: u16) -> CloseReason {
        CloseReason::ALL
            .into_iter()
            .find(|reason| reason.code == code)
            .unwrap_or(CloseReason::NORMAL)
    }

    /// The reason at `index` of [`CloseReason::ALL`]; "normal" past its end.
    pub fn at(index: u32) -> CloseReason {
        CloseReason::ALL
            .get(index as usize)
            .copied()
            .unwrap_or(CloseReason::NORMAL)
    }
}
