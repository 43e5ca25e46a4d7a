#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, broker+controller in one JVM) for development and tests.
#   kafka.sh fetch   download the server jars with Maven into the cache (reused when present)
#   kafka.sh start   fetch if needed, format storage once, start, wait until the broker answers
#   kafka.sh stop    stop the broker this script started (pid file), nothing else
#   kafka.sh status  print whether it runs and answers
# Env: FLOATBRIDGE_KAFKA_PORT (19092), FLOATBRIDGE_KAFKA_CONTROLLER_PORT (19093),
#      FLOATBRIDGE_KAFKA_VERSION (4.1.1), FLOATBRIDGE_CACHE (~/.cache/floatbridge),
#      FLOATBRIDGE_KAFKA_START_TIMEOUT seconds (90), FLOATBRIDGE_KAFKA_HEAP (512m).
# Topic auto-creation stays ON: Faust creates its own changelog/repartition topics through the admin
# API anyway, but auto-create keeps ad-hoc producers in tests working; the application topics are
# created explicitly with `floatbridge topics create` (which sets partitions and retention).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KAFKA_VERSION="${FLOATBRIDGE_KAFKA_VERSION:-4.1.1}"
LOG4J_VERSION="${FLOATBRIDGE_LOG4J_VERSION:-2.24.3}"
SLF4J_VERSION="${FLOATBRIDGE_SLF4J_VERSION:-2.0.17}"
PORT="${FLOATBRIDGE_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${FLOATBRIDGE_KAFKA_CONTROLLER_PORT:-19093}"
START_TIMEOUT="${FLOATBRIDGE_KAFKA_START_TIMEOUT:-90}"
HEAP="${FLOATBRIDGE_KAFKA_HEAP:-512m}"
HOME_DIR="$CACHE_DIR/kafka-$KAFKA_VERSION"
LIBS="$HOME_DIR/libs"
STATE="$LOCAL_DIR/kafka"
DATA="$STATE/data"
PIDFILE="$STATE/kafka.pid"
LOG="$LOG_DIR/kafka.log"
PY="${PYTHON:-python3}"

check_java() {
  command -v java >/dev/null || die "java not found: Kafka $KAFKA_VERSION needs Java 17+ (apt-get install openjdk-17-jre-headless)"
  local major
  major="$(java -version 2>&1 | sed -nE '1s/.*version "([0-9]+).*/\1/p')"
  [[ -n "$major" && "$major" -ge 17 ]] || die "java $major found, Kafka $KAFKA_VERSION brokers need Java 17+"
}

fetch() {
  if [[ -f "$LIBS/.complete" ]]; then
    info "jars cached in $LIBS"; return 0
  fi
  command -v mvn >/dev/null || die "mvn not found: needed once to fetch Kafka jars (apt-get install maven)"
  local work t0 t1
  work="$(mktemp -d)"
  cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.floatbridge</groupId>
  <artifactId>kafka-server-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- pinned: a transitive slf4j-api 1.7 would silently disable logging via the slf4j2 binding -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  info "fetching Kafka $KAFKA_VERSION server jars with Maven into $LIBS ..."
  t0=$(date +%s)
  rm -rf "$LIBS.tmp"
  if ! mvn -q -B -f "$work/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" >"$LOG_DIR/kafka-fetch.log" 2>&1; then
    tail -20 "$LOG_DIR/kafka-fetch.log" >&2
    die "Maven could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (network/registry unreachable?); see $LOG_DIR/kafka-fetch.log"
  fi
  t1=$(date +%s)
  mkdir -p "$HOME_DIR"; rm -rf "$LIBS"; mv "$LIBS.tmp" "$LIBS"
  echo "$((t1 - t0))s" >"$LIBS/.complete"
  rm -rf "$work"
  info "fetched $(ls "$LIBS"/*.jar | wc -l) jars in $((t1 - t0))s"
}

write_config() {
  mkdir -p "$STATE" "$DATA"
  cat >"$STATE/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA
num.partitions=4
default.replication.factor=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
log.retention.hours=24
log.segment.bytes=16777216
delete.topic.enable=true
PROPS
  cat >"$STATE/log4j2.properties" <<'L4J'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.log.name = kafka.log
logger.log.level = WARN
logger.org.name = org.apache.kafka
logger.org.level = WARN
L4J
}

java_opts() {
  echo "-Xms$HEAP -Xmx$HEAP -XX:+UseG1GC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile=$STATE/log4j2.properties -Dkafka.logs.dir=$STATE"
}

answers() {
  # A real metadata round trip when kafka-python is installed; otherwise (before `make install`) a TCP probe.
  if ! "$PY" -c 'import kafka' >/dev/null 2>&1; then port_open "$PORT"; return; fi
  "$PY" - "$PORT" <<'PYEOF' >/dev/null 2>&1
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{sys.argv[1]}", request_timeout_ms=3000,
                         client_id="floatbridge-probe")
admin.list_topics()
admin.close()
PYEOF
}

start() {
  if pid_alive "$PIDFILE"; then
    info "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"; return 0
  fi
  if port_open "$PORT"; then
    die "port $PORT is in use by another process (not started by this script); set FLOATBRIDGE_KAFKA_PORT"
  fi
  check_java
  fetch
  write_config
  # shellcheck disable=SC2046
  if [[ ! -f "$DATA/meta.properties" ]]; then
    info "formatting KRaft storage in $DATA"
    java $(java_opts) -cp "$LIBS/*" kafka.tools.StorageTool format --standalone \
      -t "$(java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
      -c "$STATE/server.properties" >>"$LOG" 2>&1 || die "storage format failed; see $LOG"
  fi
  info "starting broker on 127.0.0.1:$PORT (controller $CONTROLLER_PORT), log $LOG"
  # setsid: own session, so the broker survives the caller's shell and `stop` can signal just it.
  # shellcheck disable=SC2046
  setsid java $(java_opts) -cp "$LIBS/*" kafka.Kafka "$STATE/server.properties" >>"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers; do
    if ! pid_alive "$PIDFILE"; then
      tail -30 "$LOG" >&2; rm -f "$PIDFILE"; die "Kafka exited during start-up; see $LOG"
    fi
    if ((SECONDS > deadline)); then
      tail -30 "$LOG" >&2; die "Kafka did not answer on 127.0.0.1:$PORT within ${START_TIMEOUT}s; see $LOG (still running: pid $(cat "$PIDFILE"))"
    fi
    sleep 1
  done
  info "ready on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
}

status() {
  if pid_alive "$PIDFILE"; then
    if answers; then info "running (pid $(cat "$PIDFILE")) and answering on 127.0.0.1:$PORT"; return 0; fi
    info "running (pid $(cat "$PIDFILE")) but NOT answering on 127.0.0.1:$PORT"; return 1
  fi
  info "not running"; return 3
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop_pid "$PIDFILE" kafka ;;
  status) status ;;
  *) echo "usage: $0 {start|stop|status|fetch}" >&2; exit 2 ;;
esac
