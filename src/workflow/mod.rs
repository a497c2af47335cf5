//! The workflow format: YAML text → checked [`Workflow`], with diagnostics.
//!
//! Part of the pure core: no I/O. Reading files is the caller's job.

pub mod address;
pub mod builtin;
pub mod check;
pub mod diagnostic;
pub mod duration;
pub mod input;
pub mod model;
pub mod output;
pub mod render;
pub mod schema;
pub mod suggest;
pub mod template;
pub mod yaml;

pub use check::{CheckedSet, SourceFile, check_file, check_names, check_set, file_stem};
pub use diagnostic::{Code, Diagnostic};
pub use input::{json_kind, resolve_input};
pub use model::*;
pub use render::{Format, render};
