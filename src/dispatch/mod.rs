//! Performing effects against the outside world: signed HTTP calls, e-mails, approval e-mails.
//!
//! I/O shell: everything here talks to the network; the decisions stay in the core. Each
//! performer answers the event its effect produced; the executor applies it.

pub mod approval_mail;
pub mod email;
pub mod http;
pub mod mail;

use crate::runtime::Performers;
use crate::runtime::keys::KeyRing;
use crate::store::Store;
use std::sync::Arc;

/// The performers of every external effect, for an executor.
pub fn performers(store: &Store, keys: KeyRing, mail: email::MailContext) -> Performers {
    let mail = Arc::new(mail);
    Performers {
        http: Arc::new(http::HttpPerformer::new(keys)),
        email: Arc::new(email::EmailPerformer(mail.clone())),
        approval: Arc::new(approval_mail::ApprovalPerformer::new(mail, store.clone())),
    }
}
