#!/usr/bin/env bash
# The pure core (parsing, checking, cron, templates, signing, the run state machine) does no I/O.
# This fails when a core module names an I/O crate or std's I/O modules.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s globstar nullglob
# Whole folders: every file under src/workflow/, src/engine/, src/schedule/ and src/sign/ is core.
core=(src/workflow/**/*.rs src/engine/**/*.rs src/schedule/**/*.rs src/sign/**/*.rs src/backoff.rs src/time.rs src/flow.rs)
pattern='\b(tokio|reqwest|rusqlite|axum|tower_http|hyper|lettre|notify|notify_debouncer_full|std::fs|std::net|std::process|std::thread|std::io::stdin|tracing|rand|uuid)::|SystemTime::now|Utc::now|Instant::now|Local::now'
status=0
for f in "${core[@]}"; do
  # Tests beside the code (after `#[cfg(test)]`, or a `*_tests.rs` file of them) may use the clock.
  case "$f" in *_tests.rs) continue ;; esac
  if awk '/^#\[cfg\(test\)\]/{exit} {print FILENAME":"FNR": "$0}' "$f" | grep -E "$pattern" | grep -vE '^[^:]+:[0-9]+:\s*//' ; then
    echo "^ $f is part of the pure core and must not do I/O (see ARCHITECTURE.md)" >&2
    status=1
  fi
  if ! head -20 "$f" | grep -qi "no I/O"; then
    echo "$f: the module doc must say it is part of the pure core (\"no I/O\")" >&2
    status=1
  fi
done
[ $status -eq 0 ] && echo "core purity: ${#core[@]} modules, no I/O crates"
exit $status
