//! Reading workflow files from disk, and checking many of them on all cores.
//!
//! I/O shell: the checks themselves are the pure `workflow` module. Used by `runner validate`,
//! `runner run`, and the daemon's registry.
//!
//! A file that cannot be read is a diagnostic of that file (at 1:1), never an error of the whole
//! directory: one unreadable `*.yaml` must not hide the others. Reading never blocks on a FIFO
//! and never reads more than one byte past [`MAX_FILE_BYTES`] of a file.

use crate::workflow::{self, Code, Diagnostic, SourceFile, yaml::Pos};
use std::path::{Path, PathBuf};

/// The largest workflow file that is read (1 MiB); a larger one is refused with `file-too-large`.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// What [`read_sources`] found.
#[derive(Default)]
pub struct Sources {
    /// The files that were read, in path order.
    pub files: Vec<SourceFile>,
    /// One diagnostic (at 1:1) for each workflow file that could not be read.
    pub refused: Vec<Diagnostic>,
    /// Subdirectories that hold `*.yaml`/`*.yml` files and were not read (not recursive).
    pub skipped_dirs: Vec<PathBuf>,
}

impl Sources {
    /// How many workflow files were found, read or not.
    pub fn count(&self) -> usize {
        self.files.len() + self.refused.len()
    }
}

/// A directory's workflow entries, not recursive.
pub struct Listing {
    /// Entries named `*.yaml` or `*.yml` of any type (a directory or a FIFO of that name is still
    /// an entry, refused when read), sorted.
    pub files: Vec<PathBuf>,
    /// Other subdirectories that hold `*.yaml`/`*.yml` entries, sorted.
    pub skipped_dirs: Vec<PathBuf>,
}

fn is_workflow_name(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Lists a directory's workflow entries. Errs only when the directory itself cannot be listed.
pub fn list_dir(dir: &Path) -> std::io::Result<Listing> {
    let mut files = Vec::new();
    let mut skipped_dirs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        if is_workflow_name(&path) {
            files.push(path);
        } else if path.is_dir() && holds_workflow_files(&path) {
            skipped_dirs.push(path);
        }
    }
    files.sort();
    skipped_dirs.sort();
    Ok(Listing {
        files,
        skipped_dirs,
    })
}

fn holds_workflow_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| is_workflow_name(&e.path()))
    })
}

/// Reads files, or the workflow files of directories, as the checker's input. A file named twice
/// (`workflows/ workflows/a.yaml`, or `./a.yaml a.yaml`) is read once: it is not its own duplicate.
/// Errs only for a path that does not exist or a directory that cannot be listed; a file that
/// cannot be read is in [`Sources::refused`].
pub fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Sources> {
    let mut out = Sources::default();
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        std::fs::symlink_metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", path.display()))?;
        let list = if path.is_dir() {
            let listing = list_dir(path)
                .map_err(|e| anyhow::anyhow!("cannot list `{}`: {e}", path.display()))?;
            out.skipped_dirs.extend(listing.skipped_dirs);
            listing.files
        } else {
            vec![path.clone()]
        };
        for file in list {
            if !seen.insert(std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone())) {
                continue;
            }
            let shown = file.display().to_string();
            match read_file(&file) {
                Ok(text) => out.files.push(SourceFile { path: shown, text }),
                Err(d) => out.refused.push(d),
            }
        }
    }
    Ok(out)
}

