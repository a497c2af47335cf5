//! The workflows directory as the daemon sees it: the active (last good) version of each file,
//! and the diagnostics of files that fail the checker or cannot be read.
//!
//! One reload path: the file watcher and SIGHUP both call [`reload`], which reads and checks the
//! directory with a [`Loader`] (the same reader and checker as `runner validate`) outside any lock,
//! then takes the registry's write lock only to diff the result against what was active and swap
//! it in ([`Registry::apply`]: no I/O, no checking). API handlers and the scheduler read the
//! registry under that lock, so they never wait on a file being read or checked.

use crate::sources::{self, Sources};
use crate::store::Version;
use crate::workflow::{self, Diagnostic, Workflow};
use crate::workflow::{Format, render};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct FileState {
    pub path: String,
    /// The version in force: the file's current content if it checks, else the last that did.
    pub active: Option<Version>,
    /// Problems of the file's current content (empty when it checks).
    pub diagnostics: Vec<Diagnostic>,
    /// The diagnostics rendered as `runner validate` prints them.
    pub rendered: String,
}

#[derive(Debug, Default)]
pub struct Changes {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// The files that are gone (their last good version is forgotten).
    pub removed_paths: Vec<String>,
    /// Files whose version in force is new or changed, by path (what the database keeps as the
    /// file's last good version).
    pub activated: Vec<(String, Version)>,
    /// Files whose new content was refused (the last good version, if any, stays active).
    pub refused: Vec<(String, String)>,
    /// Subdirectories with workflow files that were not read, not reported before.
    pub skipped_dirs: Vec<String>,
    pub errors: Vec<String>,
    /// Workflow files found, and how many of them were checked (the others had not changed).
    pub files: usize,
    pub checked: usize,
    /// How long reading and checking took, and how long the registry was locked for the swap.
    pub scan_time: Duration,
    pub locked_time: Duration,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.refused.is_empty()
            && self.skipped_dirs.is_empty()
            && self.errors.is_empty()
    }
}

/// The checker a [`Loader`] calls for each new or changed file (`workflow::check_file`, except
/// in tests that watch what happens while a file is checked).
pub type CheckFn = dyn Fn(&str, &str) -> Result<Workflow, Vec<Diagnostic>> + Send + Sync;

/// A file's own check, remembered with the content it was made of.
enum Checked {
    Good(Version),
    Bad {
        text: String,
        diagnostics: Vec<Diagnostic>,
    },
}

impl Checked {
    fn text(&self) -> &str {
        match self {
            Checked::Good(v) => &v.source,
            Checked::Bad { text, .. } => text,
        }
    }
}

/// Reads and checks the workflows directory. It re-checks only files whose content changed since
/// its last scan (every file is read, at most `sources::MAX_FILE_BYTES` each, and compared with
/// the content last checked; a larger file is refused from its size without being read); the
/// cross-file name check covers every file each time. It holds no reference to the registry.
pub struct Loader {
    dir: PathBuf,
    cache: HashMap<String, Checked>,
    check: Box<CheckFn>,
}

/// One file as a scan found it.
pub struct Scanned {
    pub path: String,
    /// The version its content makes, or why it is refused (diagnostics, and their rendering).
    pub outcome: Result<Version, (Vec<Diagnostic>, String)>,
}

/// What [`Loader::scan`] found: everything [`Registry::apply`] needs, already read and checked.
#[derive(Default)]
pub struct Scan {
    pub files: Vec<Scanned>,
    /// Subdirectories with workflow files that were not read.
    pub skipped_dirs: Vec<PathBuf>,
    pub errors: Vec<String>,
    /// False when the directory could not be listed: the registry then keeps what it has.
    pub complete: bool,
    /// Files checked in this scan (new or changed).
    pub checked: usize,
    pub took: Duration,
}

impl Loader {
    pub fn new(dir: &Path) -> Loader {
        Loader::with_checker(dir, Box::new(workflow::check_file))
    }

