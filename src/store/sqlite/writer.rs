//! The single writer of a SQLite database, shared by every clone of the store: group commit.
//!
//! I/O shell. A caller that finds the writer idle commits its change itself, on its own thread,
//! and so avoids waking another thread and being woken back (on this VM each wake-up costs more
//! than the statements of a change). When the writer is busy, the caller leaves its change in
//! the queue for the writer thread, which commits everything queued in one transaction when the
//! current one ends. Other writes (settings, schedules, approval links) always go to the thread.

use super::tx::{Cached, RunCache, SqliteTx};
use super::{db, sql};
use crate::store::StoreError;
use crate::store::apply::{self, ApplyEvent, ready};
use crate::store::types::{Applied, NewRunRequest, Versions};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::oneshot;

/// How many commands one transaction takes at most.
const BATCH: usize = 512;

/// A write other than a run change, run inside a write transaction of the writer thread. It may
/// run twice (once more after a rolled-back batch), so it is `Fn`.
pub(super) type WriteJob =
    Box<dyn Fn(&Connection) -> Result<Box<dyn Any + Send>, StoreError> + Send>;

/// A change for the writer: what to do, and where its result goes.
pub(super) struct Command {
    pub job: Job,
    pub reply: Reply,
}

pub(super) enum Job {
    Start {
        request: Box<NewRunRequest>,
        now: DateTime<Utc>,
    },
    Apply {
        change: Box<ApplyEvent>,
        now: DateTime<Utc>,
    },
    MarkDone {
        run_id: String,
        effect: i64,
    },
    Write(WriteJob),
    /// A write a crash undoes anyway (a flow-control admission: after a crash every call in
    /// flight is sent again and asks again). A batch of only these commits without waiting
    /// for the disk (`synchronous = NORMAL` in WAL mode: durable at the next full commit).
    Light(WriteJob),
}

/// Where a command's result goes.
pub(super) enum Reply {
    Applied(oneshot::Sender<Result<Applied, StoreError>>),
    Unit(oneshot::Sender<Result<(), StoreError>>),
    Any(oneshot::Sender<Result<Box<dyn Any + Send>, StoreError>>),
}

/// A command's result, before its transaction commits.
enum Outcome {
    Applied(Result<Applied, StoreError>),
    Unit(Result<(), StoreError>),
    Any(Result<Box<dyn Any + Send>, StoreError>),
}

impl Outcome {
    fn is_ok(&self) -> bool {
        match self {
            Outcome::Applied(r) => r.is_ok(),
            Outcome::Unit(r) => r.is_ok(),
            Outcome::Any(r) => r.is_ok(),
        }
    }
}

impl Reply {
    fn fail(self, e: impl Fn() -> StoreError) {
        match self {
            Reply::Applied(tx) => drop(tx.send(Err(e()))),
            Reply::Unit(tx) => drop(tx.send(Err(e()))),
            Reply::Any(tx) => drop(tx.send(Err(e()))),
        }
    }

    fn send(self, outcome: Outcome) {
        match (self, outcome) {
            (Reply::Applied(tx), Outcome::Applied(r)) => drop(tx.send(r)),
            (Reply::Unit(tx), Outcome::Unit(r)) => drop(tx.send(r)),
            (Reply::Any(tx), Outcome::Any(r)) => drop(tx.send(r)),
            // Each job gives the outcome its reply takes (`run_job`).
            (reply, _) => reply.fail(|| StoreError::WriterGone),
        }
    }
}

pub(super) struct Writer {
    queue: Mutex<WriteQueue>,
    work: Condvar,
    state: Mutex<WriterState>,
    /// Calls in flight whose outcome will be committed soon (`Store::outcome_pending`). While
    /// any is, a change waits for the thread's next batch instead of committing inline: a caller
    /// blocked in its own commit would keep the others (on a one-worker runtime, all of them)
    /// from queueing theirs, and every change would pay a commit of its own.
    pub(super) expected: AtomicUsize,
}

#[derive(Default)]
struct WriteQueue {
    commands: std::collections::VecDeque<Command>,
    closed: bool,
}

