//! TEMPORARY STUB — replaced by the real module.
use chrono::{DateTime, NaiveDateTime, Utc};
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CronError {
    #[error("6 fields: {fields}")]
    SecondsField { fields: usize },
    #[error("{message}")]
    Syntax { message: String },
    #[error("unknown zone {name}")]
    UnknownTimezone { name: String, suggestion: Option<String> },
    #[error("conflict")]
    ConflictingTimezone { prefix: String, field: String },
    #[error("never fires")]
    NeverFires,
    #[error("empty")]
    Empty,
}
#[derive(Debug, Clone)]
pub struct CronSchedule { expr: String, tz: chrono_tz::Tz }
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot { pub at: DateTime<Utc>, pub nominal: NaiveDateTime }
impl CronSchedule {
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Self, CronError> {
        let tz = timezone.unwrap_or("UTC").parse().map_err(|_| CronError::UnknownTimezone { name: timezone.unwrap_or("").into(), suggestion: None })?;
        Ok(Self { expr: expr.into(), tz })
    }
    pub fn timezone(&self) -> chrono_tz::Tz { self.tz }
    pub fn expression(&self) -> &str { &self.expr }
    pub fn slots_after(&self, _after: DateTime<Utc>) -> impl Iterator<Item = Slot> + '_ { std::iter::empty() }
}
