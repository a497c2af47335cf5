//! Signing keys: from `RUNNER_SIGNING_KEY` / `RUNNER_NEXT_SIGNING_KEY`, or generated on first
//! start and kept in the database, as QStash keeps a current and a next key.

use super::http::Keys;
use crate::store::{Store, StoreError};

const CURRENT: &str = "signing_key.current";
const NEXT: &str = "signing_key.next";

/// Where the keys in use come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    Database,
}

fn generate() -> String {
    crate::sign::key_from_random(rand::random())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The keys to sign with, generating and storing them on first use.
pub async fn resolve(store: &Store) -> Result<(Keys, KeySource), StoreError> {
    let stored_next = store.get_kv(NEXT)?;
    if let Some(current) = env("RUNNER_SIGNING_KEY") {
        let next = match env("RUNNER_NEXT_SIGNING_KEY") {
            Some(n) => n,
            None => match stored_next {
                Some(n) => n,
                None => {
                    let n = generate();
                    store.set_kv(NEXT, &n).await?;
                    n
                }
            },
        };
        return Ok((Keys { current, next }, KeySource::Environment));
    }
    let current = match store.get_kv(CURRENT)? {
        Some(c) => c,
        None => {
            let c = generate();
            store.set_kv(CURRENT, &c).await?;
            c
        }
    };
    let next = match env("RUNNER_NEXT_SIGNING_KEY").or(stored_next) {
        Some(n) => n,
        None => {
            let n = generate();
            store.set_kv(NEXT, &n).await?;
            n
        }
    };
    Ok((Keys { current, next }, KeySource::Database))
}

/// Promotes the next key to current and makes a new next key (database keys only).
pub async fn rotate(store: &Store) -> Result<Keys, String> {
    if env("RUNNER_SIGNING_KEY").is_some() {
        return Err("the signing keys come from RUNNER_SIGNING_KEY / RUNNER_NEXT_SIGNING_KEY; rotate them there".into());
    }
    let (keys, _) = resolve(store).await.map_err(|e| e.to_string())?;
    let rotated = Keys {
        current: keys.next,
        next: generate(),
    };
    store
        .set_kv(CURRENT, &rotated.current)
        .await
        .map_err(|e| e.to_string())?;
    store
        .set_kv(NEXT, &rotated.next)
        .await
        .map_err(|e| e.to_string())?;
    Ok(rotated)
}
