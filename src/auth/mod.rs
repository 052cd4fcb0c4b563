//! Who is who: verifying the JWTs clients present and minting them
//! ([`Tokens`]), hashing passwords ([`password`]), and accounts stored by the
//! server ([`Accounts`]).
//!
//! Tokens are HS256 JWTs signed with the server's secret, or RS256/ES256 JWTs
//! signed by an existing backend whose public key is configured. Each
//! algorithm is bound to its key and nothing else is accepted (`none`
//! included); `exp` and `sub` are required.

mod accounts;
pub mod password;

pub use accounts::{
    Accounts, Login, LoginError, RegisterError, SKELETON_SQL, account_user, skeleton,
    valid_username,
};

use crate::hub::{Identity, Role};
use crate::protocol::{Timestamp, User, UserKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Prefix of the ids the server gives guests; tokens cannot claim it.
pub const GUEST_ID_PREFIX: &str = "guest:";

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("invalid token: `sub` must be a non-empty user id not starting with `guest:`")]
    BadSubject,
    #[error("invalid token: {0}")]
    BadClaim(&'static str),
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("invalid token: unknown role `{0}`")]
    UnknownRole(String),
    #[error("invalid username or password")]
    BadCredentials,
    #[error("cannot read the JWT public key {path}: {reason}")]
    PublicKey { path: String, reason: String },
}

/// Claims roomcast reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Username; `sub` where absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// `user` (default), `assistant` or `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Not before, seconds since the Unix epoch (checked when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch (checked when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Longest user id a token may carry, in characters.
pub const MAX_SUBJECT_CHARS: usize = 128;
/// Longest name a token may carry, in characters (as a guest's or an
/// account's username).
pub const MAX_NAME_CHARS: usize = 32;
/// How far in the future a token's `nbf` or `iat` may be: clocks differ.
const CLOCK_SKEW_SECS: u64 = 60;

/// Whether `c` shows as itself: not a control character, and not one of
/// the invisible or direction-changing characters a name could hide behind
/// (zero-width spaces and joiners, bidirectional controls, the byte-order
/// mark, the soft hyphen).
pub fn is_visible(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
        )
}

/// A public key that verifies tokens minted by another backend.
#[derive(Clone)]
struct PublicKey {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies tokens (HS256 with the secret, and RS256/ES256 with a public key
/// where one is configured) and mints HS256 tokens.
#[derive(Clone)]
pub struct Tokens {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    public: Option<PublicKey>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { .. }")
    }
}

fn validation_for(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp", "sub"]);
    // An expired token is expired: no grace beyond `exp`.
    validation.leeway = 0;
    validation
}

impl Tokens {
    pub fn new(secret: &str) -> Tokens {
        Tokens {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation: validation_for(Algorithm::HS256),
            public: None,
        }
    }

    /// Also accepts RS256 or ES256 tokens signed with the private half of the
    /// PEM public key in `path` (the algorithm follows from the key type).
    pub fn with_public_key(mut self, path: &std::path::Path) -> Result<Tokens, AuthError> {
        let failure = |reason: String| AuthError::PublicKey {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|err| failure(err.to_string()))?;
        let (algorithm, key) = match DecodingKey::from_rsa_pem(&pem) {
            Ok(key) => (Algorithm::RS256, key),
            Err(_) => match DecodingKey::from_ec_pem(&pem) {
                Ok(key) => (Algorithm::ES256, key),
                Err(err) => return Err(failure(format!("not an RSA or EC public key: {err}"))),
            },
        };
        self.public = Some(PublicKey {
            algorithm,
            key,
            validation: validation_for(algorithm),
        });
        Ok(self)
    }

    /// Checks a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(AuthError::Invalid)?;
        let (key, validation) = match &self.public {
            Some(public) if header.alg == public.algorithm => (&public.key, &public.validation),
            // Anything else must be HS256; `decode` refuses other algorithms.
            _ => (&self.decoding, &self.validation),
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|err| {
                match err.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid(err),
                }
            })?;
        identity_from_claims(data.claims)
    }

    /// Signs a token for `sub` that expires `ttl_secs` from now.
    pub fn mint(&self, sub: &str, name: Option<&str>, role: Option<&str>, ttl_secs: u64) -> String {
        let now = u64::try_from(Timestamp::now().as_millis() / 1000).unwrap_or(0);
        let claims = Claims {
            sub: sub.to_owned(),
            name: name.map(str::to_owned),
            exp: now + ttl_secs,
            role: role.map(str::to_owned),
            nbf: None,
            iat: Some(now),
        };
        // Encoding HS256 claims made of strings and integers cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }
}

