#!/usr/bin/env bash
# A throwaway PostgreSQL server on this machine for workers on a shared study (the README's
# recipe, experiments/shared_study.py). Needs the OS package (Debian/Ubuntu:
# apt-get install postgresql) and the Python driver (pip install -e '.[postgres]').
#
#   experiments/postgres_server.sh start [DIR]   # prints the storage URL
#   experiments/postgres_server.sh stop [DIR]
#
# DIR (default $TMPDIR/jaxnn-postgres) holds the database; the port is $PGPORT (default 5433).
set -euo pipefail
action=${1:?usage: $0 start|stop [DIR]}
dir=${2:-${TMPDIR:-/tmp}/jaxnn-postgres}
port=${PGPORT:-5433}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/pg_ctl" ] || { echo "PostgreSQL not found: apt-get install postgresql" >&2; exit 2; }
# The server refuses to run as root: it then runs as the package's postgres user.
owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $action in
  start)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    [ -f "$dir/PG_VERSION" ] || owner "$bin/initdb" -D "$dir" -U postgres --auth=trust >/dev/null
    owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=localhost" start >/dev/null
    owner "$bin/createdb" -h localhost -p "$port" -U postgres jaxnn 2>/dev/null || true
    echo "postgresql+psycopg://postgres@localhost:$port/jaxnn"
    ;;
  stop)
    owner "$bin/pg_ctl" -D "$dir" -w stop
    ;;
  *)
    echo "usage: $0 start|stop [DIR]" >&2; exit 2
    ;;
esac
