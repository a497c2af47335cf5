//! What can go wrong in the store, said in terms of what was being done. No backend type
//! appears here: a database error is carried as its kind and its message.

use std::fmt;

/// The kind of a database error, as far as callers act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// The disk is full (SQLite `SQLITE_FULL`): writes fail until space returns.
    Full,
    /// The database cannot be written (read-only file or file system).
    ReadOnly,
    /// Locked or busy for longer than the wait allows, or the server cannot be reached.
    Unavailable,
    /// A unique key was already taken.
    Conflict,
    /// This node's lease has lapsed (PostgreSQL): another node may have taken over its work, so
    /// nothing of this node may commit until it registers again.
    Fenced,
    Other,
}

/// A database error: its kind and the backend's message.
#[derive(Debug, Clone)]
pub struct DbError {
    pub kind: DbErrorKind,
    pub message: String,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DbErrorKind::Full => write!(f, "the disk is full ({})", self.message),
            DbErrorKind::ReadOnly => write!(f, "the database is read-only ({})", self.message),
            DbErrorKind::Unavailable => {
                write!(f, "the database is not available ({})", self.message)
            }
            DbErrorKind::Conflict | DbErrorKind::Fenced | DbErrorKind::Other => {
                f.write_str(&self.message)
            }
        }
    }
}

impl std::error::Error for DbError {}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the database `{path}`: {source}")]
    Open { path: String, source: DbError },
    #[error("migrating the database `{path}`: {source}")]
    Migrate { path: String, source: DbError },
    #[error("database error while {doing}: {source}")]
    Db {
        doing: &'static str,
        source: DbError,
    },
    #[error("run `{0}` does not exist")]
    NoSuchRun(String),
    #[error("workflow version `{0}` is not in the database")]
    NoSuchVersion(String),
    #[error("stored workflow version `{hash}` no longer checks: {message}")]
    BadVersion { hash: String, message: String },
    #[error("stored state of run `{id}` is unreadable: {message}")]
    Corrupt { id: String, message: String },
    #[error("the database writer has stopped")]
    WriterGone,
}

impl StoreError {
    /// True when the failure is about the database's condition (full, read-only, unreachable),
    /// not about the request: worth answering 503 and trying again later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db { source, .. }
            | StoreError::Open { source, .. }
            | StoreError::Migrate { source, .. } => matches!(
                source.kind,
                DbErrorKind::Full
                    | DbErrorKind::ReadOnly
                    | DbErrorKind::Unavailable
                    | DbErrorKind::Fenced
            ),
            StoreError::WriterGone => true,
            _ => false,
        }
    }
}
