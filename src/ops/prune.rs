//! Deleting finished runs past their retention: the daemon's `--retention` and each workflow's
//! `retention: { days, runs }` (in the daemon's upkeep), or `runner prune` by hand. Runs go in
//! small batches, each its own short transaction, with a pause between them, so that the runs
//! going on are never held up for long; a run that is not finished, or still has an effect to
//! perform, is never deleted.
//!
//! I/O shell: which runs goes to the store's query, the deleting to its transaction.

use crate::store::{PruneQuery, Store, StoreError};
use crate::workflow::Retention;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Runs deleted per transaction.
pub const BATCH: u32 = 50;
/// The pause between two batches.
pub const PAUSE: Duration = Duration::from_millis(20);

/// What the daemon keeps: `global` for every workflow, unless a workflow has `days` of its own.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub global: Option<Duration>,
    pub workflows: Vec<(String, Retention)>,
}

fn days(n: u32) -> chrono::Duration {
    chrono::Duration::days(i64::from(n))
}

fn before(now: DateTime<Utc>, age: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX)
}

/// Deletes (or, with `dry_run`, counts) the runs `q` takes, at most `max`; answers how many.
pub async fn prune(
    store: &Store,
    q: &PruneQuery,
    dry_run: bool,
    max: u64,
) -> Result<u64, StoreError> {
    if dry_run {
        let limit = u32::try_from(max).unwrap_or(u32::MAX);
        return Ok(store.prunable_runs(q, limit).await?.len() as u64);
    }
    let mut done = 0;
    while done < max {
        let ids = store.prunable_runs(q, BATCH).await?;
        if ids.is_empty() {
            break;
        }
        let deleted = store.delete_runs(&ids).await?;
        done += deleted;
        if deleted == 0 {
            break; // each one changed under us (retried, or an effect queued): next pass
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(done)
}

/// The queries a policy makes, in the order they run.
pub fn queries(policy: &Policy, now: DateTime<Utc>) -> Vec<PruneQuery> {
    let mut out = Vec::new();
    for (workflow, r) in &policy.workflows {
        if let Some(d) = r.days {
            out.push(PruneQuery {
                finished_before: Some(now - days(d)),
                workflow: Some(workflow.clone()),
                ..PruneQuery::default()
            });
        }
        if let Some(n) = r.runs {
            out.push(PruneQuery {
                workflow: Some(workflow.clone()),
                keep_newest: Some(n),
                ..PruneQuery::default()
            });
        }
    }
    if let Some(age) = policy.global {
        out.push(PruneQuery {
            finished_before: Some(before(now, age)),
            except: policy
                .workflows
                .iter()
                .filter(|(_, r)| r.days.is_some())
                .map(|(w, _)| w.clone())
                .collect(),
            ..PruneQuery::default()
        });
    }
    out
}

/// One pass of the daemon's retention: at most `max` runs per query.
pub async fn by_policy(
    store: &Store,
    policy: &Policy,
    now: DateTime<Utc>,
    max: u64,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for q in queries(policy, now) {
        n += prune(store, &q, false, max).await?;
    }
    Ok(n)
}

/// The query of `runner prune --older-than AGE [--workflow W] [--keep N]`.
pub fn query(
    older_than: Option<Duration>,
    workflow: Option<String>,
    keep: Option<u32>,
    now: DateTime<Utc>,
) -> PruneQuery {
    PruneQuery {
        finished_before: older_than.map(|age| before(now, age)),
        workflow,
        except: Vec::new(),
        keep_newest: keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workflow_with_days_of_its_own_is_left_out_of_the_global_retention() {
        let now: DateTime<Utc> = "2026-12-03T00:00:00Z".parse().expect("time");
        let policy = Policy {
            global: Some(Duration::from_secs(30 * 86_400)),
            workflows: vec![
                (
                    "audit".into(),
                    Retention {
                        days: Some(365),
                        runs: None,
                    },
                ),
                (
                    "noisy".into(),
                    Retention {
                        days: None,
                        runs: Some(100),
                    },
                ),
            ],
        };
        let q = queries(&policy, now);
        assert_eq!(q.len(), 3);
        assert_eq!(q[0].workflow.as_deref(), Some("audit"));
        assert_eq!(q[0].finished_before, Some(now - days(365)));
        assert_eq!(
            (q[1].workflow.as_deref(), q[1].keep_newest),
            (Some("noisy"), Some(100))
        );
        assert_eq!(q[1].finished_before, None);
        assert_eq!(q[2].workflow, None);
        assert_eq!(q[2].finished_before, Some(now - days(30)));
        assert_eq!(
            q[2].except,
            ["audit"],
            "noisy keeps 100 and also ages out globally"
        );
        assert!(
            queries(&Policy::default(), now).is_empty(),
            "nothing without a policy"
        );
    }
}
