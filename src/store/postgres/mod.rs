//! The PostgreSQL backend, for several daemons on one database.
//!
//! I/O shell; with its submodules, the only place that knows tokio-postgres. Run changes go
//! through writer lanes (`lane`): each owns a connection and commits what is queued for it in
//! one transaction (group commit), runs always going to the same lane, so a lane's cache of run
//! states is right for this node; another node's change is caught by reading each run's `rev`
//! under `FOR UPDATE` first. Every lane transaction first checks this node's lease (fencing): a
//! node that was paused past its lease cannot commit after another took its work (`nodes`).
//! Reads and other writes use a pool (`queries`).

mod events;
mod flow;
mod lane;
mod nodes;
mod queries;
mod tx;

pub use nodes::NodeRow;

use super::apply::{ApplyEvent, RecordedAttempt};
use super::types::{Applied, AttemptRecord, NewRunRequest, Versions};
use super::{DbError, DbErrorKind, StoreError};
use crate::engine::Event;
use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// The schema, one file per version, applied in order under an advisory lock.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/001_initial.sql"),
    include_str!("../migrations/postgres/002_outbox_fresh.sql"),
    include_str!("../migrations/postgres/003_items.sql"),
    include_str!("../migrations/postgres/004_events.sql"),
    include_str!("../migrations/postgres/005_flow_control.sql"),
    include_str!("../migrations/postgres/006_runs_per_key.sql"),
    include_str!("../migrations/postgres/007_schedule_pauses.sql"),
    include_str!("../migrations/postgres/008_dlq.sql"),
    include_str!("../migrations/postgres/009_retention.sql"),
];

/// The advisory lock held while migrating (daemons of one version may start together).
const MIGRATION_LOCK: i64 = 0x7275_6e6e_6572; // "runner"

/// How many writer lanes (connections committing run changes).
const LANES: usize = 4;
/// Connections for reads and other writes.
const READERS: usize = 8;

/// Every time is stored as milliseconds since the epoch.
pub(super) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

/// The database's clock in milliseconds, for leases (nodes compare against one clock).
pub(super) const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A tokio-postgres error as the store reports it.
pub(super) fn db(e: &tokio_postgres::Error) -> DbError {
    use tokio_postgres::error::SqlState;
    let kind = match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => DbErrorKind::Conflict,
        Some(c) if *c == SqlState::DISK_FULL => DbErrorKind::Full,
        Some(c) if *c == SqlState::READ_ONLY_SQL_TRANSACTION => DbErrorKind::ReadOnly,
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::CONNECTION_FAILURE =>
        {
            DbErrorKind::Unavailable
        }
        Some(_) => DbErrorKind::Other,
        // No SQL state: the connection broke, or could not be made.
        None => DbErrorKind::Unavailable,
    };
    let mut message = e.to_string();
    if let Some(db) = e.as_db_error() {
        message = format!("{}: {}", db.severity(), db.message());
    } else if let Some(source) = std::error::Error::source(e) {
        message = format!("{message}: {source}");
    }
    DbError { kind, message }
}

pub(super) fn sql(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Db {
        doing,
        source: db(&e),
    }
}

pub(super) fn pool_err(
    doing: &'static str,
) -> impl FnOnce(deadpool_postgres::PoolError) -> StoreError {
    move |e| StoreError::Db {
        doing,
        source: match e {
            deadpool_postgres::PoolError::Backend(e) => db(&e),
            other => DbError {
                kind: DbErrorKind::Unavailable,
                message: other.to_string(),
            },
        },
    }
}

/// `host:port/database` of a connection string, never with a password.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("(default user)");
    let dbname = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{dbname}")
}

/// This node, once registered: its id, and whether its lease still holds.
pub(super) struct NodeState {
    pub id: String,
    pub name: String,
}

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: deadpool_postgres::Pool,
    lanes: Vec<mpsc::UnboundedSender<lane::Command>>,
    versions: Versions,
    /// Set once this process registers as a node (a daemon, a foreground run); commands that
    /// only read or manage settings run without one.
    node: Arc<Mutex<Option<Arc<NodeState>>>>,
    describe: String,
    config: tokio_postgres::Config,
}

