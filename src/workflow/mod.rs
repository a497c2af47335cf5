//! The workflow format: YAML text → checked [`Workflow`], with diagnostics.
//!
//! Part of the pure core: no I/O. Reading files is the caller's job.

pub mod check;
pub mod diagnostic;
pub mod duration;
pub mod model;
pub mod output;
pub mod schema;
pub mod template;
pub mod yaml;

pub use check::{CheckedSet, SourceFile, check_file, check_names, check_set, resolve_input};
pub use diagnostic::{Code, Diagnostic};
pub use model::*;
