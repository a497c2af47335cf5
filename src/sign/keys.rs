//! The pair of signing keys runner holds, as QStash does: requests are signed with `current`;
//! receivers configured with both keep verifying across a rotation.
//!
//! Part of the pure core: no I/O. Where the keys come from (environment, database) is the
//! shell's business (`runtime::keys`).

/// The signing keys: requests are signed with `current`; receivers also accept `next`.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub current: String,
    pub next: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys { current: [redacted], next: [redacted] }")
    }
}