impl PgStore {
    /// Connects, checks the server answers, and migrates the schema (under a lock).
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Open {
            path: "postgres://…".into(),
            source: DbError {
                kind: DbErrorKind::Other,
                message: format!("not a valid PostgreSQL connection string: {e}"),
            },
        })?;
        let describe = describe(&config);
        crate::install_crypto_provider();
        let tls = tls()?;
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(LANES + READERS)
            .wait_timeout(Some(std::time::Duration::from_secs(5)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Open {
                path: describe.clone(),
                source: DbError {
                    kind: DbErrorKind::Other,
                    message: e.to_string(),
                },
            })?;
        let open_err = |e: StoreError| match e {
            StoreError::Db { source, .. } => StoreError::Open {
                path: describe.clone(),
                source,
            },
            other => other,
        };
        migrate(&pool).await.map_err(|e| match e {
            StoreError::Db { source, .. } if source.kind != DbErrorKind::Unavailable => {
                StoreError::Migrate {
                    path: describe.clone(),
                    source,
                }
            }
            e => open_err(e),
        })?;
        let versions = Versions::default();
        let node = Arc::new(Mutex::new(None));
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(lane::run(pool.clone(), rx, versions.clone(), node.clone()));
                tx
            })
            .collect();
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                lanes,
                versions,
                node,
                describe,
                config,
            }),
        })
    }

    /// Notifications on `channel` (`NOTIFY channel, 'payload'`), from a connection of their own
    /// that is made again when it breaks; an empty payload after a reconnect says some may have
    /// been missed.
    pub fn listen(&self, channel: &'static str) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let config = self.inner.config.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                if tx.is_closed() {
                    return;
                }
                match listen_once(&config, channel, &tx, first).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, channel, "the notification connection broke; connecting again");
                    }
                }
                first = false;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
        rx
    }

    pub fn describe(&self) -> &str {
        &self.inner.describe
    }

    pub fn versions(&self) -> &Versions {
        &self.inner.versions
    }

    pub(super) fn pool(&self) -> &deadpool_postgres::Pool {
        &self.inner.pool
    }

    pub(super) fn node(&self) -> Option<Arc<NodeState>> {
        self.inner
            .node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_node(&self, node: Option<Arc<NodeState>>) {
        *self.inner.node.lock().unwrap_or_else(|e| e.into_inner()) = node;
    }

    /// The lane of a run: the same for every change to it.
    fn lane(&self, run_id: &str) -> &mpsc::UnboundedSender<lane::Command> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        run_id.hash(&mut h);
        let i = usize::try_from(h.finish() % self.inner.lanes.len() as u64).unwrap_or(0);
        &self.inner.lanes[i]
    }

    async fn submit(&self, run_id: &str, job: lane::Job) -> Result<Applied, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.lane(run_id)
            .send(lane::Command { job, reply })
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    pub async fn start_run(
        &self,
        request: NewRunRequest,
        now: DateTime<Utc>,
    ) -> Result<Applied, StoreError> {
        let id = request.new.id.clone();
        self.submit(
            &id,
            lane::Job::Start {
                request: Box::new(request),
                now,
            },
        )
        .await
    }

    pub async fn apply(
        &self,
        run_id: &str,
        event: Event,
        now: DateTime<Utc>,
        attempt: Option<AttemptRecord>,
        done_effect: Option<i64>,
    ) -> Result<Applied, StoreError> {
        let change = ApplyEvent {
            run_id: run_id.to_string(),
            data: serde_json::to_string(&event).expect("an event serializes"),
            event,
            attempt: attempt.as_ref().map(RecordedAttempt::new),
            done_effect,
        };
        self.submit(
            run_id,
            lane::Job::Apply {
                change: Box::new(change),
                now,
            },
        )
        .await
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    tx: &mpsc::UnboundedSender<String>,
    first: bool,
) -> Result<(), String> {
    let tls = tls().map_err(|e| e.to_string())?;
    let (client, mut conn) = config.connect(tls).await.map_err(|e| e.to_string())?;
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(m) = stream.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if msg_tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(|e| e.to_string())?;
    if !first {
        let _ = tx.send(String::new());
    }
    loop {
        tokio::select! {
            m = msg_rx.recv() => match m {
                Some(payload) => {
                    if tx.send(payload).is_err() {
                        driver.abort();
                        return Ok(());
                    }
                }
                None => break,
            },
            () = tx.closed() => {
                driver.abort();
                return Ok(());
            }
        }
    }
    // The connection ended: the caller connects again.
    Err("the notification connection closed".into())
}

/// TLS as the connection string's `sslmode` asks (`prefer`, the default, falls back to plain
/// text when the server has no TLS): rustls with the web's root certificates, and those of
/// `PGSSLROOTCERT` when it names a file.
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots_certs());
    if let Ok(path) = std::env::var("PGSSLROOTCERT")
        && !path.is_empty()
    {
        let pem = std::fs::read(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            source: DbError {
                kind: DbErrorKind::Other,
                message: format!("cannot read PGSSLROOTCERT `{path}`: {e}"),
            },
        })?;
        for cert in rustls_pemfile_certs(&pem) {
            let _ = roots.add(cert);
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn webpki_roots_certs() -> impl Iterator<Item = rustls::pki_types::TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS.iter().cloned()
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// Applies the migrations not yet applied, one transaction each, under an advisory lock so that
/// daemons starting together migrate once.
async fn migrate(pool: &deadpool_postgres::Pool) -> Result<(), StoreError> {
    let doing = "migrating the schema";
    let mut c = pool.get().await.map_err(pool_err(doing))?;
    c.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .await
        .or_else(|e| {
            // Two daemons creating it at the same instant: the other one won.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(sql(doing))?;
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(sql(doing))?;
    let result = async {
        let done: i32 = c
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(sql(doing))?
            .get(0);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            if version <= done {
                continue;
            }
            let tx = c.transaction().await.map_err(sql(doing))?;
            tx.batch_execute(m).await.map_err(sql(doing))?;
            tx.execute(
                "INSERT INTO schema_migrations(version, applied_at) VALUES ($1, $2)",
                &[&version, &ms(Utc::now())],
            )
            .await
            .map_err(sql(doing))?;
            tx.commit().await.map_err(sql(doing))?;
        }
        Ok(())
    }
    .await;
    let _ = c
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}
