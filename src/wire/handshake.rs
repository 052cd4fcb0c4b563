//! The opening handshake of RFC 6455, read straight off a TCP socket: the
//! request head is parsed once, and only what the upgrade needs is kept.

/// Longest request head accepted; a longer one is answered with 431.
pub const MAX_HEAD_BYTES: usize = 8192;

/// Headers parsed at most; more is a malformed request.
const MAX_HEADERS: usize = 64;

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// The head is not complete yet.
    Incomplete,
    /// An ordinary HTTP request (or one this module cannot judge): for the
    /// HTTP server.
    Http,
    /// A WebSocket upgrade of `GET /ws`; the head is `head_len` bytes long.
    WebSocket(Upgrade, usize),
    /// An upgrade request for `/ws` that RFC 6455 says to refuse.
    Invalid(Refusal),
}

/// Why an upgrade request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Sec-WebSocket-Version` is missing or not 13: 426 Upgrade Required,
    /// with `Sec-WebSocket-Version: 13` (RFC 6455 §4.4).
    Version,
    /// Anything else wrong with it: 400.
    Malformed(&'static str),
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Version => "Sec-WebSocket-Version must be 13",
            Refusal::Malformed(reason) => reason,
        }
    }
}

/// Whether `key` is 16 bytes in base64, as RFC 6455 §4.1 wants a
/// `Sec-WebSocket-Key`.
fn valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes.ends_with(b"==")
        && bytes[..22]
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'+' || *byte == b'/')
}

/// The parts of an upgrade request that roomcast looks at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upgrade {
    pub key: String,
    pub origin: Option<String>,
    pub user_agent: Option<String>,
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
    /// The `token` query parameter, decoded.
    pub query_token: Option<String>,
}

/// Looks at the bytes read so far from a new connection.
pub fn classify(buf: &[u8]) -> Opening {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Opening::Incomplete,
        // Let the HTTP server answer malformed requests its own way.
        Err(_) => return Opening::Http,
    };
    let (path, query) = match request.path.unwrap_or("").split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.path.unwrap_or(""), None),
    };
    if request.method != Some("GET") || path != "/ws" {
        return Opening::Http;
    }
    let headers = request.headers;
    let header = |name: &str| {
        headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .and_then(|header| std::str::from_utf8(header.value).ok())
    };
    match Upgrade::from_headers(header, query) {
        Ok(Some(upgrade)) => Opening::WebSocket(upgrade, head_len),
        Ok(None) => Opening::Http,
        Err(reason) => Opening::Invalid(reason),
    }
}

impl Upgrade {
    /// Reads an upgrade from a request's headers (looked up by lower-case
    /// name) and query: `Ok(None)` when the request does not ask for a
    /// WebSocket, `Err` when it asks in a way RFC 6455 refuses.
    pub fn from_headers<'h>(
        header: impl Fn(&str) -> Option<&'h str>,
        query: Option<&str>,
    ) -> Result<Option<Upgrade>, Refusal> {
        let header = |name: &str| header(name).map(str::trim);
        let has_token = |name: &str, token: &str| header(name).is_some_and(|v| lists(v, token));
        if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
            return Ok(None);
        }
        if header("sec-websocket-version") != Some("13") {
            return Err(Refusal::Version);
        }
        let Some(key) = header("sec-websocket-key").filter(|key| valid_key(key)) else {
            return Err(Refusal::Malformed(
                "Sec-WebSocket-Key must be 16 bytes in base64",
            ));
        };
        let owned = |name: &str| header(name).map(str::to_owned);
        Ok(Some(Upgrade {
            key: key.to_owned(),
            origin: owned("origin"),
            user_agent: owned("user-agent"),
            authorization: owned("authorization"),
            query_token: query.and_then(|query| query_parameter(query, "token")),
        }))
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitively).
pub fn lists(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// The `101 Switching Protocols` answer to a client's key.
pub fn accept_response(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes()
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// The decoded value of `name` in a query string
/// (`application/x-www-form-urlencoded`: `%XX` escapes and `+` for a space).
fn query_parameter(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /ws?room=x&token=a.b%2Dc HTTP/1.1\r\nHost: h\r\n\
        Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Origin: https://chat.example\r\nUser-Agent: test\r\n\r\n";

    #[test]
    fn recognises_an_upgrade() {
        let Opening::WebSocket(upgrade, len) = classify(UPGRADE.as_bytes()) else {
            panic!("not an upgrade");
        };
        assert_eq!(len, UPGRADE.len());
        assert_eq!(upgrade.query_token.as_deref(), Some("a.b-c"));
        assert_eq!(upgrade.origin.as_deref(), Some("https://chat.example"));
        assert_eq!(upgrade.user_agent.as_deref(), Some("test"));
        assert_eq!(classify(&UPGRADE.as_bytes()[..40]), Opening::Incomplete);
        // The RFC's own example.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn leaves_other_requests_to_http() {
        for request in [
            "GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: h\r\n\r\n",
            "POST /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "\x16\x03\x01 not http at all\r\n\r\n",
        ] {
            assert_eq!(classify(request.as_bytes()), Opening::Http, "{request}");
        }
        let old = UPGRADE.replace("Version: 13", "Version: 8");
        assert_eq!(classify(old.as_bytes()), Opening::Invalid(Refusal::Version));
        let versionless = UPGRADE.replace("Sec-WebSocket-Version: 13\r\n", "");
        assert_eq!(
            classify(versionless.as_bytes()),
            Opening::Invalid(Refusal::Version)
        );
        let keyless = UPGRADE.replace("Sec-WebSocket-Key", "X-Key");
        assert!(matches!(
            classify(keyless.as_bytes()),
            Opening::Invalid(Refusal::Malformed(_))
        ));
        // 24 characters, but not base64.
        let not_base64 = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!!!!!!!!!!!!!!!!!!!!!!");
        assert!(matches!(
            classify(not_base64.as_bytes()),
            Opening::Invalid(Refusal::Malformed(_))
        ));
    }
}
