#!/usr/bin/env bash
# The integration tests' `runner` when they run against PostgreSQL (RUNNER_TEST_BACKEND=postgres):
# every `--db FILE` becomes a database of the tests' own PostgreSQL server, named after the file's
# absolute path (so each test keeps its own database, and two commands naming one file share
# one), created on first use; then the real binary runs in this process's place (`exec`, so the
# test's kill -9 reaches runner itself).
set -euo pipefail
: "${RUNNER_TEST_REAL_BIN:?set by tests/it/support.rs}" "${RUNNER_TEST_PG:?set by tests/it/support.rs}"

pg_url() {
  case "$1" in
    postgres://*|postgresql://*) printf '%s' "$1"; return ;;
  esac
  local abs name
  abs=$(realpath -m -- "$1")
  name="t_$(printf '%s' "$abs" | sha256sum | cut -c1-24)"
  if [ -z "$(psql "$RUNNER_TEST_PG/postgres" -XtAqc "SELECT 1 FROM pg_database WHERE datname = '$name'")" ]; then
    psql "$RUNNER_TEST_PG/postgres" -XqAc "CREATE DATABASE $name" >/dev/null 2>&1 || true
  fi
  printf '%s/%s' "$RUNNER_TEST_PG" "$name"
}

args=()
next=
for a in "$@"; do
  if [ -n "$next" ]; then
    args+=("$(pg_url "$a")")
    next=
    continue
  fi
  case "$a" in
    --db) next=1; args+=("$a") ;;
    --db=*) args+=("--db=$(pg_url "${a#--db=}")") ;;
    *) args+=("$a") ;;
  esac
done
exec "$RUNNER_TEST_REAL_BIN" "${args[@]}"
