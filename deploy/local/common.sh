# Shared helpers for the deploy/local/*.sh scripts (sourced, not executed).
# Everything lives under <repo>/.local (gitignored) so a clone is self-contained.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL_DIR="${FLOATBRIDGE_LOCAL_DIR:-$REPO_ROOT/.local}"
LOG_DIR="$LOCAL_DIR/logs"
CACHE_DIR="${FLOATBRIDGE_CACHE:-$HOME/.cache/floatbridge}"
mkdir -p "$LOG_DIR"

die() { echo "ERROR: $*" >&2; exit 1; }
info() { echo "[$(basename "$0" .sh)] $*"; }

# pid_alive FILE -> 0 when FILE names a live process.
pid_alive() {
  local f="$1"
  [[ -s "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# port_open PORT -> 0 when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# stop_pid FILE NAME: SIGTERM the process recorded in FILE (and only it), wait, then SIGKILL.
stop_pid() {
  local f="$1" name="$2" pid i
  if ! pid_alive "$f"; then
    info "$name not running (no live pid in $f)"; rm -f "$f"; return 0
  fi
  pid="$(cat "$f")"
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    info "$name (pid $pid) did not stop in 30s, killing"; kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
  info "$name stopped (pid $pid)"
}

# need_apt PKG...: install Debian packages (root only), once per run.
need_apt() {
  command -v apt-get >/dev/null || die "apt-get not available; install $* by hand"
  [[ "$(id -u)" == 0 ]] || die "need root to apt-get install $*"
  if [[ -z "${_FB_APT_UPDATED:-}" ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed (network?)"
    _FB_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed (network?)"
}
