#!/usr/bin/env bash
# The whole Heartbeat system on this machine, with one command and no Docker:
# PostgreSQL, Mosquitto (the project's ACL, generated passwords), the
# Kafka-protocol broker tansu (storing in that PostgreSQL), hb-bridge,
# hb-collector with its dashboard, and a simulated fleet with anomaly episodes.
# Prints the dashboard's address and token; Ctrl-C stops everything.
#
#   ./scripts/run.sh                      # 1000 simulated devices, until Ctrl-C
#   ./scripts/run.sh --devices 50 --port 8081
#   ./scripts/run.sh --for 60 --check     # run 60 s, check it all works, stop (CI)
#
# Everything it keeps (databases, broker data, the agents' spools, generated
# secrets, logs) is in the state directory (default .heartbeat/): a second start
# carries on where the first stopped. Delete it to start afresh.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
HB_SCRIPT=run.sh
. "$ROOT/scripts/lib.sh"

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --devices N       simulated devices (default 1000)
  --port P          the dashboard's port on 127.0.0.1 (default 8080)
  --state-dir DIR   where everything is kept (default .heartbeat)
  --for SECONDS     stop after this long instead of waiting for Ctrl-C
  --check           with --for: check the dashboard serves live data, that the
                    collector and the bridge each survive a restart, and that
                    what an earlier run stored is still there; exit 1 if not
  --debug           use debug builds (faster to build, slower to run)
EOF
}

DEVICES=1000
PORT=8080
STATE="$ROOT/.heartbeat"
RUN_FOR=""
CHECK=""
PROFILE=release
while [ $# -gt 0 ]; do
  case "$1" in
    --devices) DEVICES=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --state-dir) STATE=$2; shift 2 ;;
    --for) RUN_FOR=${2%s}; shift 2 ;;
    --check) CHECK=1; shift ;;
    --debug) PROFILE=debug; shift ;;
    -h|--help) usage; exit 0 ;;
    *) hb_log "unknown option $1"; usage; exit 2 ;;
  esac
done
if [ -n "$CHECK" ] && [ -z "$RUN_FOR" ]; then hb_log "--check needs --for"; exit 2; fi
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  hb_log "port $PORT is in use (another run?); choose one with --port"; exit 1
fi

# --- Prerequisites and binaries ---------------------------------------------------
hb_install_packages
hb_install_tansu
if [ "$PROFILE" = release ]; then
  hb_log "building the release binaries (a few minutes the first time)"
  cargo build --release --bins --quiet
else
  cargo build --bins --quiet
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"

mkdir -p "$STATE/logs"
chmod 700 "$STATE/logs"
STATE=$(cd "$STATE" && pwd)
# Others may pass through (PostgreSQL runs as its own user) but not list it.
chmod 711 "$STATE"
# PostgreSQL logins: PG (the superuser, which only sets up), PG_OWNER (owns the
# schema, runs the migrations), PG_COLLECTOR (the collector: reads and writes
# rows, changes no table) and PG_TANSU (the Kafka stand-in's own database).
SECRETS=(PG_PASSWORD PG_OWNER_PASSWORD PG_COLLECTOR_PASSWORD PG_TANSU_PASSWORD
  MQTT_BRIDGE_PASSWORD MQTT_SIM_PASSWORD DASHBOARD_TOKEN)
[ -f "$STATE/secrets.env" ] && . "$STATE/secrets.env"
# Generated one by one (a failure stops the script), those missing added at once.
secrets=""
for name in "${SECRETS[@]}"; do
  [ -n "${!name:-}" ] && continue
  value=$(hb_secret)
  [ -n "$value" ] || { hb_log "could not generate a secret"; exit 1; }
  secrets+="$name=$value"$'\n'
done
if [ -n "$secrets" ]; then
  (umask 077 && { cat "$STATE/secrets.env" 2>/dev/null || true; printf '%s' "$secrets"; } >"$STATE/secrets.env.new")
  mv "$STATE/secrets.env.new" "$STATE/secrets.env"
fi
. "$STATE/secrets.env"

