//! Schedules, the pure part: cron expressions in a zone with Vixie DST semantics (`cron`), and
//! the policy for firing them: due and missed slots, catch-up, overlap, jitter (`policy`), and
//! their ids (`id`).
//!
//! Part of the pure core: no I/O. The scheduler that fires them is `daemon::scheduler`.

pub mod cron;
pub mod id;
pub mod policy;