    pub fn with_checker(dir: &Path, check: Box<CheckFn>) -> Loader {
        Loader {
            dir: dir.to_path_buf(),
            cache: HashMap::new(),
            check,
        }
    }

    /// Reads the directory and checks what changed. Slow for a large directory the first time;
    /// call it without holding the registry's lock.
    pub fn scan(&mut self) -> Scan {
        let started = Instant::now();
        let mut scan = Scan {
            complete: true,
            ..Scan::default()
        };
        let Sources {
            files,
            refused,
            skipped_dirs,
        } = if self.dir.is_dir() {
            match sources::read_sources(std::slice::from_ref(&self.dir)) {
                Ok(s) => s,
                Err(e) => {
                    scan.errors.push(format!("{e:#}"));
                    scan.complete = false;
                    scan.took = started.elapsed();
                    return scan;
                }
            }
        } else {
            scan.errors.push(format!(
                "the workflows directory `{}` does not exist",
                self.dir.display()
            ));
            Sources::default()
        };
        scan.skipped_dirs = skipped_dirs;

        // Each file's own check: the cached one when its content is what was checked.
        let mut previous = std::mem::take(&mut self.cache);
        let mut own: Vec<Option<Checked>> = (files.iter())
            .map(|f| previous.remove(&f.path).filter(|c| c.text() == f.text))
            .collect();
        let todo: Vec<usize> = (0..files.len()).filter(|&i| own[i].is_none()).collect();
        let check = &self.check;
        let fresh = sources::par_map(&todo, |&i| (check)(&files[i].path, &files[i].text));
        scan.checked = todo.len();
        for (i, result) in todo.into_iter().zip(fresh) {
            let file = &files[i];
            own[i] = Some(match result {
                Ok(wf) => Checked::Good(Version::new(&file.path, &file.text, wf)),
                Err(diagnostics) => Checked::Bad {
                    text: file.text.clone(),
                    diagnostics,
                },
            });
        }
        let own: Vec<Checked> = (own.into_iter())
            .map(|c| c.expect("every file is cached or was just checked"))
            .collect();

        // Names must be unique across all files, changed or not.
        let results = (own.iter())
            .map(|c| match c {
                Checked::Good(v) => Ok((*v.workflow).clone()),
                Checked::Bad { diagnostics, .. } => Err(diagnostics.clone()),
            })
            .collect();
        let named = workflow::check_names(&files, results);
        for ((file, checked), result) in files.iter().zip(own).zip(named.results) {
            let refused = |diags: Vec<Diagnostic>| {
                let text = render(&diags, std::slice::from_ref(file), Format::Human, 1);
                Err((diags, text))
            };
            let outcome = match (result, &checked) {
                (Ok(_), Checked::Good(v)) => Ok(v.clone()),
                (Ok(_), Checked::Bad { diagnostics, .. }) => refused(diagnostics.clone()),
                (Err(diags), _) => refused(diags),
            };
            scan.files.push(Scanned {
                path: file.path.clone(),
                outcome,
            });
            self.cache.insert(file.path.clone(), checked);
        }
        for d in refused {
            let text = render(std::slice::from_ref(&d), &[], Format::Human, 1);
            scan.files.push(Scanned {
                path: d.file.clone(),
                outcome: Err((vec![d], text)),
            });
        }
        scan.took = started.elapsed();
        scan
    }
}

/// The daemon's reload: reads and checks with `loader` (no lock held), then swaps the result
/// into `registry` under its write lock.
pub fn reload(loader: &mut Loader, registry: &RwLock<Registry>) -> Changes {
    let scan = loader.scan();
    let took = scan.took;
    let locked = Instant::now();
    let mut changes = registry.write().expect("registry lock").apply(scan);
    changes.locked_time = locked.elapsed();
    changes.scan_time = took;
    changes
}