pub(super) struct WriterState {
    pub conn: Connection,
    pub cache: RunCache,
    pub versions: Versions,
}

/// See `Store::outcome_pending`.
pub struct OutcomePending(Option<Arc<Writer>>);

impl OutcomePending {
    /// A guard that counts nothing (a backend without group commit).
    pub fn none() -> OutcomePending {
        OutcomePending(None)
    }
}

impl Drop for OutcomePending {
    fn drop(&mut self) {
        if let Some(w) = &self.0 {
            w.expected.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Dropped with the last clone of the store: the writer thread then finishes what is queued
/// and ends.
pub(super) struct WriterHandle(pub Arc<Writer>);

impl Drop for WriterHandle {
    fn drop(&mut self) {
        unpoisoned(&self.0.queue).closed = true;
        self.0.work.notify_one();
    }
}

impl Writer {
    pub(super) fn new(state: WriterState) -> Writer {
        Writer {
            queue: Mutex::new(WriteQueue::default()),
            work: Condvar::new(),
            state: Mutex::new(state),
            expected: AtomicUsize::new(0),
        }
    }

    pub(super) fn outcome_pending(self: &Arc<Self>) -> OutcomePending {
        self.expected.fetch_add(1, Ordering::Relaxed);
        OutcomePending(Some(self.clone()))
    }

    pub(super) fn submit(&self, cmd: Command) {
        // Inline only when nothing else is coming: no other change waits and no call is in
        // flight. Under load the writer thread batches, and the callers' threads stay free for
        // their HTTP calls instead of waiting on an fsync. Other writes always go to the thread.
        let inline = !matches!(cmd.job, Job::Write(_) | Job::Light(_))
            && self.expected.load(Ordering::Relaxed) == 0;
        let mut queue = unpoisoned(&self.queue);
        if inline && queue.commands.is_empty() {
            // `try_lock` under the queue lock cannot deadlock: it never waits.
            let idle = match self.state.try_lock() {
                Ok(state) => Some(state),
                Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(mut state) = idle {
                drop(queue);
                // Changes queued meanwhile woke the thread, which commits them after this.
                process_batch(&mut state, vec![cmd]);
                return;
            }
        }
        queue.commands.push_back(cmd);
        drop(queue);
        self.work.notify_one();
    }

    fn next_batch(&self) -> Option<Vec<Command>> {
        let mut q = unpoisoned(&self.queue);
        let n = q.commands.len().min(BATCH);
        (n > 0).then(|| q.commands.drain(..n).collect())
    }
}

/// A panic while a lock was held (a bug) must not stop every later change: the state the
/// lock guards stays usable (an open transaction is rolled back by the next batch).
fn unpoisoned<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn writer_loop(writer: &Writer) {
    loop {
        {
            let mut q = unpoisoned(&writer.queue);
            while q.commands.is_empty() {
                if q.closed {
                    return;
                }
                q = writer.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        }
        let mut state = unpoisoned(&writer.state);
        while let Some(batch) = writer.next_batch() {
            process_batch(&mut state, batch);
        }
    }
}

/// Transaction control with cached statements: rusqlite's `Transaction` and `Savepoint` parse
/// `BEGIN`/`COMMIT`/`SAVEPOINT` text again on every use, two to three parses per state change.
fn control(conn: &Connection, statement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.execute([]).map(|_| ())
}

/// Starts a write transaction, and checks the writer's cache against other connections' commits.
fn begin(conn: &Connection, cache: &mut RunCache) -> rusqlite::Result<()> {
    control(conn, "BEGIN IMMEDIATE")?;
    let checked = cache.check(conn);
    if checked.is_err() {
        rollback(conn, cache);
    }
    checked
}

fn failure(doing: &'static str, e: &rusqlite::Error) -> impl Fn() -> StoreError {
    let source = db(e);
    move || StoreError::Db {
        doing,
        source: source.clone(),
    }
}

pub(super) fn process_batch(state: &mut WriterState, mut batch: Vec<Command>) {
    let WriterState {
        conn,
        cache,
        versions,
    } = state;
    if !conn.is_autocommit() {
        // Left open by a batch that panicked.
        rollback(conn, cache);
    }
    if let Err(e) = begin(conn, cache) {
        fail_all(batch, failure("starting a transaction", &e));
        return;
    }
    // First without savepoints: each costs two statements and a copy of every page it
    // changes (the sub-journal), and changes rarely fail. If one does, the transaction is
    // rolled back and the batch runs again, each change in its own savepoint, so that one
    // failing change does not undo the others. A batch of one needs none: its failure undoes
    // only itself. Every job can run twice with the same result.
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut failed = None;
    for cmd in &batch {
        let outcome = run_job(conn, &cmd.job, versions, cache);
        if !outcome.is_ok() {
            failed = Some(outcome);
            break;
        }
        outcomes.push(outcome);
    }
    let Some(outcome) = failed else {
        let light = batch.iter().all(|c| matches!(c.job, Job::Light(_)));
        let done = batch.into_iter().map(|c| c.reply).zip(outcomes).collect();
        if light {
            // Nothing here must survive a power cut: no wait for the disk.
            drop(control(conn, "PRAGMA synchronous = NORMAL"));
            commit(conn, cache, done);
            drop(control(conn, "PRAGMA synchronous = FULL"));
        } else {
            commit(conn, cache, done);
        }
        return;
    };
    rollback(conn, cache);
    if batch.len() == 1 {
        let cmd = batch.pop().expect("a batch of one");
        cmd.reply.send(outcome);
        return;
    }
    if let Err(e) = begin(conn, cache) {
        fail_all(batch, failure("starting a transaction", &e));
        return;
    }
    let mut done = Vec::with_capacity(batch.len());
    for cmd in batch {
        // Each command in its own savepoint: one failing change does not undo the others.
        if let Err(e) = control(conn, "SAVEPOINT change") {
            cmd.reply.fail(failure("opening a savepoint", &e));
            continue;
        }
        let outcome = run_job(conn, &cmd.job, versions, cache);
        let end = if outcome.is_ok() {
            control(conn, "RELEASE change")
        } else {
            cache.clear();
            control(conn, "ROLLBACK TO change").and_then(|()| control(conn, "RELEASE change"))
        };
        if let Err(e) = end {
            cache.clear();
            cmd.reply.fail(failure("closing a savepoint", &e));
            continue;
        }
        done.push((cmd.reply, outcome));
    }
    commit(conn, cache, done);
}

/// Commits the open transaction, then sends each outcome (or the commit's failure).
fn commit(conn: &Connection, cache: &mut RunCache, done: Vec<(Reply, Outcome)>) {
    match control(conn, "COMMIT") {
        Ok(()) => {
            for (reply, outcome) in done {
                reply.send(outcome);
            }
        }
        Err(e) => {
            rollback(conn, cache);
            let fail = failure("committing", &e);
            for (reply, _) in done {
                reply.fail(&fail);
            }
        }
    }
}

/// Undoes the open transaction, if any, and what the cache learnt in it.
fn rollback(conn: &Connection, cache: &mut RunCache) {
    cache.clear();
    if !conn.is_autocommit() {
        drop(control(conn, "ROLLBACK"));
    }
}

fn fail_all(batch: Vec<Command>, fail: impl Fn() -> StoreError) {
    for cmd in batch {
        cmd.reply.fail(&fail);
    }
}

/// Runs one job inside the open transaction.
fn run_job(conn: &Connection, job: &Job, versions: &Versions, cache: &mut RunCache) -> Outcome {
    let mut tx = SqliteTx {
        conn,
        cache,
        versions,
    };
    match job {
        Job::Start { request, now } => {
            Outcome::Applied(ready(apply::start(&mut tx, request, *now)))
        }
        Job::Apply { change, now } => Outcome::Applied(ready(apply::apply(&mut tx, change, *now))),
        Job::MarkDone { run_id, effect } => Outcome::Unit(
            conn.exec(
                "DELETE FROM outbox WHERE run_id = ?1 AND id = ?2",
                params![*run_id, *effect],
            )
            .map(drop)
            .map_err(sql("marking an effect done")),
        ),
        Job::Write(job) | Job::Light(job) => Outcome::Any(job(conn)),
    }
}
