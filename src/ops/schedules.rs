//! Programmatic schedules (`PUT /api/v1/schedules/{id}`): stored in the database, fired by the
//! scheduler like YAML schedules. Every change is also sent to the running scheduler.

use super::Workflows;
use crate::store::{ApiSchedule, ScheduleSpec, Store, StoreError};
use tokio::sync::mpsc;

/// What the scheduler is told.
#[derive(Debug)]
pub enum Change {
    /// The registry changed: re-read the YAML schedules.
    Reload,
    Upsert(ApiSchedule),
    Delete(String),
    /// Programmatic schedules may have changed without a word (another node changed them while
    /// this one was not listening): read them all again.
    ReloadSchedules,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("`{0}` is not a valid schedule id: use 1 to 128 letters, digits and `-_.:@`")]
    InvalidId(String),
    #[error("no active workflow named `{0}`")]
    NoWorkflow(String),
    #[error("invalid schedule: {0}")]
    InvalidCron(String),
    #[error("the input does not match the inputs of `{workflow}`")]
    Input {
        workflow: String,
        errors: Vec<String>,
    },
    #[error("no schedule `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where schedule changes go: the store, the workflows loaded, and the running scheduler.
pub struct Schedules<'a> {
    pub store: &'a Store,
    pub workflows: &'a dyn Workflows,
    pub changes: &'a mpsc::Sender<Change>,
}

/// A schedule as a client sends it; `input` defaults to `{}`, `paused` to what it was.
#[derive(Debug, Clone)]
pub struct PutSchedule {
    pub id: String,
    pub workflow: String,
    pub cron: String,
    pub timezone: Option<String>,
    pub input: Option<serde_json::Value>,
    pub paused: Option<bool>,
}

/// A schedule of a workflow file, as a pause or resume answers it.
#[derive(Debug, Clone)]
pub struct YamlSchedule {
    /// `workflow/index`, its `Upstash-Schedule-Id`.
    pub id: String,
    pub workflow: String,
    pub cron: crate::cron::CronSchedule,
    pub input: serde_json::Value,
    pub paused: bool,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Created,
    Replaced,
    Unchanged,
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
}

impl Schedules<'_> {
    /// Creates or replaces schedule `put.id` (idempotent: the same body again changes nothing).
    pub async fn put(&self, put: PutSchedule) -> Result<(ApiSchedule, Saved), ScheduleError> {
        if !valid_id(&put.id) {
            return Err(ScheduleError::InvalidId(put.id));
        }
        let Some(version) = self.workflows.active(&put.workflow) else {
            return Err(ScheduleError::NoWorkflow(put.workflow));
        };
        crate::cron::CronSchedule::parse(&put.cron, put.timezone.as_deref())
            .map_err(|e| ScheduleError::InvalidCron(e.to_string()))?;
        let input = put.input.unwrap_or_else(|| serde_json::json!({}));
        if let Err(errors) = crate::workflow::resolve_input(&version.workflow, &input) {
            return Err(ScheduleError::Input {
                workflow: put.workflow,
                errors,
            });
        }
        let previous = self.store.api_schedule(&put.id).await?;
        let spec = ScheduleSpec {
            id: put.id,
            workflow: put.workflow,
            cron: put.cron,
            timezone: put.timezone,
            input,
            paused: put
                .paused
                .unwrap_or_else(|| previous.as_ref().is_some_and(|p| p.paused)),
        };
        if let Some(p) = previous.filter(|p| p.spec() == spec) {
            return Ok((p, Saved::Unchanged));
        }
        let (saved, created) = self.store.save_api_schedule(spec).await?;
        let _ = self.changes.send(Change::Upsert(saved.clone())).await;
        Ok((
            saved,
            if created {
                Saved::Created
            } else {
                Saved::Replaced
            },
        ))
    }

    pub async fn delete(&self, id: &str) -> Result<(), ScheduleError> {
        if !self.store.delete_api_schedule(id).await? {
            return Err(ScheduleError::NotFound(id.to_string()));
        }
        let _ = self.changes.send(Change::Delete(id.to_string())).await;
        Ok(())
    }

    /// Pauses or resumes the schedule at `index` of workflow `workflow`'s `on.schedule` (kept
    /// across restarts and reloads, until resumed; a schedule that the file no longer has at
    /// that index keeps its pause row, harmless, and the index's next schedule starts paused).
    pub async fn set_yaml_paused(
        &self,
        workflow: &str,
        index: usize,
        paused: bool,
    ) -> Result<YamlSchedule, ScheduleError> {
        let id = format!("{workflow}/{index}");
        let Some(version) = self.workflows.active(workflow) else {
            return Err(ScheduleError::NoWorkflow(workflow.to_string()));
        };
        let Some(s) = version.workflow.schedules.get(index) else {
            return Err(ScheduleError::NotFound(id));
        };
        let key = crate::schedule::id::file_key(workflow, index);
        let signature = s.signature();
        let pause = crate::store::YamlPause {
            workflow,
            signature: &signature,
            key: &key,
        };
        self.store
            .set_yaml_paused(pause, paused, chrono::Utc::now())
            .await?;
        let _ = self.changes.send(Change::Reload).await;
        Ok(YamlSchedule {
            id,
            workflow: workflow.to_string(),
            cron: s.cron.clone(),
            input: s.input.clone(),
            paused,
        })
    }

    /// Pauses or resumes a schedule (no change when it already is).
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<ApiSchedule, ScheduleError> {
        let Some(s) = self.store.api_schedule(id).await? else {
            return Err(ScheduleError::NotFound(id.to_string()));
        };
        if s.paused == paused {
            return Ok(s);
        }
        let mut spec = s.spec();
        spec.paused = paused;
        let (saved, _) = self.store.save_api_schedule(spec).await?;
        let _ = self.changes.send(Change::Upsert(saved.clone())).await;
        Ok(saved)
    }
}

pub async fn get(store: &Store, id: &str) -> Result<ApiSchedule, ScheduleError> {
    store
        .api_schedule(id)
        .await?
        .ok_or_else(|| ScheduleError::NotFound(id.to_string()))
}

/// Schedules by id, of one workflow if given, after `after` (for paging), at most `limit`.
pub async fn list(
    store: &Store,
    workflow: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<ApiSchedule>, ScheduleError> {
    Ok(store
        .api_schedules()
        .await?
        .into_iter()
        .filter(|s| workflow.is_none_or(|w| s.workflow == w))
        .filter(|s| after.is_none_or(|a| s.id.as_str() > a))
        .take(limit)
        .collect())
}
