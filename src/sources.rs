//! Reading workflow files from disk, and checking many of them on all cores.
//!
//! I/O shell: the checks themselves are the pure `workflow` module. Used by `runner validate`,
//! `runner run`, and the daemon's registry.

use crate::workflow::{self, SourceFile};
use std::path::{Path, PathBuf};

/// Lists the workflow files of a directory (`*.yaml`, `*.yml`), sorted, not recursive.
pub fn workflow_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads files, or the workflow files of directories, as the checker's input. A file named twice
/// (`workflows/ workflows/a.yaml`, or `./a.yaml a.yaml`) is read once: it is not its own duplicate.
pub fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", path.display()))?;
        let list = if meta.is_dir() {
            workflow_files(path)
                .map_err(|e| anyhow::anyhow!("cannot list `{}`: {e}", path.display()))?
        } else {
            vec![path.clone()]
        };
        for file in list {
            if !seen.insert(std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone())) {
                continue;
            }
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", file.display()))?;
            files.push(SourceFile {
                path: file.display().to_string(),
                text: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
    }
    Ok(files)
}

/// `workflow::check_set` with the per-file checks spread over the machine's cores.
pub fn check_parallel(files: &[SourceFile]) -> workflow::CheckedSet {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads < 2 || files.len() < 16 {
        return workflow::check_set(files);
    }
    let chunk = files.len().div_ceil(threads);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|f| workflow::check_file(&f.path, &f.text))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a checker thread does not panic"))
            .collect()
    });
    workflow::check::check_names(files, results)
}
