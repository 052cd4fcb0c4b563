//! Password hashing with Argon2id (PHC strings), run off the async threads
//! and at most a few at a time, so that a burst of logins cannot starve the
//! rest of the server.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// Hashes running at once; each takes a core for tens of milliseconds.
const CONCURRENT_HASHES: usize = 2;

fn permits() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| Arc::new(Semaphore::new(CONCURRENT_HASHES)))
}

/// A hash of a password nobody has, checked against when the username does
/// not exist, so that "no such user" takes as long as "wrong password".
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_now("decoy password for unknown users").unwrap_or_default())
}

fn hash_now(password: &str) -> Option<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .ok()
        .map(|hash| hash.to_string())
}

fn verify_now(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Hashes a new password. `None` only if the system has no randomness.
pub async fn hash(password: String) -> Option<String> {
    let _permit = permits().clone().acquire_owned().await.ok()?;
    tokio::task::spawn_blocking(move || hash_now(&password))
        .await
        .ok()
        .flatten()
}

/// Checks a password against a stored hash; with no hash (unknown user) it
/// does the same work against a decoy and fails.
pub async fn verify(password: String, hash: Option<String>) -> bool {
    let Ok(_permit) = permits().clone().acquire_owned().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || match hash {
        Some(hash) => verify_now(&password, &hash),
        None => {
            verify_now(&password, decoy());
            false
        }
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_salt() {
        let first = hash("correct horse".into()).await.expect("hash");
        let second = hash("correct horse".into()).await.expect("hash");
        assert!(first.starts_with("$argon2id$"));
        assert_ne!(first, second, "salted");
        assert!(verify("correct horse".into(), Some(first.clone())).await);
        assert!(!verify("wrong horse".into(), Some(first)).await);
        assert!(!verify("anything".into(), None).await);
        assert!(!verify("anything".into(), Some("not a hash".into())).await);
    }
}
