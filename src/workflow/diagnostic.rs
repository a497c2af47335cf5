//! Diagnostics are data: a code, a position, a width, a message and a hint. Rendering them is
//! `render.rs`; "did you mean" is `suggest.rs`.
//!
//! Part of the pure core: no I/O.

use super::yaml::Pos;
use serde::Serialize;

/// What kind of problem a diagnostic reports. The string form is stable: users grep for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    YamlSyntax,
    YamlLimit,
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
    OptionalInputWithoutDefault,
    UndeclaredSecret,
    /// A secret where it would be stored and shown: an approval's subject or body.
    SecretInApproval,
    UnknownStep,
    LaterStep,
    /// A template reads an earlier step that is not upstream of it (a sibling that may still be
    /// running when this step starts).
    NotUpstream,
    /// `needs` names an unknown, later or the same step.
    BadNeeds,
    /// A header runner sets itself (`Upstash-*`, `Idempotency-Key`, `Runner-*`).
    ReservedHeader,
    /// `foreach` where it cannot be (a kind other than `http` and `email`), or its keys
    /// (`as`, `key`, `max_parallel`, `fail_fast`) without it.
    BadForeach,
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
    /// A `call` step names a workflow the directory does not have.
    UnknownWorkflow,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::YamlSyntax => "yaml-syntax",
            Code::YamlLimit => "yaml-limit",
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
            Code::OptionalInputWithoutDefault => "optional-input-without-default",
            Code::UndeclaredSecret => "undeclared-secret",
            Code::SecretInApproval => "secret-in-approval",
            Code::UnknownStep => "unknown-step",
            Code::LaterStep => "later-step",
            Code::NotUpstream => "not-upstream",
            Code::BadNeeds => "bad-needs",
            Code::BadForeach => "bad-foreach",
            Code::ReservedHeader => "reserved-header",
            Code::UnknownField => "unknown-field",
            Code::HyphenatedStepId => "hyphenated-step-id",
            Code::UnknownVariable => "unknown-variable",
            Code::UnknownFilter => "unknown-filter",
            Code::NoTrigger => "no-trigger",
            Code::UnreadableFile => "unreadable-file",
            Code::NotAFile => "not-a-file",
            Code::FileTooLarge => "file-too-large",
            Code::UnknownWorkflow => "unknown-workflow",
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
