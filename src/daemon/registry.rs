//! The workflows directory as the daemon sees it: the active (last good) version of each file,
//! and the diagnostics of files that fail the checker.
//!
//! One reload path: the file watcher and SIGHUP both call [`Registry::reload`], which checks the
//! whole directory with the same checker as `runner validate` and diffs it against what was active.

use crate::store::Version;
use crate::workflow::{self, Diagnostic, SourceFile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    pub errors: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.refused.is_empty()
            && self.errors.is_empty()
    }
}

#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
}

impl Registry {
    pub fn new(dir: &Path) -> Registry {
        Registry {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads and re-checks the directory; returns what changed.
    pub fn reload(&mut self) -> Changes {
        let mut changes = Changes::default();
        let sources: Vec<SourceFile> = if self.dir.is_dir() {
            match crate::sources::read_sources(std::slice::from_ref(&self.dir)) {
                Ok(s) => s,
                Err(e) => {
                    changes.errors.push(format!("{e:#}"));
                    return changes;
                }
            }
        } else {
            changes.errors.push(format!(
                "the workflows directory `{}` does not exist",
                self.dir.display()
            ));
            Vec::new()
        };
        let checked = workflow::check_set(&sources);
        let before: BTreeMap<String, Option<String>> = self
            .files
            .iter()
            .map(|(p, f)| {
                (
                    p.clone(),
                    f.active
                        .as_ref()
                        .map(|v| v.workflow.name.clone() + "@" + &v.hash),
                )
            })
            .collect();
        let mut next: BTreeMap<String, FileState> = BTreeMap::new();
        for (file, result) in sources.iter().zip(checked.results) {
            let previous = self.files.get(&file.path);
            let state = match result {
                Ok(wf) => FileState {
                    path: file.path.clone(),
                    active: Some(Version::new(&file.path, &file.text, wf)),
                    diagnostics: Vec::new(),
                    rendered: String::new(),
                },
                Err(diags) => {
                    let rendered = crate::workflow::render(
                        &diags,
                        std::slice::from_ref(file),
                        crate::workflow::Format::Human,
                        1,
                    );
                    let unchanged = previous.is_some_and(|p| p.diagnostics == diags);
                    if !unchanged {
                        changes.refused.push((file.path.clone(), rendered.clone()));
                    }
                    FileState {
                        path: file.path.clone(),
                        active: previous.and_then(|p| p.active.clone()),
                        diagnostics: diags,
                        rendered,
                    }
                }
            };
            next.insert(file.path.clone(), state);
        }
        for (path, state) in &next {
            let now = state
                .active
                .as_ref()
                .map(|v| v.workflow.name.clone() + "@" + &v.hash);
            if let Some(v) = &state.active
                && before.get(path) != Some(&now)
            {
                changes.activated.push((path.clone(), v.clone()));
            }
            match (before.get(path), now) {
                (None, Some(n)) | (Some(None), Some(n)) => changes
                    .added
                    .push(n.split('@').next().unwrap_or_default().to_string()),
                (Some(Some(a)), Some(b)) if *a != b => changes
                    .changed
                    .push(b.split('@').next().unwrap_or_default().to_string()),
                _ => {}
            }
        }
        for (path, b) in &before {
            if next.contains_key(path) {
                continue;
            }
            changes.removed_paths.push(path.clone());
            if let Some(b) = b {
                changes
                    .removed
                    .push(b.split('@').next().unwrap_or_default().to_string());
            }
        }
        self.files = next;
        changes
    }

    /// After a restart, a file whose content fails the checker has no version in force yet:
    /// gives it the last good one, `last_good(path)` answering its (path, source) from the
    /// database, as a daemon that kept running would have kept it. Answers the restored names.
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
