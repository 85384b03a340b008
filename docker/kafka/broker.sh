#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft) on 127.0.0.1 for jinryu's end-to-end tests and for
# trying `jinryu run` on one machine. The jars come from Maven Central (docker/kafka/pom.xml) into
# a cache folder outside the clone, fetched only when missing.
#
#   docker/kafka/broker.sh fetch                  # download the jars once (~45 s)
#   docker/kafka/broker.sh start DIR PORT         # format DIR and run the broker in the foreground
#
# JINRYU_KAFKA_HOME overrides the cache folder (default /var/cache/jinryu/kafka-4.4.0).
# The broker listens on 127.0.0.1:PORT (PLAINTEXT) with its controller on PORT+1; topics are
# created on first use with 4 partitions. Stop it with SIGTERM (or SIGKILL in crash tests).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
home="${JINRYU_KAFKA_HOME:-/var/cache/jinryu/kafka-4.4.0}"

fetch() {
  # The cache is valid for one pom.xml: a changed pom fetches again.
  local want; want="$(sha256sum "$here/pom.xml" | cut -d' ' -f1)"
  if [ "$(cat "$home/.complete" 2>/dev/null)" = "$want" ]; then return 0; fi
  command -v mvn >/dev/null || { echo "broker.sh: Maven (mvn) and Java 17 are needed to fetch Kafka" >&2; exit 1; }
  rm -rf "$home/libs"; mkdir -p "$home"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$home/libs" -DincludeScope=runtime >&2
  echo "$want" > "$home/.complete"
}

start() {
  local dir="$1" port="$2" cport=$(( $2 + 1 ))
  fetch
  mkdir -p "$dir"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=6000
group.classic.min.session.timeout.ms=6000
PROPS
  cat > "$dir/log4j2.properties" <<'LOG'
status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.console.ref = console
logger.kafka.name = kafka.server.KafkaServer
logger.kafka.level = info
LOG
  local java=(java -Xms128m -Xmx512m -XX:+UseSerialGC -Djava.awt.headless=true
              -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$home/libs/*")
  if [ ! -f "$dir/data/meta.properties" ]; then
    "${java[@]}" kafka.tools.StorageTool format -t "$("${java[@]}" kafka.tools.StorageTool random-uuid)" \
      -c "$dir/server.properties" --ignore-formatted >/dev/null
  fi
  exec "${java[@]}" kafka.Kafka "$dir/server.properties"
}

case "${1:-}" in
  fetch) fetch ;;
  start) [ $# -eq 3 ] || { echo "usage: $0 start DIR PORT" >&2; exit 2; }; start "$2" "$3" ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
