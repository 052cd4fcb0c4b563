//! Accounts stored by the server: registration, login, and the limits that
//! keep password guessing slow.

use super::{Tokens, password};
use crate::hub::{Identity, Role};
use crate::limits::KeyedLimiter;
use crate::protocol::{Timestamp, User, UserKind};
use crate::store::{Account, MessageStore, StoreError};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Shortest and longest password accepted at registration.
const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=256;

/// Names no account may take: they would impersonate the server.
const RESERVED_NAMES: [&str; 5] = ["system", "assistant", "roomcast", "admin", "guest"];

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("invalid username or password")]
    BadCredentials,
    #[error("too many failed logins from this address; retry in {} ms", .0.as_millis())]
    RateLimited(Duration),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "`username` must be 2..32 characters: letters, digits, `_`, `.` or `-`, starting with a letter or digit"
    )]
    InvalidUsername,
    #[error("`password` must be 8..256 characters")]
    InvalidPassword,
    #[error("`role` must be user, assistant or admin")]
    InvalidRole,
    #[error("username is taken")]
    Taken,
    #[error("cannot hash the password")]
    Hash,
    #[error("the operating system gave no random bytes")]
    Random,
    #[error("storage failed: {0}")]
    Store(#[source] StoreError),
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Login {
    pub identity: Identity,
    pub token: String,
    pub expires_at: Timestamp,
}

/// Whether `name` may be an account's username.
pub fn valid_username(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    (2..=32).contains(&name.len())
        && first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// What a username looks like, for telling look-alikes apart: lower case,
/// then `0` read as `o`, `1` and `i` as `l`, then `rn` as `m`, `vv` as `w`
/// and `cl` as `d`. Two names with one skeleton are one name. (Usernames
/// are ASCII, so these are the look-alikes there are.)
pub fn skeleton(name: &str) -> String {
    let mapped: String = name
        .to_lowercase()
        .chars()
        .map(|c| match c {
            '0' => 'o',
            '1' | 'i' => 'l',
            other => other,
        })
        .collect();
    mapped
        .replace("rn", "m")
        .replace("vv", "w")
        .replace("cl", "d")
}

/// The SQL for [`skeleton`] of the `username_key` column (already lower
/// case), the same in SQLite and PostgreSQL.
pub const SKELETON_SQL: &str = "replace(replace(replace(replace(replace(replace(\
    username_key, '0', 'o'), '1', 'l'), 'i', 'l'), 'rn', 'm'), 'vv', 'w'), 'cl', 'd')";

/// Registration and login against the store.
pub struct Accounts {
    store: Arc<dyn MessageStore>,
    tokens: Tokens,
    token_ttl: Duration,
    /// Failed logins per client address.
    failures: KeyedLimiter<IpAddr>,
}

impl Accounts {
    /// `failures_per_minute` failed logins are allowed per address, in a
    /// burst or spread out; more wait.
    pub fn new(
        store: Arc<dyn MessageStore>,
        tokens: Tokens,
        token_ttl: Duration,
        failures_per_minute: u32,
    ) -> Accounts {
        Accounts {
            store,
            tokens,
            token_ttl,
            failures: KeyedLimiter::new(
                f64::from(failures_per_minute.max(1)) / 60.0,
                failures_per_minute.max(1),
            ),
        }
    }

    /// Creates an account. The password is hashed with Argon2id; usernames
    /// are unique case-insensitively.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        role: &str,
    ) -> Result<Account, RegisterError> {
        if !valid_username(username) {
            return Err(RegisterError::InvalidUsername);
        }
        // A name that looks like another account's would pass for it.
        if self
            .store
            .account_alike(&skeleton(username))
            .await
            .map_err(RegisterError::Store)?
        {
            return Err(RegisterError::Taken);
        }
        if !PASSWORD_CHARS.contains(&password.chars().count()) {
            return Err(RegisterError::InvalidPassword);
        }
        if parse_role(role).is_none() {
            return Err(RegisterError::InvalidRole);
        }
        let hash = password::hash(password.to_owned())
            .await
            .ok_or(RegisterError::Hash)?;
        let account = Account {
            id: new_account_id()?,
            username: username.to_owned(),
            password_hash: hash,
            role: role.to_owned(),
            created_at: Timestamp::now(),
        };
        match self.store.create_account(account.clone()).await {
            Ok(()) => Ok(account),
            Err(StoreError::Conflict) => Err(RegisterError::Taken),
            Err(err) => Err(RegisterError::Store(err)),
        }
    }

    /// Checks a username and password from `client`, and issues a token.
    pub async fn login(
        &self,
        client: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<Login, LoginError> {
        self.failures
            .check(&client)
            .map_err(LoginError::RateLimited)?;
        let account = self.store.find_account(username).await?;
        let hash = account.as_ref().map(|a| a.password_hash.clone());
        if !password::verify(password.to_owned(), hash).await {
            // Failures use up the address's allowance; past it, attempts are
            // refused before any password is checked.
            let _ = self.failures.take(&client);
            return Err(LoginError::BadCredentials);
        }
        let account = account.ok_or(LoginError::BadCredentials)?;
        let ttl = self.token_ttl.as_secs();
        let token = self.tokens.mint(
            &account.id,
            Some(&account.username),
            Some(&account.role),
            ttl,
        );
        let identity = self
            .tokens
            .verify(&token)
            .map_err(|_| LoginError::BadCredentials)?;
        let expires_at = identity.expires_at.unwrap_or_else(Timestamp::now);
        Ok(Login {
            identity,
            token,
            expires_at,
        })
    }

    /// Whether an account has this username (case-insensitively).
    pub async fn is_registered(&self, username: &str) -> Result<bool, StoreError> {
        Ok(self.store.find_account(username).await?.is_some())
    }

    /// Whether an account's username looks like `username` (see
    /// [`skeleton`]).
    pub async fn is_registered_alike(&self, username: &str) -> Result<bool, StoreError> {
        self.store.account_alike(&skeleton(username)).await
    }
}

fn parse_role(role: &str) -> Option<Role> {
    match role {
        "user" => Some(Role::User),
        "assistant" => Some(Role::Assistant),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

/// The user object of an account, as others see it.
pub fn account_user(account: &Account) -> User {
    let kind = match parse_role(&account.role) {
        Some(Role::Assistant) => UserKind::Assistant,
        _ => UserKind::User,
    };
    User {
        id: account.id.as_str().into(),
        username: account.username.as_str().into(),
        kind,
    }
}

/// A fresh account id: `u_` and 16 random hex digits.
fn new_account_id() -> Result<String, RegisterError> {
    super::random_hex(8)
        .map(|hex| format!("u_{hex}"))
        .ok_or(RegisterError::Random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alikes_share_a_skeleton() {
        assert_eq!(skeleton("Alice"), skeleton("AL1CE"));
        assert_eq!(skeleton("alice"), skeleton("aIice"));
        assert_eq!(skeleton("modern"), skeleton("rnodem"));
        assert_eq!(skeleton("w0w"), skeleton("vvow"));
        assert_eq!(skeleton("dose"), skeleton("c1ose"));
        assert_ne!(skeleton("alice"), skeleton("alina"));
    }

    #[test]
    fn usernames() {
        for good in ["alice", "Bob_2", "a.b-c", "x1"] {
            assert!(valid_username(good), "{good}");
        }
        for bad in [
            "a",
            "-lead",
            "has space",
            "'; DROP TABLE users;--",
            "../../etc/passwd",
            "system",
            "Admin",
            &"x".repeat(33),
            "émile",
        ] {
            assert!(!valid_username(bad), "{bad}");
        }
    }
}