PIDFILE_DIR="$STATE/pids"
mkdir -p "$PIDFILE_DIR"
stopping=""
cleanup() {
  local code=$?
  stopping=1
  trap - EXIT INT TERM
  hb_log "stopping"
  if [ -n "${PGPORT_:-}" ]; then
    # What this run leaves stored, for the next run's --check (kept as it was if
    # the count fails).
    if readings_count >"$STATE/readings-at-stop.new" 2>/dev/null && [ -s "$STATE/readings-at-stop.new" ]; then
      mv "$STATE/readings-at-stop.new" "$STATE/readings-at-stop"
    fi
  fi
  hb_stop_all
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Services ------------------------------------------------------------------------
PGPORT_=$(hb_free_port)
mkdir -p "$STATE/pg"
[ -f "$STATE/pg/pgpass" ] || (umask 077 && echo "$PG_PASSWORD" >"$STATE/pg/pgpass")
hb_start_postgres "$STATE/pg" "$PGPORT_" -c max_connections=100
psql_() { PGPASSWORD=$PG_PASSWORD psql -h 127.0.0.1 -p "$PGPORT_" -U postgres -v ON_ERROR_STOP=1 -qtAX "$@"; }
readings_count() { psql_ -d heartbeat -c "SELECT count(*) FROM readings" 2>/dev/null; }
pg_url() { # user password database
  echo "postgres://$1:$2@127.0.0.1:$PGPORT_/$3"
}
# Least privilege: the roles the migrations expect (hb_writer, hb_reader) and the
# logins, made by the superuser, which then steps aside. Passwords reach psql
# through its environment, never its command line.
HB_PG_OWNER_PASSWORD=$PG_OWNER_PASSWORD HB_PG_COLLECTOR_PASSWORD=$PG_COLLECTOR_PASSWORD \
  psql_ -d postgres -f "$ROOT/deploy/postgres/roles.sql"
HB_PG_TANSU_PASSWORD=$PG_TANSU_PASSWORD psql_ -d postgres -f - <<'SQL'
\getenv tansu HB_PG_TANSU_PASSWORD
SELECT 'CREATE ROLE hb_tansu' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hb_tansu') \gexec
ALTER ROLE hb_tansu LOGIN PASSWORD :'tansu';
SELECT 'CREATE DATABASE tansu OWNER hb_tansu'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tansu') \gexec
SQL
for db in heartbeat tansu; do
  if [ "$(psql_ -d postgres -c "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '$db'")" = postgres ]; then
    hb_log "the database $db in $STATE predates the database roles: delete $STATE to start afresh"; exit 1
  fi
done
# tansu's PostgreSQL storage does not create its tables (vendor/tansu-postgres-schema.sql
# is upstream's, idempotent).
PGPASSWORD=$PG_TANSU_PASSWORD psql -h 127.0.0.1 -p "$PGPORT_" -U hb_tansu -d tansu -v ON_ERROR_STOP=1 -qtAX \
  -f "$ROOT/vendor/tansu-postgres-schema.sql" >/dev/null

MQTT_PORT=$(hb_free_port)
hb_start_mosquitto "$STATE/mosquitto" "$MQTT_PORT" "$ROOT/deploy/mosquitto/acl" \
  "hb-bridge=$MQTT_BRIDGE_PASSWORD" "hb-sim=$MQTT_SIM_PASSWORD"

KAFKA_PORT=$(hb_free_port)
hb_start_tansu "$STATE/tansu" "$KAFKA_PORT" \
  "$(pg_url hb_tansu "$PG_TANSU_PASSWORD" tansu)"

# --- Heartbeat ------------------------------------------------------------------------
# A killed collector or bridge leaves the consumer group within seconds: heartbeats
# at a sixth of the session (tansu evicts a member whose heartbeat is late).
GROUP_TIMING=(-X session.timeout.ms=12000 -X heartbeat.interval.ms=2000)
BRIDGE_HTTP=$(hb_free_port)
start_bridge() {
  HB_MQTT_PASSWORD=$MQTT_BRIDGE_PASSWORD "$BIN/hb-bridge" --mqtt-url "mqtt://127.0.0.1:$MQTT_PORT" \
    --mqtt-username hb-bridge --kafka-brokers "127.0.0.1:$KAFKA_PORT" \
    --http-addr "127.0.0.1:$BRIDGE_HTTP" "${GROUP_TIMING[@]}" >>"$STATE/logs/bridge.log" 2>&1 &
  BRIDGE_PID=$!
  HB_PIDS+=("$BRIDGE_PID")
}
# The schema's owner migrates; the collector runs as its own login.
HB_DATABASE_URL=$(pg_url hb_owner "$PG_OWNER_PASSWORD" heartbeat) "$BIN/hb-collector" migrate \
  >>"$STATE/logs/collector.log" 2>&1 || { hb_log "migrations failed; see $STATE/logs/collector.log"; exit 1; }
start_collector() {
  # Secrets through the environment, not the command line.
  HB_DASHBOARD_TOKENS="operator=$DASHBOARD_TOKEN" \
    HB_DATABASE_URL=$(pg_url hb_collector "$PG_COLLECTOR_PASSWORD" heartbeat) "$BIN/hb-collector" \
    --kafka-brokers "127.0.0.1:$KAFKA_PORT" --http-addr "127.0.0.1:$PORT" \
    "${GROUP_TIMING[@]}" >>"$STATE/logs/collector.log" 2>&1 &
  COLLECTOR_PID=$!
  HB_PIDS+=("$COLLECTOR_PID")
}
wait_healthy() { # name port pid
  local _
  for _ in $(seq 600); do
    [ "$(python3 "$ROOT/scripts/run_check.py" healthz "$2" 2>/dev/null)" = ok ] && return 0
    kill -0 "$3" 2>/dev/null || { hb_log "$1 exited; see $STATE/logs/$1.log"; tail -n 20 "$STATE/logs/$1.log" >&2; return 1; }
    sleep 0.2
  done
  hb_log "$1 is not healthy after 2 minutes; see $STATE/logs/$1.log"; return 1
}
start_bridge
wait_healthy bridge "$BRIDGE_HTTP" "$BRIDGE_PID"
start_collector
wait_healthy collector "$PORT" "$COLLECTOR_PID"

HB_MQTT_PASSWORD=$MQTT_SIM_PASSWORD "$BIN/hb-agent" --devices "$DEVICES" \
  --mqtt-url "mqtt://127.0.0.1:$MQTT_PORT" --mqtt-username hb-sim --state-dir "$STATE/agent" \
  --episodes-per-hour 2 --episode-duration-s 90 >>"$STATE/logs/agent.log" 2>&1 &
AGENT_PID=$!
HB_PIDS+=("$AGENT_PID")

cat >&2 <<EOF

  Heartbeat is running: $DEVICES simulated devices.

    Dashboard   http://127.0.0.1:$PORT/
    Token       $DASHBOARD_TOKEN   (signs in as "operator")
    API         curl -H 'Authorization: Bearer $DASHBOARD_TOKEN' http://127.0.0.1:$PORT/api/stats
    Logs        $STATE/logs/
    State       $STATE (kept across runs; delete it to start afresh)

  Ctrl-C stops everything.

EOF

export HB_CHECK_PORT=$PORT HB_CHECK_TOKEN=$DASHBOARD_TOKEN HB_CHECK_DEVICES=$DEVICES
if [ -n "$CHECK" ]; then
  before=0
  [ -f "$STATE/readings-at-stop" ] && before=$(cat "$STATE/readings-at-stop")
  now=$(readings_count)
  if [ "${now:-0}" -lt "${before:-0}" ]; then
    hb_log "check failed: the last run left $before readings stored, now there are $now"; exit 1
  fi
  hb_log "check: $now readings stored at start (the last run left ${before:-0})"
  python3 "$ROOT/scripts/run_check.py" live
  hb_log "check: restarting the collector (killed, started again at once)"
  { kill -9 "$COLLECTOR_PID" && wait "$COLLECTOR_PID"; } 2>/dev/null || true
  hb_forget_pid "$COLLECTOR_PID"
  start_collector
  wait_healthy collector "$PORT" "$COLLECTOR_PID"
  python3 "$ROOT/scripts/run_check.py" fresh
  hb_log "check: restarting the bridge (killed, started again at once)"
  { kill -9 "$BRIDGE_PID" && wait "$BRIDGE_PID"; } 2>/dev/null || true
  hb_forget_pid "$BRIDGE_PID"
  start_bridge
  wait_healthy bridge "$BRIDGE_HTTP" "$BRIDGE_PID"
  python3 "$ROOT/scripts/run_check.py" fresh
fi

deadline=""
[ -n "$RUN_FOR" ] && deadline=$(( $(date +%s) + RUN_FOR ))
while [ -z "$deadline" ] || [ "$(date +%s)" -lt "$deadline" ]; do
  for name in agent bridge collector; do
    pid_var="${name^^}_PID"
    if ! kill -0 "${!pid_var}" 2>/dev/null; then
      hb_log "$name exited; see $STATE/logs/$name.log"
      tail -n 20 "$STATE/logs/$name.log" >&2
      exit 1
    fi
  done
  sleep 1
done
if [ -n "$CHECK" ]; then
  python3 "$ROOT/scripts/run_check.py" fresh
  # What /metrics shows, kept with the logs (scripts/test.sh looks for secrets in
  # both).
  for target in "collector $PORT" "bridge $BRIDGE_HTTP"; do
    set -- $target
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
      "http://127.0.0.1:$2/metrics" >"$STATE/logs/metrics-$1.log"
  done
  hb_log "check passed"
fi
