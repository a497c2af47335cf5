//! Performing effects against the outside world: signed HTTP calls (and, later, mail).
//!
//! I/O shell: everything here talks to the network; the decisions stay in the core.

pub mod approval;
pub mod http;
pub mod keys;
pub mod mail;
