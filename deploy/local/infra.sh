#!/usr/bin/env bash
# Local infrastructure for Floatbridge: Kafka (KRaft), PostgreSQL, Prometheus.
#   infra.sh up       start all three (each start is idempotent)
#   infra.sh down     stop what these scripts started
#   infra.sh status   one line per service; exit 0 only when all answer
#   infra.sh env      print `export FLOATBRIDGE_TEST_*=...` lines: eval "$(bash deploy/local/infra.sh env)"
# Logs: .local/logs/*.log
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

KAFKA_PORT="${FLOATBRIDGE_KAFKA_PORT:-19092}"
PG_PORT="${FLOATBRIDGE_PG_PORT:-55432}"
PROM_PORT="${FLOATBRIDGE_PROM_PORT:-19090}"

case "${1:-}" in
  up)
    set -e
    bash "$HERE/kafka.sh" start
    bash "$HERE/postgres.sh" start
    bash "$HERE/prometheus.sh" start
    ;;
  down)
    rc=0
    bash "$HERE/prometheus.sh" stop || rc=1
    bash "$HERE/postgres.sh" stop || rc=1
    bash "$HERE/kafka.sh" stop || rc=1
    exit $rc
    ;;
  status)
    rc=0
    bash "$HERE/kafka.sh" status || rc=1
    bash "$HERE/postgres.sh" status || rc=1
    bash "$HERE/prometheus.sh" status || rc=1
    exit $rc
    ;;
  env)
    echo "export FLOATBRIDGE_TEST_KAFKA=127.0.0.1:$KAFKA_PORT"
    echo "export FLOATBRIDGE_TEST_DATABASE_URL=postgresql+psycopg2://floatbridge:floatbridge@127.0.0.1:$PG_PORT/floatbridge"
    echo "export FLOATBRIDGE_TEST_PROMETHEUS=http://127.0.0.1:$PROM_PORT"
    echo "export FLOATBRIDGE_TEST_PROMTOOL=$(command -v promtool || echo /usr/bin/promtool)"
    ;;
  *) echo "usage: $0 {up|down|status|env}" >&2; exit 2 ;;
esac
