//! The running parts of a process that runs runs, built one way for `runner serve`, `runner run`
//! and `runner resume`: the listener (bound first: approval links default to its address), the
//! store, the signing keys, the mailer, the performers and the executor.

use crate::dispatch::email::MailContext;
use crate::dispatch::mail::Mailer;
use crate::metrics::Metrics;
use crate::runtime::Executor;
use crate::runtime::keys::KeyRing;
use crate::store::Store;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

/// What the running parts are built from; every field has an embedded default (see `cli`).
#[derive(Debug, Clone)]
pub struct PartsConfig {
    /// A SQLite file, or a `postgres://…` connection string.
    pub db: String,
    pub listen: SocketAddr,
    /// The base of approval links; default: the address the listener is bound to.
    pub public_url: Option<String>,
    /// `RUNNER_SMTP_URL`; None writes e-mails to `outbox`.
    pub smtp_url: Option<String>,
    pub mail_from: Option<String>,
    pub outbox: PathBuf,
}

pub struct Parts {
    pub listener: tokio::net::TcpListener,
    pub local: SocketAddr,
    pub public_url: String,
    pub store: Store,
    pub keys: KeyRing,
    pub exec: Executor,
    pub metrics: Arc<Metrics>,
}

/// The base of approval links: `public_url`, or else the address the process is bound to
/// (`bound`, not the configured one: with `--listen 127.0.0.1:0` only the bound address has the
/// port). Bound to every interface (`0.0.0.0`, `::`), which no link can reach, it is the
/// address this host sends from (`reachable`), with a warning to set `--public-url`.
pub fn public_url(configured: Option<&str>, bound: SocketAddr) -> String {
    let url = match configured {
        Some(url) => url.to_string(),
        None if bound.ip().is_unspecified() => {
            let ip = reachable(bound).unwrap_or(bound.ip());
            let url = format!("http://{}", SocketAddr::new(ip, bound.port()));
            warn!(
                listen = %bound,
                links = %url,
                "no --public-url (RUNNER_PUBLIC_URL): approval links would name {bound}, which no one can open; they use {url}, this host's outgoing address, instead. Set --public-url to the address users reach"
            );
            url
        }
        None => format!("http://{bound}"),
    };
    url.trim_end_matches('/').to_string()
}

/// The address this host sends from to the outside, if it has a route there: a UDP socket
/// "connected" to a documentation address (RFC 5737 / 3849) picks it; no packet is sent.
fn reachable(bound: SocketAddr) -> Option<std::net::IpAddr> {
    let (local, remote) = if bound.is_ipv4() {
        ("0.0.0.0:0", "192.0.2.1:9")
    } else {
        ("[::]:0", "[2001:db8::1]:9")
    };
    let socket = std::net::UdpSocket::bind(local).ok()?;
    socket.connect(remote).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

pub async fn build(cfg: &PartsConfig) -> anyhow::Result<Parts> {
    // Bound before anything can mail a link: the links default to the bound address.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let local = listener.local_addr()?;
    let public_url = public_url(cfg.public_url.as_deref(), local);
    let store = Store::connect(&cfg.db).await?;
    let (keys, source) = crate::runtime::keys::resolve(&store).await?;
    let db = store.describe();
    info!(
        db = %db,
        keys = ?source,
        "signing keys ready (`runner keys --db {db}` prints them for receivers)",
    );
    let keys = KeyRing::new(keys);
    let mailer = Mailer::new(
        cfg.smtp_url.as_deref(),
        cfg.mail_from.as_deref(),
        cfg.outbox.clone(),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    info!(mail = %mailer.describe(), "mail ready");
    let performers = crate::dispatch::performers(
        &store,
        keys.clone(),
        MailContext {
            mailer,
            public_url: public_url.clone(),
        },
    );
    let metrics = Arc::new(Metrics::default());
    let exec = Executor::new(store.clone(), performers, metrics.clone());
    Ok(Parts {
        listener,
        local,
        public_url,
        store,
        keys,
        exec,
        metrics,
    })
}
