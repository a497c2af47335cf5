//! Which processes may run a database's runs at the same time.
//!
//! I/O shell. `runner serve` and `runner resume` *recover*: they perform every effect left
//! pending in the outbox and arm every unfinished run's timers. A second process doing that on
//! the same database, or doing it while a `runner run` process has a call in flight, would
//! perform what the other has in flight (a second daemon, or `resume` next to a live daemon,
//! re-sent a live call). `runner run` performs only its own run's effects, so several of them,
//! and one started next to a daemon that has already recovered, are safe.
//!
//! Lock files next to the database file (symbolic links resolved, so two names of one file share
//! them), mode 0600, released by the operating system when the process dies (`kill -9`
//! included), so a crash never leaves one stale:
//! - `<db>.lock`: a recovering process holds it exclusively for its whole life; a second one is
//!   refused, naming the first.
//! - `<db>.runs.lock`: each `runner run` holds it shared for its whole life; a recovering process
//!   takes it exclusively while it recovers (refused if a `runner run` is active), so no run can
//!   start in the middle, and lets it go once done.
//! - `<db>.owners/run-<pid>-<n>.lock`: each `runner run` holds its own file exclusively and lists
//!   in it the runs it created. A daemon looks at these files every few seconds ([`abandoned`]):
//!   one it can lock belongs to a process that is gone (killed, or stopped before its run
//!   ended), and the runs it lists are nobody's, so the daemon continues them as it continues
//!   every run when it starts. A recovering process removes every such file when it starts: it
//!   continues every run anyway.
//!
//! Commands that only read (`runs`, `show`) take none.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Held while this process runs the database's runs; dropping it releases the locks.
#[derive(Debug)]
pub struct Owner {
    _recovery: Option<File>,
    runs: Option<File>,
    /// A `runner run`'s own file in `<db>.owners/`, locked for the process's life.
    mine: Option<(PathBuf, File)>,
}

impl Owner {
    /// After recovery: `runner run` processes may start now.
    pub fn recovered(&mut self) {
        self.runs = None;
    }

    /// `runner run`: records that this process runs `run_id`, so that a daemon continues it if
    /// this process ends first.
    pub fn claim(&mut self, run_id: &str) -> anyhow::Result<()> {
        if let Some((path, file)) = &mut self.mine {
            writeln!(file, "{run_id}")
                .and_then(|()| file.flush())
                .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", path.display()))?;
        }
        Ok(())
    }

    /// `runner run`, once its runs have ended: nothing is left for a daemon to continue.
    pub fn release(mut self) {
        if let Some((path, file)) = self.mine.take() {
            let _ = std::fs::remove_file(&path);
            drop(file);
        }
    }
}

/// A path next to the database file (`db` with its links resolved) with `suffix` appended.
fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = super::file::resolve(db).into_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn open_private(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn lock_file(db: &Path, suffix: &str) -> anyhow::Result<(PathBuf, File)> {
    let path = beside(db, suffix);
    let file = open_private(&path)
        .map_err(|e| anyhow::anyhow!("cannot open the lock file `{}`: {e}", path.display()))?;
    Ok((path, file))
}

/// The folder of the `runner run` processes' own lock files.
fn owners_dir(db: &Path) -> PathBuf {
    beside(db, ".owners")
}

/// Whose file this is, from its first line (for logs).
fn holder_of(text: &str) -> &str {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .unwrap_or("a `runner run` process")
}

/// The runs a gone `runner run` process had created: (who it was, run ids).
pub type Abandoned = (String, Vec<String>);

/// For a daemon, every few seconds: the runs of `runner run` processes that have ended without
/// finishing them (their file is no longer locked). Each file is removed once read, so its runs
/// are answered once.
pub fn abandoned(db: &Path) -> Vec<Abandoned> {
    let Ok(entries) = std::fs::read_dir(owners_dir(db)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_owner = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("run-") && n.ends_with(".lock"));
        if !is_owner {
            continue;
        }
        let Ok(mut file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // its process is alive (or the file cannot be locked: leave it)
        }
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() || std::fs::remove_file(&path).is_err() {
            continue;
        }
        let ids = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        out.push((holder_of(&text).to_string(), ids));
    }
    out
}

