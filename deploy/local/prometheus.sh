#!/usr/bin/env bash
# Our own Prometheus server (never the Debian system service) for development and tests.
#   prometheus.sh start [CONFIG]   start on 127.0.0.1:$FLOATBRIDGE_PROM_PORT with CONFIG
#   prometheus.sh stop | status
# Config: argument, else $FLOATBRIDGE_PROM_CONFIG, else deploy/prometheus/prometheus.yml when present,
# else a generated minimal config that scrapes only Prometheus itself. Storage: .local/prometheus.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT="${FLOATBRIDGE_PROM_PORT:-19090}"
STATE="$LOCAL_DIR/prometheus"
PIDFILE="$STATE/prometheus.pid"
LOG="$LOG_DIR/prometheus.log"

ensure_binaries() {
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    info "prometheus/promtool missing, installing the Debian package"
    need_apt prometheus
    # The package enables and starts a system service on :9090; we run our own instead.
    if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
      systemctl stop prometheus || true
      systemctl disable prometheus >/dev/null 2>&1 || true
    elif command -v service >/dev/null; then
      service prometheus stop >/dev/null 2>&1 || true
    fi
  fi
  command -v prometheus >/dev/null || die "prometheus binary not found after install"
}

pick_config() {
  local cfg="${1:-${FLOATBRIDGE_PROM_CONFIG:-}}"
  if [[ -z "$cfg" && -f "$REPO_ROOT/deploy/prometheus/prometheus.yml" ]]; then
    cfg="$REPO_ROOT/deploy/prometheus/prometheus.yml"
  fi
  if [[ -z "$cfg" ]]; then
    cfg="$STATE/prometheus.yml"
    cat >"$cfg" <<YML
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:$PORT"]
YML
  fi
  [[ -f "$cfg" ]] || die "Prometheus config $cfg not found"
  echo "$cfg"
}

ready() {
  python3 - "$PORT" <<'PYEOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/-/ready", timeout=2).read()
PYEOF
}

start() {
  if pid_alive "$PIDFILE"; then info "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"; return 0; fi
  port_open "$PORT" && die "port $PORT is in use by another process (not started by this script); set FLOATBRIDGE_PROM_PORT"
  ensure_binaries
  mkdir -p "$STATE/data"
  local cfg
  cfg="$(pick_config "${1:-}")"
  if command -v promtool >/dev/null; then
    promtool check config "$cfg" >>"$LOG" 2>&1 || { tail -20 "$LOG" >&2; die "promtool rejected $cfg"; }
  fi
  info "starting on 127.0.0.1:$PORT with $cfg (log $LOG)"
  # Rule files in the config are resolved relative to the config file, so run from its folder.
  cd "$(dirname "$cfg")"
  setsid prometheus --config.file="$cfg" --storage.tsdb.path="$STATE/data" \
    --storage.tsdb.retention.time=1d --web.listen-address="127.0.0.1:$PORT" --web.enable-lifecycle \
    >>"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  cd "$REPO_ROOT"
  local i
  for i in $(seq 1 60); do
    ready && { info "ready on http://127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; return 0; }
    pid_alive "$PIDFILE" || { tail -20 "$LOG" >&2; rm -f "$PIDFILE"; die "Prometheus exited during start-up; see $LOG"; }
    sleep 0.5
  done
  die "Prometheus not ready on 127.0.0.1:$PORT after 30s; see $LOG"
}

status() {
  if pid_alive "$PIDFILE" && ready; then info "running (pid $(cat "$PIDFILE")) on http://127.0.0.1:$PORT"; return 0; fi
  pid_alive "$PIDFILE" && { info "running (pid $(cat "$PIDFILE")) but not ready"; return 1; }
  info "not running"; return 3
}

case "${1:-}" in
  start) shift; start "${1:-}" ;;
  stop) stop_pid "$PIDFILE" prometheus ;;
  status) status ;;
  *) echo "usage: $0 {start [CONFIG]|stop|status}" >&2; exit 2 ;;
esac