#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
    skipped_dirs: BTreeSet<PathBuf>,
    /// The built-in `qstash` workflow (`workflow::builtin`): found by name like the files'
    /// workflows, never listed with them.
    qstash: Version,
}

/// The built-in `qstash` workflow's version.
pub fn qstash_version() -> Version {
    use crate::workflow::builtin;
    Version::new(
        builtin::QSTASH_PATH,
        builtin::QSTASH_SOURCE,
        builtin::qstash(),
    )
}

impl Registry {
    pub fn new(dir: &Path) -> Registry {
        Registry {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            skipped_dirs: BTreeSet::new(),
            qstash: qstash_version(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads and checks the whole directory afresh and applies it (for tests and tools; the
    /// daemon keeps a [`Loader`] and calls [`reload`]).
    pub fn reload(&mut self) -> Changes {
        let scan = Loader::new(&self.dir).scan();
        self.apply(scan)
    }

    /// Makes a scan's result the registry's state; returns what changed. A refused file keeps
    /// its version in force. Cheap: no I/O, no checking.
    pub fn apply(&mut self, scan: Scan) -> Changes {
        let mut changes = Changes {
            errors: scan.errors,
            files: scan.files.len(),
            checked: scan.checked,
            ..Changes::default()
        };
        if !scan.complete {
            return changes;
        }
        let skipped: BTreeSet<PathBuf> = scan.skipped_dirs.into_iter().collect();
        changes.skipped_dirs = (skipped.difference(&self.skipped_dirs))
            .map(|p| p.display().to_string())
            .collect();
        self.skipped_dirs = skipped;

        fn identity(v: &Version) -> (&str, &str) {
            (&v.workflow.name, &v.hash)
        }
        let mut next: BTreeMap<String, FileState> = BTreeMap::new();
        for file in scan.files {
            let previous = self.files.get(&file.path);
            let was = previous.and_then(|p| p.active.as_ref());
            let state = match file.outcome {
                Ok(version) => FileState {
                    path: file.path.clone(),
                    active: Some(version),
                    diagnostics: Vec::new(),
                    rendered: String::new(),
                },
                Err((diagnostics, rendered)) => {
                    if previous.is_none_or(|p| p.diagnostics != diagnostics) {
                        changes.refused.push((file.path.clone(), rendered.clone()));
                    }
                    FileState {
                        path: file.path.clone(),
                        active: was.cloned(),
                        diagnostics,
                        rendered,
                    }
                }
            };
            if let Some(now) = &state.active {
                match was {
                    None => changes.added.push(now.workflow.name.clone()),
                    Some(w) if identity(w) != identity(now) => {
                        changes.changed.push(now.workflow.name.clone());
                    }
                    Some(_) => {}
                }
                if was.is_none_or(|w| identity(w) != identity(now)) {
                    changes.activated.push((file.path.clone(), now.clone()));
                }
            }
            next.insert(file.path, state);
        }
        for (path, old) in &self.files {
            if next.contains_key(path) {
                continue;
            }
            changes.removed_paths.push(path.clone());
            if let Some(v) = &old.active {
                changes.removed.push(v.workflow.name.clone());
            }
        }
        self.files = next;
        changes
    }

    /// After a restart, a file whose content fails the checker (or cannot be read) has no
    /// version in force yet: gives it the last good one, `last_good(path)` answering its
    /// (path, source) from the database, as a daemon that kept running would have kept it.
    /// Answers the restored names.
    pub fn restore_last_good(
        &mut self,
        last_good: impl Fn(&str) -> Option<(String, String)>,
    ) -> Vec<String> {
        let mut restored = Vec::new();
        for state in self.files.values_mut() {
            if state.active.is_some() || state.diagnostics.is_empty() {
                continue;
            }
            let Some((path, source)) = last_good(&state.path) else {
                continue;
            };
            if let Ok(wf) = workflow::check_file(&path, &source) {
                restored.push(wf.name.clone());
                state.active = Some(Version::new(&path, &source, wf));
            }
        }
        restored
    }

    /// The active version of a workflow by name (the first file by path wins a name clash).
    pub fn get(&self, name: &str) -> Option<&Version> {
        if name == crate::workflow::builtin::QSTASH {
            return Some(&self.qstash);
        }
        self.files
            .values()
            .filter_map(|f| f.active.as_ref())
            .find(|v| v.workflow.name == name)
    }

    /// Active versions, one per name.
    pub fn active(&self) -> Vec<&Version> {
        let mut seen = std::collections::HashSet::new();
        self.files
            .values()
            .filter_map(|f| f.active.as_ref())
            .filter(|v| seen.insert(v.workflow.name.clone()))
            .collect()
    }

    pub fn files(&self) -> impl Iterator<Item = &FileState> {
        self.files.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};

    const A: &str = "name: a\non: { webhook: true }\nsteps:\n  - id: one\n    sleep: 1s\n";
    const B: &str = "name: b\non: { webhook: true }\nsteps:\n  - id: one\n    sleep: 1s\n";
    const B2: &str = "name: b\non: { webhook: true }\nsteps:\n  - id: two\n    sleep: 2s\n";

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write");
    }

    fn state<'r>(reg: &'r Registry, file: &str) -> &'r FileState {
        reg.files()
            .find(|f| f.path.ends_with(file))
            .unwrap_or_else(|| panic!("no `{file}` in {reg:#?}"))
    }

    fn codes(f: &FileState) -> Vec<&'static str> {
        f.diagnostics.iter().map(|d| d.code.as_str()).collect()
    }

