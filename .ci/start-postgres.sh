#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 and print its URL.
# Usage: .ci/start-postgres.sh DIR PORT   (installs Debian's postgresql if the binaries are missing)
set -euo pipefail
dir=${1:-/tmp/repro-pg}
port=${2:-55432}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" postgres
rm -rf "$dir" && mkdir -p "$dir" && chown postgres "$dir"
run_as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
run_as_pg "'$bindir/initdb' -D '$dir/data' -U postgres --auth=trust -E UTF8 >'$dir/initdb.log' 2>&1"
run_as_pg "'$bindir/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w -o \"-h 127.0.0.1 -p $port -k '$dir' -c max_connections=200 -c fsync=off\" start >/dev/null"
echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
