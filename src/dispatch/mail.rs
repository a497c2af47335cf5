//! Sending e-mail: SMTP through lettre (async, rustls), or, with no SMTP configured, `.eml` files
//! in an outbox folder so a new user can read them (and click approval links) locally.

use lettre::message::{Mailbox, MultiPart, SinglePart, header};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Worth trying again (connection refused, 4xx).
    #[error("{0}")]
    Transient(String),
    /// Will not work by trying again (5xx, bad address, bad configuration).
    #[error("{0}")]
    Permanent(String),
}

/// One message: plain text, and HTML when given.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    /// A name for the outbox file (run and step).
    pub tag: String,
}

#[derive(Clone)]
pub enum Mailer {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
        url_without_password: String,
    },
    Outbox {
        dir: PathBuf,
        from: Mailbox,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Mailer {
    /// From `RUNNER_SMTP_URL` (e.g. `smtp://user:pass@host:2525`, `smtps://…`, add `?tls=required`
    /// for STARTTLS) and `RUNNER_MAIL_FROM`; with no URL, an outbox folder.
    pub fn new(
        smtp_url: Option<&str>,
        from: Option<&str>,
        outbox: PathBuf,
    ) -> Result<Mailer, String> {
        crate::install_crypto_provider();
        let from: Mailbox = from
            .unwrap_or("runner <runner@localhost>")
            .parse()
            .map_err(|e| format!("RUNNER_MAIL_FROM is not a valid address: {e}"))?;
        match smtp_url.filter(|u| !u.trim().is_empty()) {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| format!("RUNNER_SMTP_URL is not usable: {e}"))?
                    .timeout(Some(std::time::Duration::from_secs(30)))
                    .build();
                let url_without_password = match url::Url::parse(url) {
                    Ok(mut u) => {
                        let _ = u.set_password(None);
                        u.to_string()
                    }
                    Err(_) => "smtp".into(),
                };
                Ok(Mailer::Smtp {
                    transport,
                    from,
                    url_without_password,
                })
            }
            None => Ok(Mailer::Outbox { dir: outbox, from }),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Mailer::Smtp {
                url_without_password,
                ..
            } => format!("SMTP {url_without_password}"),
            Mailer::Outbox { dir, .. } => format!("outbox folder {}", dir.display()),
        }
    }

    pub fn is_outbox(&self) -> bool {
        matches!(self, Mailer::Outbox { .. })
    }

    fn build(from: &Mailbox, mail: &Outgoing) -> Result<Message, MailError> {
        // A Message-ID of the sender's domain (RFC 5322 §3.6.4): mail servers and clients
        // thread and deduplicate on it, and some spam filters score its absence.
        let message_id = format!("<{}@{}>", uuid::Uuid::new_v4(), from.email.domain());
        let mut b = Message::builder()
            .from(from.clone())
            .message_id(Some(message_id))
            .subject(mail.subject.clone());
        for to in &mail.to {
            let mb: Mailbox = to.parse().map_err(|e| {
                MailError::Permanent(format!("`{to}` is not a valid recipient: {e}"))
            })?;
            b = b.to(mb);
        }
        let m = match &mail.html {
            Some(html) => b.multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::plain(mail.text.clone()))
                    .singlepart(SinglePart::html(html.clone())),
            ),
            None => b.singlepart(
                SinglePart::builder()
                    .header(header::ContentType::TEXT_PLAIN)
                    .body(mail.text.clone()),
            ),
        };
        m.map_err(|e| MailError::Permanent(format!("cannot build the message: {e}")))
    }

    /// Sends one message, giving up after `limit` (a transient failure: a server that accepts
    /// the connection and never answers must not hold a step forever). Returns where it went
    /// (for logs and step output).
    ///
    /// `limit` bounds the sending; `said` is the limit an error names (the step's `timeout`,
    /// of which rendering the mail took a part).
    pub async fn send(
        &self,
        mail: &Outgoing,
        limit: std::time::Duration,
        said: std::time::Duration,
    ) -> Result<String, MailError> {
        match self {
            Mailer::Smtp {
                transport,
                from,
                url_without_password,
            } => {
                let msg = Self::build(from, mail)?;
                match tokio::time::timeout(limit, transport.send(msg)).await {
                    Err(_) => Err(MailError::Transient(format!(
                        "the SMTP server {url_without_password} did not finish within {} s",
                        said.as_secs_f64()
                    ))),
                    Ok(Ok(_)) => Ok(format!("sent through {url_without_password}")),
                    Ok(Err(e)) if e.is_permanent() => Err(MailError::Permanent(format!(
                        "the SMTP server refused the message: {e}"
                    ))),
                    Ok(Err(e)) => Err(MailError::Transient(format!("SMTP delivery failed: {e}"))),
                }
            }
            Mailer::Outbox { dir, from } => {
                let msg = Self::build(from, mail)?;
                // The e-mails carry live approval links: the owner's only, whatever the umask.
                let mut folder = std::fs::DirBuilder::new();
                folder.recursive(true);
                #[cfg(unix)]
                std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
                folder.create(dir).map_err(|e| {
                    MailError::Transient(format!(
                        "cannot create the outbox folder `{}`: {e}",
                        dir.display()
                    ))
                })?;
                let safe: String = mail
                    .tag
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let name = format!(
                    "{}-{safe}-{}.eml",
                    chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f"),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                );
                let path = dir.join(name);
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                options
                    .open(&path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, &msg.formatted()))
                    .map_err(|e| {
                        MailError::Transient(format!("cannot write `{}`: {e}", path.display()))
                    })?;
                Ok(format!("written to {}", path.display()))
            }
        }
    }
}