fn identity_from_claims(claims: Claims) -> Result<Identity, AuthError> {
    if claims.sub.is_empty() || claims.sub.starts_with(GUEST_ID_PREFIX) {
        return Err(AuthError::BadSubject);
    }
    if claims.sub.chars().count() > MAX_SUBJECT_CHARS
        || !claims
            .sub
            .chars()
            .all(|c| is_visible(c) && !c.is_whitespace())
    {
        return Err(AuthError::BadClaim(
            "`sub` must be at most 128 visible characters without spaces",
        ));
    }
    if let Some(name) = &claims.name
        && (name.chars().count() > MAX_NAME_CHARS
            || name.trim() != name
            || !name.chars().all(is_visible))
    {
        return Err(AuthError::BadClaim(
            "`name` must be at most 32 visible characters without leading or trailing spaces",
        ));
    }
    let now = u64::try_from(Timestamp::now().as_millis() / 1000).unwrap_or(0);
    if claims.nbf.is_some_and(|nbf| nbf > now + CLOCK_SKEW_SECS) {
        return Err(AuthError::NotYetValid);
    }
    if claims.iat.is_some_and(|iat| iat > now + CLOCK_SKEW_SECS) {
        return Err(AuthError::BadClaim("`iat` is in the future"));
    }
    let role = match claims.role.as_deref() {
        None | Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("admin") => Role::Admin,
        Some(other) => return Err(AuthError::UnknownRole(other.to_owned())),
    };
    let kind = match role {
        Role::Assistant => UserKind::Assistant,
        Role::User | Role::Admin => UserKind::User,
    };
    let id: Arc<str> = claims.sub.into();
    // Without a name the id is the name: one string, shared.
    let username = match claims.name.filter(|name| !name.is_empty()) {
        Some(name) => name.into(),
        None => id.clone(),
    };
    Ok(Identity {
        user: User { id, username, kind },
        role,
        expires_at: Some(Timestamp(
            i64::try_from(claims.exp)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        )),
    })
}

/// `bytes` random bytes from the operating system, as hex digits; `None`
/// only if the operating system has no randomness to give.
pub fn random_hex(bytes: usize) -> Option<String> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).ok()?;
    Some(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_is_random_hex() {
        let (a, b) = (random_hex(8), random_hex(8));
        assert!(
            a.as_ref()
                .is_some_and(|a| a.len() == 16 && a.bytes().all(|c| c.is_ascii_hexdigit()))
        );
        assert_ne!(a, b);
    }

    #[test]
    fn round_trip_and_roles() {
        let tokens = Tokens::new("secret-secret");
        let identity = tokens
            .verify(&tokens.mint("u1", Some("ann"), None, 60))
            .expect("valid");
        assert_eq!(&*identity.user.username, "ann");
        assert_eq!(identity.user.kind, UserKind::User);
        let bot = tokens
            .verify(&tokens.mint("bot", None, Some("assistant"), 60))
            .expect("valid");
        assert_eq!(bot.user.kind, UserKind::Assistant);
        assert_eq!(&*bot.user.username, "bot");
    }

    #[test]
    fn refuses_other_keys_none_and_expired() {
        let tokens = Tokens::new("secret-secret");
        let other = Tokens::new("another-secret");
        assert!(tokens.verify(&other.mint("u1", None, None, 60)).is_err());
        // {"alg":"none"} header, valid claims, empty signature.
        let unsigned =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(tokens.verify(unsigned).is_err());
        let header = Header::new(Algorithm::HS256);
        let expired = Claims {
            sub: "u1".into(),
            name: None,
            exp: 1_000,
            role: None,
            nbf: None,
            iat: None,
        };
        let key = EncodingKey::from_secret(b"secret-secret");
        let token = jsonwebtoken::encode(&header, &expired, &key).expect("encode");
        assert!(matches!(tokens.verify(&token), Err(AuthError::Expired)));
        assert!(matches!(
            tokens.verify(&tokens.mint("guest:1", None, None, 60)),
            Err(AuthError::BadSubject)
        ));
    }
}
