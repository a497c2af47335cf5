//! runner's integration tests, in one test binary: the real binary, real SQLite files, real
//! HTTP servers on 127.0.0.1 and the real `@upstash/qstash` Receiver.

mod approval;
mod calls;
mod cluster;
mod completions;
mod crash;
mod daemon;
mod dry_run;
mod engine;
mod events;
mod files;
mod flow;
mod graph;
mod http_edges;
mod keys;
mod outage;
mod pg;
mod prune;
mod qstash_api;
mod run_keys;
mod schedule_ids;
mod scheduler;
mod sign_interop;
mod support;
mod tls;
mod validate;
