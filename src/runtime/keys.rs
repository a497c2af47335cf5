//! Signing keys: from `RUNNER_SIGNING_KEY` / `RUNNER_NEXT_SIGNING_KEY`, or generated on first
//! start and kept in the database, as QStash keeps a current and a next key.
//!
//! I/O shell (environment, database, randomness). A running daemon re-reads the database's keys
//! every few seconds ([`KeyRing::refresh_every`]), so `runner keys rotate` reaches it (and every
//! daemon sharing the database) without a restart.

use crate::sign::Keys;
use crate::store::{Store, StoreError};
use std::sync::{Arc, RwLock};

const CURRENT: &str = "signing_key.current";
const NEXT: &str = "signing_key.next";

/// How often a daemon looks for a rotation made by another process.
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

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

/// The keys to sign with, generating and storing them on first use. Generating is logged as a
/// warning that says what receivers must change: it happens on a new database, and also on one
/// that lost its keys (replaced, or restored without them), where it means every receiver
/// starts refusing calls.
pub async fn resolve(store: &Store) -> Result<(Keys, KeySource), StoreError> {
    let stored_next = store.setting(NEXT).await?;
    let mut generated = Vec::new();
    if let Some(current) = env("RUNNER_SIGNING_KEY") {
        let next = match env("RUNNER_NEXT_SIGNING_KEY") {
            Some(n) => n,
            None => match stored_next {
                Some(n) => n,
                None => {
                    let n = generate();
                    store.set_setting(NEXT, &n).await?;
                    generated.push("QSTASH_NEXT_SIGNING_KEY");
                    n
                }
            },
        };
        warn_generated(store, &generated).await;
        return Ok((Keys { current, next }, KeySource::Environment));
    }
    let current = match store.setting(CURRENT).await? {
        Some(c) => c,
        None => {
            let c = generate();
            store.set_setting(CURRENT, &c).await?;
            generated.push("QSTASH_CURRENT_SIGNING_KEY");
            c
        }
    };
    let next = match env("RUNNER_NEXT_SIGNING_KEY").or(stored_next) {
        Some(n) => n,
        None => {
            let n = generate();
            store.set_setting(NEXT, &n).await?;
            generated.push("QSTASH_NEXT_SIGNING_KEY");
            n
        }
    };
    warn_generated(store, &generated).await;
    Ok((Keys { current, next }, KeySource::Database))
}

/// Logs which keys were just generated and what receivers must change.
async fn warn_generated(store: &Store, generated: &[&str]) {
    if generated.is_empty() {
        return;
    }
    let db = store.describe();
    let what = generated.join(" and ");
    let had_runs = store
        .list_runs(&crate::store::RunFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .is_ok_and(|runs| !runs.is_empty());
    if had_runs {
        tracing::warn!(
            db = %db,
            "the database has runs but no signing key, so new keys were generated (was the file replaced, or restored without its keys?): every receiver refuses calls until it has the new {what} (`runner keys --db {db}` prints them)"
        );
    } else {
        tracing::warn!(
            db = %db,
            "new signing keys were generated and kept in the database: give receivers the new {what} (`runner keys --db {db}` prints them), or they refuse every call"
        );
    }
}

/// The keys as they are now, without generating any (None when one is missing).
async fn read(store: &Store) -> Result<Option<Keys>, StoreError> {
    let stored_next = store.setting(NEXT).await?;
    let current = match env("RUNNER_SIGNING_KEY") {
        Some(c) => Some(c),
        None => store.setting(CURRENT).await?,
    };
    let next = env("RUNNER_NEXT_SIGNING_KEY").or(stored_next);
    Ok(current
        .zip(next)
        .map(|(current, next)| Keys { current, next }))
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
        .set_setting(CURRENT, &rotated.current)
        .await
        .map_err(|e| e.to_string())?;
    store
        .set_setting(NEXT, &rotated.next)
        .await
        .map_err(|e| e.to_string())?;
    Ok(rotated)
}

/// The keys in use, shared by every performer that signs; replaced when they change.
#[derive(Clone)]
pub struct KeyRing(Arc<RwLock<Keys>>);

impl KeyRing {
    pub fn new(keys: Keys) -> KeyRing {
        KeyRing(Arc::new(RwLock::new(keys)))
    }

    pub fn get(&self) -> Keys {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, keys: Keys) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Reads the keys again (a rotation by `runner keys rotate` or by another daemon on the same
    /// database); answers the new keys when they changed. Keys missing from the database are
    /// not generated here: the keys in use stay.
    pub async fn refresh(&self, store: &Store) -> Result<Option<Keys>, StoreError> {
        let Some(keys) = read(store).await? else {
            tracing::warn!(
                db = %store.describe(),
                "the signing keys are missing from the database; still signing with the keys in use"
            );
            return Ok(None);
        };
        if keys == self.get() {
            return Ok(None);
        }
        self.set(keys.clone());
        Ok(Some(keys))
    }

    /// Refreshes every `every` until the process ends. Spawn it once.
    pub async fn refresh_every(self, store: Store, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.refresh(&store).await {
                Ok(Some(_)) => tracing::info!(
                    "the signing keys changed in the database (a rotation): signing with the new current key"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the signing keys"),
            }
        }
    }
}
