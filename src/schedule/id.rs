//! The ids of a schedule. The public one is what receivers get as `Upstash-Schedule-Id`, what
//! each run it starts keeps (`Run::schedule_id`) and what `runner runs --schedule` and
//! `GET /api/v1/runs?schedule=` take: a programmatic schedule's own id (`sum-u1` for
//! `PUT /api/v1/schedules/sum-u1`), or `{workflow}/{index}` for the schedule at `index` (from 0)
//! of a workflow file's `schedules`. The two never collide: neither a workflow name nor a
//! programmatic id has a `/`. The scheduler's internal key (the `runs.schedule` and
//! `slots.schedule` columns) prefixes the kind: `api:{id}`, `yaml:{workflow}:{index}`.
//!
//! Part of the pure core: no I/O.

/// The internal key of the schedule at `index` of workflow `workflow`'s file.
pub fn file_key(workflow: &str, index: usize) -> String {
    format!("yaml:{workflow}:{index}")
}

/// The internal key of programmatic schedule `id`.
pub fn api_key(id: &str) -> String {
    format!("api:{id}")
}

/// The public id of the schedule with internal key `key` (None for a key of no known kind).
pub fn public_of_key(key: &str) -> Option<String> {
    if let Some(id) = key.strip_prefix("api:") {
        return Some(id.to_string());
    }
    let (workflow, index) = key.strip_prefix("yaml:")?.rsplit_once(':')?;
    Some(format!("{workflow}/{index}"))
}

/// The internal key of the schedule with public id `id`.
pub fn key_of_public(id: &str) -> String {
    match id
        .rsplit_once('/')
        .and_then(|(workflow, index)| Some((workflow, index.parse::<usize>().ok()?)))
    {
        Some((workflow, index)) => file_key(workflow, index),
        None => api_key(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ids_and_keys_map_both_ways() {
        for (public, key) in [
            ("sum-u1", "api:sum-u1"),
            ("weekly:0", "api:weekly:0"),
            ("a.b@c:d", "api:a.b@c:d"),
            ("weekly/0", "yaml:weekly:0"),
            ("weekly-summary/12", "yaml:weekly-summary:12"),
        ] {
            assert_eq!(key_of_public(public), key, "{public}");
            assert_eq!(public_of_key(key).as_deref(), Some(public), "{key}");
        }
        assert_eq!(file_key("weekly", 3), "yaml:weekly:3");
        assert_eq!(api_key("x"), "api:x");
        assert_eq!(public_of_key("other"), None);
        // Not a file schedule's form: no programmatic schedule can be named so, and none matches.
        assert_eq!(key_of_public("weekly/x"), "api:weekly/x");
    }
}
