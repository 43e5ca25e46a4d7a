#!/usr/bin/env bash
# Throwaway PostgreSQL 15 cluster for development and tests.
#   postgres.sh start   initdb once (as the `postgres` OS user when run as root), start, create
#                       role/database floatbridge/floatbridge, wait until pg_isready
#   postgres.sh stop    pg_ctl stop on OUR data directory only
#   postgres.sh status
# Env: FLOATBRIDGE_PG_PORT (55432), FLOATBRIDGE_PG_BIN (/usr/lib/postgresql/15/bin).
# Durability is off (fsync, synchronous_commit, full_page_writes): the data is disposable.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT="${FLOATBRIDGE_PG_PORT:-55432}"
PGBIN="${FLOATBRIDGE_PG_BIN:-/usr/lib/postgresql/15/bin}"
DB_USER=floatbridge
DB_PASS=floatbridge
DB_NAME=floatbridge

# Run as root: the server refuses to run as root, so it runs as `postgres`, which must be able to
# reach its data directory. Fall back to /tmp when the repo path is not traversable for it.
if [[ "$(id -u)" == 0 ]]; then RUN_AS=(runuser -u postgres --); else RUN_AS=(); fi

state_dir() {
  local d="$LOCAL_DIR/pg"
  if [[ "$(id -u)" == 0 ]] && id postgres >/dev/null 2>&1; then
    mkdir -p "$d"; chown postgres: "$d"
    if ! runuser -u postgres -- test -w "$d"; then
      d="/tmp/floatbridge-pg-$(echo "$REPO_ROOT" | md5sum | cut -c1-8)"
      mkdir -p "$d"; chown postgres: "$d"
    fi
  else
    mkdir -p "$d"
  fi
  echo "$d"
}

ensure_binaries() {
  if [[ ! -x "$PGBIN/initdb" ]]; then
    info "PostgreSQL binaries missing in $PGBIN, installing postgresql"
    need_apt postgresql
    # The Debian package starts its own cluster on 5432; we do not want it.
    if command -v pg_ctlcluster >/dev/null; then pg_ctlcluster 15 main stop 2>/dev/null || true; fi
  fi
  [[ -x "$PGBIN/initdb" ]] || die "initdb not found in $PGBIN (set FLOATBRIDGE_PG_BIN)"
  if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
    die "running as root but there is no 'postgres' OS user to own the cluster (apt-get install postgresql creates it)"
  fi
}

STATE="$(state_dir)"
DATA="$STATE/data"
PGLOG="$STATE/postgres.log"
ln -sfn "$PGLOG" "$LOG_DIR/postgres.log"

ready() { pg_isready_bin -q; }
pg_isready_bin() { "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PORT" "$@"; }
psql_super() { "${RUN_AS[@]}" "$PGBIN/psql" -X -q -h "$STATE" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 "$@"; }
running() { [[ -f "$DATA/postmaster.pid" ]] && "${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

init_cluster() {
  [[ -f "$DATA/PG_VERSION" ]] && return 0
  info "initdb in $DATA"
  "${RUN_AS[@]}" "$PGBIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$STATE/initdb.log" 2>&1 || { cat "$STATE/initdb.log" >&2; die "initdb failed"; }
  cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$STATE'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 128MB
CONF
}

start() {
  ensure_binaries
  if running; then
    info "already running on 127.0.0.1:$PORT (data $DATA)"
  else
    if port_open "$PORT"; then
      die "port $PORT is in use by another process (not our cluster); set FLOATBRIDGE_PG_PORT"
    fi
    init_cluster
    info "starting on 127.0.0.1:$PORT (data $DATA, log $LOG_DIR/postgres.log)"
    "${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$DATA" -l "$PGLOG" -w -t 60 start >/dev/null \
      || { tail -20 "$PGLOG" >&2; die "PostgreSQL failed to start; see $PGLOG"; }
  fi
  local i
  for i in $(seq 1 60); do ready && break; sleep 0.5; done
  ready || die "PostgreSQL not ready on 127.0.0.1:$PORT after 30s; see $PGLOG"
  psql_super <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASS';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME')\gexec
SQL
  info "ready: postgresql://$DB_USER:$DB_PASS@127.0.0.1:$PORT/$DB_NAME"
}

stop() {
  if running; then
    "${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null && info "stopped (data $DATA)"
  else
    info "not running"
  fi
}

status() {
  if running && ready; then info "running and accepting connections on 127.0.0.1:$PORT (data $DATA)"; return 0; fi
  if running; then info "running but not ready on 127.0.0.1:$PORT"; return 1; fi
  info "not running"; return 3
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
