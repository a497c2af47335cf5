//! A small facade for the integration tests and benchmarks that drive the library in-process:
//! the running parts as `runner serve` builds them, without the listener.
//!
//! I/O shell.

use crate::dispatch::email::MailContext;
use crate::dispatch::mail::Mailer;
use crate::runtime::Executor;
use crate::runtime::keys::KeyRing;
use crate::sign::Keys;
use crate::store::Store;
use std::path::PathBuf;

/// An executor over `store` that signs with `keys` and writes e-mails to `outbox`.
pub fn executor(store: Store, keys: Keys, outbox: PathBuf) -> Executor {
    let mailer = Mailer::new(None, None, outbox).expect("an outbox mailer needs no settings");
    let performers = crate::dispatch::performers(
        &store,
        KeyRing::new(keys),
        MailContext {
            mailer,
            public_url: "http://127.0.0.1:9".into(),
        },
    );
    Executor::new(store, performers, Default::default())
}
