#!/usr/bin/env bash
# The arrows between runner's modules run one way (ARCHITECTURE.md, "Layers"):
#   cli → daemon → web → ops → runtime → dispatch → store → engine → workflow (the core below).
# This fails when a module imports one it must not, or names a crate outside its home.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0

# forbid DIRS... -- PATTERN MESSAGE: no line in DIRS (tests after #[cfg(test)] excluded) may match.
forbid() {
  local pattern=$1 message=$2
  shift 2
  local hits
  hits=$(for f in $(find "$@" -name '*.rs' 2>/dev/null | sort); do
    awk '/^#\[cfg\(test\)\]/{exit} {print FILENAME":"FNR": "$0}' "$f"
  done | grep -E "$pattern" | grep -vE '^[^:]+:[0-9]+:\s*//' || true)
  if [ -n "$hits" ]; then
    echo "$hits" >&2
    echo "^ $message" >&2
    status=1
  fi
}

shell='store|runtime|dispatch|ops|views|web|daemon|cli|sources|metrics|testing'
core_dirs=(src/workflow src/engine src/schedule src/sign src/backoff.rs src/time.rs)

forbid "crate::($shell)\b" "the pure core (workflow, engine, schedule, sign, backoff, time) imports no shell module" "${core_dirs[@]}"
forbid "crate::(runtime|dispatch|ops|views|web|daemon|cli)\b" "store imports only the core" src/store
forbid "crate::(ops|views|web|daemon|cli)\b" "runtime and dispatch import neither ops, views, the web side, the daemon nor the CLI" src/runtime src/dispatch
forbid "crate::(web|daemon|cli)\b" "ops and views import neither the web side, the daemon nor the CLI" src/ops src/views.rs
forbid "crate::(daemon|cli)\b" "the web side imports neither the daemon nor the CLI" src/web
forbid "crate::cli\b" "the daemon does not import the CLI" src/daemon

# Crates with one home.
others=$(find src -name '*.rs' -not -path 'src/store/*' | sort)
forbid '\brusqlite\b' "rusqlite is used only under src/store/" $others
forbid '\b(tokio_postgres|deadpool_postgres)\b' "tokio-postgres and deadpool-postgres are used only under src/store/" $others
others=$(find src -name '*.rs' -not -path 'src/web/*' | sort)
forbid '\baxum\b' "axum is used only under src/web/" $others

[ $status -eq 0 ] && echo "layers: every import runs downward; rusqlite and tokio-postgres only in store/, axum only in web/"
exit $status
