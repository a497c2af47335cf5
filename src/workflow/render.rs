//! Diagnostics as `runner validate` prints them: human (a snippet with a caret, and the hint),
//! JSON, and GitHub Actions annotations. Small, separate functions, so the output is
//! byte-stable and snapshot-tested.
//!
//! Part of the pure core: no I/O (the caller prints the text).

use super::SourceFile;
use super::diagnostic::Diagnostic;
use serde::Serialize;

/// How `runner validate` prints diagnostics.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Github,
}

/// The output of `runner validate` for a set of diagnostics (also the daemon's log of a refused
/// file, and the snapshot tests).
pub fn render(
    diags: &[Diagnostic],
    files: &[SourceFile],
    format: Format,
    checked: usize,
) -> String {
    match format {
        Format::Json => {
            let mut s = render_json(diags);
            s.push('\n');
            s
        }
        Format::Github => diags.iter().map(|d| render_github(d) + "\n").collect(),
        Format::Human => {
            let mut out = String::new();
            for d in diags {
                let source = files
                    .iter()
                    .find(|f| f.path == d.file)
                    .map(|f| f.text.as_str());
                out.push_str(&render_human(d, source));
                out.push('\n');
            }
            let bad_files = diags
                .iter()
                .map(|d| &d.file)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            let files_word = if checked == 1 { "file" } else { "files" };
            if diags.is_empty() {
                out.push_str(&format!("checked {checked} {files_word}: no problems\n"));
            } else {
                let problems = if diags.len() == 1 {
                    "problem"
                } else {
                    "problems"
                };
                out.push_str(&format!(
                    "checked {checked} {files_word}: {} {problems} in {bad_files} {}\n",
                    diags.len(),
                    if bad_files == 1 { "file" } else { "files" }
                ));
            }
            out
        }
    }
}

/// `path:line:col: error[CODE]: message`, a snippet with a caret, and the hint.
/// `source` is the text of `d.file` (None when it could not be read).
pub fn render_human(d: &Diagnostic, source: Option<&str>) -> String {
    let mut out = format!(
        "{}:{}:{}: error[{}]: {}\n",
        d.file,
        d.pos.line,
        d.pos.col,
        d.code.as_str(),
        d.message
    );
    let line_text = source.and_then(|s| s.lines().nth(d.pos.line.saturating_sub(1) as usize));
    let gutter = d.pos.line.to_string().len();
    let pad = " ".repeat(gutter);
    if let Some(text) = line_text {
        let text = text.replace('\t', " ");
        let caret_pad: String = text
            .chars()
            .take(d.pos.col.saturating_sub(1) as usize)
            .map(|_| ' ')
            .collect();
        out.push_str(&format!("{pad} |\n"));
        out.push_str(&format!("{} | {}\n", d.pos.line, text.trim_end()));
        out.push_str(&format!(
            "{pad} | {caret_pad}{}\n",
            "^".repeat(d.width.max(1))
        ));
    }
    if let Some(hint) = &d.hint {
        out.push_str(&format!("{pad} = hint: {hint}\n"));
    }
    out
}

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    file: &'a str,
    line: u32,
    column: u32,
    end_column: u32,
    severity: &'static str,
    code: &'static str,
    message: &'a str,
    hint: Option<&'a str>,
}

/// A stable JSON array: one object per diagnostic, keys in a fixed order.
pub fn render_json(diags: &[Diagnostic]) -> String {
    let items: Vec<JsonDiagnostic> = diags
        .iter()
        .map(|d| JsonDiagnostic {
            file: &d.file,
            line: d.pos.line,
            column: d.pos.col,
            end_column: d.pos.col + u32::try_from(d.width.max(1)).unwrap_or(1),
            severity: "error",
            code: d.code.as_str(),
            message: &d.message,
            hint: d.hint.as_deref(),
        })
        .collect();
    serde_json::to_string_pretty(&items).expect("diagnostics serialize to JSON")
}

/// GitHub Actions workflow command: `::error file=…,line=…,col=…,title=…::message`.
pub fn render_github(d: &Diagnostic) -> String {
    let mut message = d.message.clone();
    if let Some(hint) = &d.hint {
        message.push_str(&format!(" (hint: {hint})"));
    }
    format!(
        "::error file={},line={},col={},endColumn={},title=runner {}::{}",
        escape_property(&d.file),
        d.pos.line,
        d.pos.col,
        d.pos.col + u32::try_from(d.width.max(1)).unwrap_or(1),
        d.code.as_str(),
        escape_data(&message)
    )
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::diagnostic::Code;
    use crate::workflow::yaml::Pos;

    fn diag() -> Diagnostic {
        Diagnostic {
            file: "workflows/a.yaml".into(),
            pos: Pos {
                line: 2,
                col: 5,
                offset: None,
            },
            width: 5,
            code: Code::UnknownKey,
            message: "unknown key `metod` in `http`".into(),
            hint: Some("did you mean `method`?".into()),
        }
    }

    #[test]
    fn human_rendering_has_snippet_caret_and_hint() {
        let src = "http:\n    metod: POST\n";
        assert_eq!(
            render_human(&diag(), Some(src)),
            "workflows/a.yaml:2:5: error[unknown-key]: unknown key `metod` in `http`\n  |\n2 |     metod: POST\n  |     ^^^^^\n  = hint: did you mean `method`?\n"
        );
    }

    #[test]
    fn github_rendering_escapes() {
        let mut d = diag();
        d.file = "a,b:c.yaml".into();
        d.message = "50% bad\nnews".into();
        d.hint = None;
        assert_eq!(
            render_github(&d),
            "::error file=a%2Cb%3Ac.yaml,line=2,col=5,endColumn=10,title=runner unknown-key::50%25 bad%0Anews"
        );
    }
}