/// Reads one workflow file: its text, or the diagnostic that refuses it. Checks the file type
/// before opening (a FIFO would block the open), opens without blocking and checks again on the
/// open file (it may have been replaced meanwhile), and reads at most [`MAX_FILE_BYTES`] + 1.
pub fn read_file(path: &Path) -> Result<String, Diagnostic> {
    use std::io::Read;
    let shown = path.display().to_string();
    let link = std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_symlink())
        .map(|_| std::fs::read_link(path).map_or_else(|_| "?".into(), |t| t.display().to_string()));
    let refuse = |code, message: String, hint: &str| Diagnostic {
        file: shown.clone(),
        pos: Pos::START,
        width: 1,
        code,
        message,
        hint: Some(hint.to_string()),
    };
    let unreadable = |e: &std::io::Error| {
        let (why, hint) = describe_io_error(e, link.is_some());
        let message = match &link {
            Some(target) => {
                format!("cannot read `{shown}` (a symbolic link to `{target}`): {why}")
            }
            None => format!("cannot read `{shown}`: {why}"),
        };
        refuse(Code::UnreadableFile, message, hint)
    };
    let not_a_file = |kind: &str| {
        let message = match &link {
            Some(target) => format!(
                "`{shown}` is a symbolic link to {kind} (`{target}`), not to a regular file"
            ),
            None => format!("`{shown}` is {kind}, not a regular file"),
        };
        let hint = if kind == "a directory" {
            "runner reads only the files directly in the workflows directory, never subdirectories; \
             rename this one so that its name does not end in `.yaml` or `.yml`"
        } else {
            "a workflow is a regular file (or a symbolic link to one); replace this entry with one, or remove it"
        };
        refuse(Code::NotAFile, message, hint)
    };
    let too_large = |len: Option<u64>| {
        let size = len.map_or_else(|| "larger".to_string(), |n| format!("{n} bytes"));
        refuse(
            Code::FileTooLarge,
            format!(
                "`{shown}` is {size}; a workflow file may be at most {MAX_FILE_BYTES} bytes (1 MiB)"
            ),
            "split it into several workflows, or keep large data out of the file (runner reads and checks it on every reload)",
        )
    };

    let meta = std::fs::metadata(path).map_err(|e| unreadable(&e))?;
    if let Some(kind) = non_file_kind(&meta) {
        return Err(not_a_file(kind));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(Some(meta.len())));
    }
    let file = open_nonblocking(path).map_err(|e| unreadable(&e))?;
    let meta = file.metadata().map_err(|e| unreadable(&e))?;
    if let Some(kind) = non_file_kind(&meta) {
        return Err(not_a_file(kind));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).saturating_add(1));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(&e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(None));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// What a non-regular file is, in words (None for a regular file).
fn non_file_kind(meta: &std::fs::Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a named pipe (FIFO)");
        }
        if t.is_socket() {
            return Some("a socket");
        }
        if t.is_char_device() || t.is_block_device() {
            return Some("a device");
        }
    }
    Some("a special file")
}

/// Opens for reading without waiting: a FIFO that replaced the file after its type was checked
/// would otherwise block the open until a writer comes.
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    options.open(path)
}

/// A reason in words, and a hint, for an error opening or reading a file.
fn describe_io_error(e: &std::io::Error, is_link: bool) -> (String, &'static str) {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return (
            "too many levels of symbolic links (a link that leads back to itself?)".into(),
            "point the link at a workflow file, or remove it",
        );
    }
    match e.kind() {
        std::io::ErrorKind::NotFound if is_link => (
            "the file it points to does not exist".into(),
            "point the link at an existing workflow file, or remove it",
        ),
        std::io::ErrorKind::PermissionDenied => (
            "permission denied".into(),
            "make the file readable by the user runner runs as, or remove it",
        ),
        _ => (
            e.to_string(),
            "make it a readable workflow file, or remove it",
        ),
    }
}

/// Maps `f` over `items` on up to 8 of the machine's cores, keeping the order (one thread for
/// fewer than 16 items, where threads cost more than they save).
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads < 2 || items.len() < 16 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a checker thread does not panic"))
            .collect()
    })
}

/// `workflow::check_set` with the per-file checks spread over the machine's cores.
pub fn check_parallel(files: &[SourceFile]) -> workflow::CheckedSet {
    let results = par_map(files, |f| workflow::check_file(&f.path, &f.text));
    workflow::check::check_names(files, results)
}
