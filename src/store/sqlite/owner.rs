//! Which processes may run a database's runs at the same time.
//!
//! I/O shell. `runner serve` and `runner resume` *recover*: they perform every effect left
//! pending in the outbox and arm every unfinished run's timers. A second process doing that on
//! the same database, or doing it while a `runner run` process has a call in flight, would
//! perform what the other has in flight (a second daemon, or `resume` next to a live daemon,
//! re-sent a live call). `runner run` performs only its own run's effects, so several of them,
//! and one started next to a daemon that has already recovered, are safe.
//!
//! Two lock files next to the database, released by the operating system when the process dies
//! (`kill -9` included), so a crash never leaves one stale:
//! - `<db>.lock`: a recovering process holds it exclusively for its whole life; a second one is
//!   refused, naming the first.
//! - `<db>.runs.lock`: each `runner run` holds it shared for its whole life; a recovering process
//!   takes it exclusively while it recovers (refused if a `runner run` is active), so no run can
//!   start in the middle, and lets it go once done.
//!
//! Commands that only read (`runs`, `show`) take neither.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Held while this process runs the database's runs; dropping it releases the locks.
#[derive(Debug)]
pub struct Owner {
    _recovery: Option<File>,
    runs: Option<File>,
}

impl Owner {
    /// After recovery: `runner run` processes may start now.
    pub fn recovered(&mut self) {
        self.runs = None;
    }
}

fn lock_file(db: &Path, suffix: &str) -> anyhow::Result<(PathBuf, File)> {
    let mut name = db.as_os_str().to_os_string();
    name.push(suffix);
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open the lock file `{}`: {e}", path.display()))?;
    Ok((path, file))
}

const ADVICE: &str = "start runs through the daemon (`runner trigger`, the API), or stop that \
                      process first; `runner runs` and `runner show` can read the database \
                      meanwhile";

/// For `runner serve` and `runner resume` (`what` names this process in another's error).
pub fn take_for_recovery(db: &Path, what: &str) -> anyhow::Result<Owner> {
    let (path, mut recovery) = lock_file(db, ".lock")?;
    match recovery.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = recovery.read_to_string(&mut holder);
            let holder = if holder.trim().is_empty() {
                "unknown"
            } else {
                holder.trim()
            };
            anyhow::bail!(
                "the database `{}` is in use by another runner process ({holder}); {ADVICE}",
                db.display()
            );
        }
        Err(TryLockError::Error(e)) => anyhow::bail!("cannot lock `{}`: {e}", path.display()),
    }
    let (path, runs) = lock_file(db, ".runs.lock")?;
    match runs.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => anyhow::bail!(
            "the database `{}` is in use by a `runner run` process; wait for it to end, or {ADVICE}",
            db.display()
        ),
        Err(TryLockError::Error(e)) => anyhow::bail!("cannot lock `{}`: {e}", path.display()),
    }
    // Who holds it, for the message above (the lock, not this text, is what counts).
    let _ = recovery.set_len(0);
    let _ = recovery.rewind();
    let _ = write!(
        recovery,
        "{what}, pid {}, since {}",
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    let _ = recovery.flush();
    Ok(Owner {
        _recovery: Some(recovery),
        runs: Some(runs),
    })
}

/// For `runner run`: waits (10 s at most) while a daemon or `resume` is recovering.
pub fn take_for_one_run(db: &Path) -> anyhow::Result<Owner> {
    let (path, runs) = lock_file(db, ".runs.lock")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match runs.try_lock_shared() {
            Ok(()) => {
                return Ok(Owner {
                    _recovery: None,
                    runs: Some(runs),
                });
            }
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(TryLockError::WouldBlock) => anyhow::bail!(
                "the database `{}` has been recovering for 10 s (`runner serve` or `resume`); try again",
                db.display()
            ),
            Err(TryLockError::Error(e)) => anyhow::bail!("cannot lock `{}`: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovering_processes_exclude_each_other_and_active_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("runner.db");
        // Runs side by side.
        let run_a = take_for_one_run(&db).expect("a run");
        let run_b = take_for_one_run(&db).expect("another run");
        let err = take_for_recovery(&db, "runner serve").expect_err("runs are active");
        assert!(err.to_string().contains("`runner run` process"), "{err}");
        drop((run_a, run_b));
        // A daemon, then a second one or a resume: refused, naming the first.
        let mut daemon = take_for_recovery(&db, "runner serve").expect("daemon");
        let err = take_for_recovery(&db, "runner resume")
            .expect_err("second")
            .to_string();
        assert!(err.contains("(runner serve, pid "), "{err}");
        // Once the daemon has recovered, a run may start beside it.
        daemon.recovered();
        drop(take_for_one_run(&db).expect("a run beside the daemon"));
        drop(daemon);
        drop(take_for_recovery(&db, "runner resume").expect("free again"));
    }
}