    /// Runs `f` on another thread and fails the test if it takes more than 10 s (a FIFO opened
    /// for reading would block forever).
    fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a reload did not finish within 10 s (blocked on a file?)")
    }

    #[test]
    fn the_registry_is_not_locked_while_files_are_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yaml", A);
        write(dir.path(), "b.yaml", B);
        let registry = Arc::new(RwLock::new(Registry::new(dir.path())));
        let (checks, locked) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut loader = {
            let (registry, checks, locked) = (registry.clone(), checks.clone(), locked.clone());
            Loader::with_checker(
                dir.path(),
                Box::new(move |path, text| {
                    // Any lock held by the reload (read or write) makes this fail.
                    if registry.try_write().is_err() {
                        locked.store(true, Ordering::SeqCst);
                    }
                    checks.fetch_add(1, Ordering::SeqCst);
                    workflow::check_file(path, text)
                }),
            )
        };
        let changes = reload(&mut loader, &registry);
        write(dir.path(), "b.yaml", B2);
        let again = reload(&mut loader, &registry);
        assert_eq!(checks.load(Ordering::SeqCst), 3, "{changes:?} {again:?}");
        assert!(
            !locked.load(Ordering::SeqCst),
            "the registry was locked while a file was checked: API handlers would wait on it"
        );
        assert_eq!(changes.added, ["a", "b"]);
        assert_eq!(again.changed, ["b"]);
        assert!(registry.read().expect("lock").get("b").is_some());
    }

    #[test]
    fn only_new_or_changed_files_are_checked_again_and_names_are_still_checked_across_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yaml", A);
        write(dir.path(), "b.yaml", B);
        let mut loader = Loader::new(dir.path());
        let mut reg = Registry::new(dir.path());
        let first = reg.apply(loader.scan());
        assert_eq!((first.files, first.checked), (2, 2));
        let same = reg.apply(loader.scan());
        assert_eq!((same.files, same.checked), (2, 0));
        assert!(same.is_empty(), "{same:?}");
        // The same content written again (a new mtime) is not checked again.
        write(dir.path(), "a.yaml", A);
        assert_eq!(reg.apply(loader.scan()).checked, 0);
        // A new file that takes `a`'s name: only it is checked, and the name check still sees `a`.
        write(dir.path(), "c.yaml", A);
        let dup = reg.apply(loader.scan());
        assert_eq!((dup.files, dup.checked), (3, 1));
        assert_eq!(codes(state(&reg, "c.yaml")), ["duplicate-name"]);
        assert_eq!(codes(state(&reg, "a.yaml")), Vec::<&str>::new());
        // An edit: that file alone.
        write(dir.path(), "b.yaml", B2);
        let edit = reg.apply(loader.scan());
        assert_eq!(
            (edit.checked, edit.changed.as_slice()),
            (1, ["b".to_string()].as_slice())
        );
        // A removed file leaves the cache: brought back, it is checked again.
        std::fs::remove_file(dir.path().join("c.yaml")).expect("remove");
        assert_eq!(reg.apply(loader.scan()).checked, 0);
        write(dir.path(), "c.yaml", A);
        assert_eq!(reg.apply(loader.scan()).checked, 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_file_that_cannot_be_read_is_refused_alone_and_keeps_its_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        write(&d, "a.yaml", A);
        write(&d, "b.yaml", B);
        let mut reg = Registry::new(&d);
        let mut loader = Loader::new(&d);
        reg.apply(loader.scan());
        let good_b = reg.get("b").map(|v| v.hash.clone());

        // b.yaml can no longer be read; other entries are not files at all, or too large.
        std::fs::remove_file(d.join("b.yaml")).expect("remove");
        std::os::unix::fs::symlink("/proc/self/mem", d.join("b.yaml")).expect("symlink");
        std::os::unix::fs::symlink("missing.yaml", d.join("dangling.yaml")).expect("symlink");
        std::os::unix::fs::symlink("loop.yaml", d.join("loop.yaml")).expect("symlink");
        let fifo = std::process::Command::new("mkfifo")
            .arg(d.join("fifo.yaml"))
            .status()
            .expect("mkfifo");
        assert!(fifo.success());
        std::fs::create_dir(d.join("dir.yaml")).expect("dir");
        let big = std::fs::File::create(d.join("big.yaml")).expect("big");
        big.set_len(sources::MAX_FILE_BYTES + 1).expect("size");
        std::fs::create_dir(d.join("sub")).expect("sub");
        write(&d.join("sub"), "x.yaml", A);

        let (changes, reg, loader) = bounded(move || {
            let changes = reg.apply(loader.scan());
            (changes, reg, loader)
        });
        assert!(changes.errors.is_empty(), "{changes:?}");
        assert!(changes.removed_paths.is_empty(), "{changes:?}");
        assert_eq!(changes.skipped_dirs.len(), 1, "{changes:?}");
        assert!(reg.get("a").is_some());
        let b = state(&reg, "b.yaml");
        assert_eq!(codes(b), ["unreadable-file"], "{b:#?}");
        assert_eq!(b.active.as_ref().map(|v| v.hash.clone()), good_b);
        assert!(b.rendered.contains("/proc/self/mem"), "{}", b.rendered);
        for (file, code) in [
            ("dangling.yaml", "unreadable-file"),
            ("loop.yaml", "unreadable-file"),
            ("fifo.yaml", "not-a-file"),
            ("dir.yaml", "not-a-file"),
            ("big.yaml", "file-too-large"),
        ] {
            let f = state(&reg, file);
            assert_eq!(codes(f), [code], "{f:#?}");
            assert!(f.active.is_none());
            let d = &f.diagnostics[0];
            assert_eq!((d.pos.line, d.pos.col), (1, 1));
            assert!(d.hint.as_deref().is_some_and(|h| !h.is_empty()));
        }
        assert_eq!(changes.refused.len(), 6, "{changes:?}");

        // Nothing changed: nothing new to say, not even the skipped subdirectory.
        let (again, _, _) = bounded(move || {
            let mut reg = reg;
            let mut loader = loader;
            (reg.apply(loader.scan()), reg, loader)
        });
        assert!(again.is_empty(), "{again:?}");
    }
}