/// For a recovering process, which continues every run: the files of `runner run` processes
/// that ended are not needed any more (none is alive: their shared lock would have kept this
/// process out).
fn clear_owners(db: &Path) {
    let Ok(entries) = std::fs::read_dir(owners_dir(db)) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path)
            && file.try_lock().is_ok()
        {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// A `runner run`'s own lock file, locked, then named `run-….lock` (a daemon looking at the
/// folder never sees it unlocked).
fn own_file(db: &Path) -> anyhow::Result<(PathBuf, File)> {
    let dir = owners_dir(db);
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create `{}`: {e}", dir.display()))?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let fresh = dir.join(format!(".new-{tag}"));
    let path = dir.join(format!("run-{tag}.lock"));
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot create `{}`: {e}", fresh.display());
    let mut file = open_private(&fresh).map_err(fail)?;
    file.lock().map_err(fail)?;
    writeln!(
        file,
        "# runner run, pid {}, since {}",
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    )
    .and_then(|()| file.flush())
    .map_err(fail)?;
    std::fs::rename(&fresh, &path).map_err(fail)?;
    Ok((path, file))
}

const ADVICE: &str = "start runs through the daemon (`runner trigger`, the API), or stop that \
                      process first; `runner runs` and `runner show` can read the database \
                      meanwhile";

/// For `runner serve` and `runner resume` (`what` names this process in another's error).
pub fn take_for_recovery(db: &Path, what: &str) -> anyhow::Result<Owner> {
    take_alone(db, what, ADVICE)
}

/// For a command that changes runs without performing them (`runner cancel --db`): the same
/// locks as a recovering process, so that nobody is performing a run it changes; `advice` ends
/// the error when another process holds the database.
pub fn take_alone(db: &Path, what: &str, advice: &str) -> anyhow::Result<Owner> {
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
                "the database `{}` is in use by another runner process ({holder}); {advice}",
                db.display()
            );
        }
        Err(TryLockError::Error(e)) => anyhow::bail!("cannot lock `{}`: {e}", path.display()),
    }
    let (path, runs) = lock_file(db, ".runs.lock")?;
    match runs.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => anyhow::bail!(
            "the database `{}` is in use by a `runner run` process; wait for it to end, or {advice}",
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
    clear_owners(db);
    Ok(Owner {
        _recovery: Some(recovery),
        runs: Some(runs),
        mine: None,
    })
}

/// For `runner run`: waits (10 s at most) while a daemon or `resume` is recovering.
pub fn take_for_one_run(db: &Path) -> anyhow::Result<Owner> {
    let (path, runs) = lock_file(db, ".runs.lock")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match runs.try_lock_shared() {
            Ok(()) => {
                let mine = own_file(db)?;
                return Ok(Owner {
                    _recovery: None,
                    runs: Some(runs),
                    mine: Some(mine),
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

    /// Two names of one file (a symbolic link, a linked folder) are one database: a daemon on
    /// one name excludes a second daemon on the other.
    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_to_the_database_shares_its_locks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("runner.db");
        std::fs::write(&db, b"").expect("db");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).expect("symlink");
        let folder = dir.path().join("folder");
        std::os::unix::fs::symlink(dir.path(), &folder).expect("folder symlink");
        let _daemon = take_for_recovery(&db, "runner serve").expect("daemon");
        for other in [link, folder.join("runner.db")] {
            let err = take_for_recovery(&other, "runner serve").expect_err("the same file");
            assert!(err.to_string().contains("(runner serve, pid "), "{err}");
        }
    }

    /// The lock files are the owner's only, whatever the umask (they are created 0600; a umask
    /// can only take bits away).
    #[cfg(unix)]
    #[test]
    fn lock_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("runner.db");
        let run = take_for_one_run(&db).expect("a run");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&beside(&db, ".runs.lock")), 0o600);
        assert_eq!(mode(&owners_dir(&db)) & 0o077, 0);
        let (own, _) = run.mine.as_ref().expect("own file");
        assert_eq!(mode(own), 0o600);
        drop(run);
        drop(take_for_recovery(&db, "runner serve").expect("daemon"));
        assert_eq!(mode(&beside(&db, ".lock")), 0o600);
    }

    /// A `runner run` that ends without finishing its runs leaves them to a daemon, once; one
    /// that is alive, or that released its file, leaves nothing.
    #[test]
    fn the_runs_of_a_gone_runner_run_are_abandoned_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("runner.db");
        let mut alive = take_for_one_run(&db).expect("a run");
        alive.claim("run-alive").expect("claim");
        let mut gone = take_for_one_run(&db).expect("another");
        gone.claim("run-a").expect("claim");
        gone.claim("run-b").expect("claim");
        let mut done = take_for_one_run(&db).expect("a third");
        done.claim("run-done").expect("claim");
        done.release();
        assert!(abandoned(&db).is_empty(), "every owner is alive or done");
        drop(gone);
        let found = abandoned(&db);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].0.starts_with("runner run, pid "), "{found:?}");
        assert_eq!(found[0].1, ["run-a", "run-b"]);
        assert!(abandoned(&db).is_empty(), "answered once");
        // A recovering process clears what is left of gone processes (it continues every run).
        drop(alive);
        drop(take_for_recovery(&db, "runner serve").expect("daemon"));
        assert!(abandoned(&db).is_empty());
        assert_eq!(
            std::fs::read_dir(owners_dir(&db)).expect("folder").count(),
            0
        );
    }
}
