//! Workflow names (unique across the files of a directory) and the shapes of names and ids.
//!
//! Part of the pure core: no I/O.

use super::Checker;
use super::{CheckedSet, SourceFile};
use crate::workflow::diagnostic::{Code, Diagnostic};
use crate::workflow::model::Workflow;
use crate::workflow::yaml::{self, Node, Pos};
use std::collections::BTreeMap;

/// The cross-file part of [`check_set`](super::check_set): `results[i]` is `check_file` of `files[i]` (the shell may
/// compute them on several threads).
pub fn check_names(
    files: &[SourceFile],
    results: Vec<Result<Workflow, Vec<Diagnostic>>>,
) -> CheckedSet {
    let mut results = results;
    let mut first_by_name: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..files.len() {
        let Ok(wf) = &results[i] else { continue };
        let name = wf.name.clone();
        match first_by_name.get(&name) {
            None => {
                first_by_name.insert(name, i);
            }
            Some(&first) => {
                let (pos, width) = name_position(&files[i].text);
                let d = Diagnostic {
                    file: files[i].path.clone(),
                    pos,
                    width,
                    code: Code::DuplicateName,
                    message: format!("workflow name `{name}` is already used by `{}`", files[first].path),
                    hint: Some("workflow names must be unique in the directory; rename one of them with `name:`".into()),
                };
                results[i] = Err(vec![d]);
            }
        }
    }
    CheckedSet { results }
}

fn name_position(text: &str) -> (Pos, usize) {
    if let Ok(root) = yaml::parse(text)
        && let Some(entries) = root.as_map()
        && let Some((_, v)) = entries.iter().find(|(k, _)| k.name == "name")
    {
        return (v.pos, v.as_str().map_or(1, |s| s.chars().count()));
    }
    (Pos::START, 1)
}

/// The file name without directories and extension.
pub fn file_stem(path: &str) -> String {
    let base = path.rsplit(['/', '\\']).next().unwrap_or(path);
    base.strip_suffix(".yaml")
        .or_else(|| base.strip_suffix(".yml"))
        .unwrap_or(base)
        .to_string()
}

impl Checker<'_> {
    pub(super) fn name(&mut self, node: &Node) -> Option<String> {
        let s = self.nonempty_string(node, "name")?;
        if valid_name(s) {
            Some(s.to_string())
        } else {
            let w = self.width(node);
            self.error(node.pos, w, Code::InvalidName, format!("`{s}` is not a valid workflow name"), Some("use letters, digits, `-`, `_` and `.` (it appears in URLs and on the command line)".into()));
            None
        }
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.len() <= 100
}

pub(super) fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn valid_step_id(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && s.len() <= 64
}
