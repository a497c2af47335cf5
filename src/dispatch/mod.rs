//! Performing effects against the outside world: signed HTTP calls (and, later, mail).
//!
//! I/O shell: everything here talks to the network; the decisions stay in the core.

pub mod http;
pub mod keys;
