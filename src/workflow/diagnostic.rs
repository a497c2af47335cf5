//! Diagnostics are data; rendering is a separate, small function so output is byte-stable.
//!
//! Part of the pure core: no I/O.

use super::yaml::Pos;
use serde::Serialize;

/// What kind of problem a diagnostic reports. The string form is stable: users grep for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    YamlSyntax,
    NotAMapping,
    UnknownKey,
    MissingKey,
    WrongType,
    EmptyValue,
    InvalidName,
    DuplicateName,
    DuplicateStepId,
    InvalidStepId,
    StepKind,
    InvalidValue,
    InvalidCron,
    CronSeconds,
    CronNeverFires,
    InvalidTimezone,
    InvalidDuration,
    InvalidUrl,
    InvalidEmail,
    InvalidMethod,
    InvalidInput,
    TemplateSyntax,
    UndeclaredInput,
    UndeclaredSecret,
    UnknownStep,
    LaterStep,
    UnknownField,
    HyphenatedStepId,
    UnknownVariable,
    UnknownFilter,
    NoTrigger,
    /// The file could not be opened or read (permissions, I/O error, a dangling symbolic link).
    UnreadableFile,
    /// The path is a directory, a FIFO, a socket or a device, not a regular file.
    NotAFile,
    /// The file is larger than the shell reads (`sources::MAX_FILE_BYTES`).
    FileTooLarge,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::YamlSyntax => "yaml-syntax",
            Code::NotAMapping => "not-a-mapping",
            Code::UnknownKey => "unknown-key",
            Code::MissingKey => "missing-key",
            Code::WrongType => "wrong-type",
            Code::EmptyValue => "empty-value",
            Code::InvalidName => "invalid-name",
            Code::DuplicateName => "duplicate-name",
            Code::DuplicateStepId => "duplicate-step-id",
            Code::InvalidStepId => "invalid-step-id",
            Code::StepKind => "step-kind",
            Code::InvalidValue => "invalid-value",
            Code::InvalidCron => "invalid-cron",
            Code::CronSeconds => "cron-seconds",
            Code::CronNeverFires => "cron-never-fires",
            Code::InvalidTimezone => "invalid-timezone",
            Code::InvalidDuration => "invalid-duration",
            Code::InvalidUrl => "invalid-url",
            Code::InvalidEmail => "invalid-email",
            Code::InvalidMethod => "invalid-method",
            Code::InvalidInput => "invalid-input",
            Code::TemplateSyntax => "template-syntax",
            Code::UndeclaredInput => "undeclared-input",
            Code::UndeclaredSecret => "undeclared-secret",
            Code::UnknownStep => "unknown-step",
            Code::LaterStep => "later-step",
            Code::UnknownField => "unknown-field",
            Code::HyphenatedStepId => "hyphenated-step-id",
            Code::UnknownVariable => "unknown-variable",
            Code::UnknownFilter => "unknown-filter",
            Code::NoTrigger => "no-trigger",
            Code::UnreadableFile => "unreadable-file",
            Code::NotAFile => "not-a-file",
            Code::FileTooLarge => "file-too-large",
        }
    }
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub pos: Pos,
    /// How many characters the caret underlines (at least 1).
    pub width: usize,
    pub code: Code,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn sort_key(&self) -> (String, u32, u32, Code, String) {
        (
            self.file.clone(),
            self.pos.line,
            self.pos.col,
            self.code,
            self.message.clone(),
        )
    }
}

/// Sorts by file, line, column; drops exact duplicates.
pub fn sort(diags: &mut Vec<Diagnostic>) {
    diags.sort_by_key(Diagnostic::sort_key);
    diags.dedup();
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

/// Edit distance counting a swap of two neighbours as one edit (optimal string alignment),
/// for "did you mean" hints: `fecth` is one edit from `fetch`.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The closest candidate within a distance that scales with the word's length.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("metod", ["method", "url", "headers"]),
            Some("method")
        );
        assert_eq!(did_you_mean("zzz", ["method", "url"]), None);
        assert_eq!(did_you_mean("fecth", ["fetch", "send"]), Some("fetch"));
    }
}

/// How `runner validate` prints diagnostics.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
    Github,
}

/// The output of `runner validate` for a set of diagnostics (also the daemon's log of a refused
/// file, and the snapshot tests).
pub fn render(
    diags: &[Diagnostic],
    files: &[super::SourceFile],
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
