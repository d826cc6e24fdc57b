#!/usr/bin/env bash
# Heartbeat's test command. Installs what is missing, starts private PostgreSQL,
# Mosquitto and tansu (Kafka protocol) instances on free loopback ports, runs the
# whole test suite against them, runs the local system (scripts/run.sh) for a
# short smoke check, and stops everything it started, pass or fail.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -p hb-shared   # extra arguments go to `cargo test` (and skip the smoke run)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
HB_SCRIPT=test.sh
. "$ROOT/scripts/lib.sh"
log() { hb_log "$@"; }

# --- 1. Prerequisites ---------------------------------------------------------
# docker-compose validates the compose file; libdbus for hb-agent --features ble;
# chromium (and npm's playwright-core, below) for the dashboard's browser tests.
hb_install_packages docker-compose libdbus-1-dev
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" -eq 0 ]; then
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || log "*** could not install chromium: the browser tests will be SKIPPED ***"
fi
hb_install_tansu
TANSU=$HB_TANSU
hb_install_cargo_deny
if [ ! -d "$ROOT/collector/tests/browser/node_modules/playwright-core" ]; then
  log "installing playwright-core (npm) for the browser tests"
  (cd "$ROOT/collector/tests/browser" && npm ci --no-audit --no-fund --silent) \
    || log "*** could not install playwright-core: the browser tests will be SKIPPED ***"
fi

# --- 2. Static checks: the compose files are valid (no Docker engine runs here).
docker-compose -f "$ROOT/docker-compose.yml" config -q
log "docker-compose.yml is valid"
docker-compose -f "$ROOT/docker-compose.yml" -f "$ROOT/docker-compose.kafka-sasl.yml" config -q
log "docker-compose.kafka-sasl.yml (Kafka over SASL_SSL with SCRAM) is valid"

# The dependency tree (deny.toml): licences on the allow-list, crates from
# crates.io only, OpenSSL only under librdkafka; duplicates are warnings. Offline
# once the crates are fetched: the advisory database is on GitHub, out of CI's
# reach, so `cargo deny check advisories` is run by hand (deny.toml, README).
cargo fetch --quiet
"$HB_CARGO_DENY" --offline check --hide-inclusion-graph bans licenses sources
# The agent stays small: no Kafka or PostgreSQL client and no OpenSSL in its own
# tree (every feature, without its tests' dev-dependencies).
"$HB_CARGO_DENY" --offline --manifest-path "$ROOT/agent/Cargo.toml" --exclude-dev \
  --config "$ROOT/deny-agent.toml" check bans
log "cargo deny: bans, licences and sources ok"

# --- 3. Build first, so that services do not idle through a long compile -------
log "building"
cargo build --workspace --bins --quiet
# Every command line the README shows parses.
python3 "$ROOT/scripts/check-readme-commands.py"
# The Bluetooth source is off by default: its unit tests (no hardware needed) run here.
cargo test -p hb-agent --features ble --lib --quiet
cargo test --workspace --no-run --quiet 2>/dev/null || cargo test --workspace --no-run

# --- 4. Private services on free ports -----------------------------------------
WORK=$(mktemp -d /tmp/hb-test.XXXXXX)
chmod 755 "$WORK"
cleanup() {
  local code=$?
  hb_stop_all
  if [ "$code" -ne 0 ] && [ -d "$WORK" ]; then
    log "failed; service logs:"
    for f in "$WORK"/pg/postgres.log "$WORK"/mosquitto/mosquitto.log "$WORK"/tansu/tansu.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
  fi
  if [ -n "${HB_TEST_KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$code"
}
trap cleanup EXIT INT TERM

PG_PORT=$(hb_free_port)
hb_start_postgres "$WORK/pg" "$PG_PORT" \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200

MQTT_PORT=$(hb_free_port)
# Users: the bridge, the fleet simulator, and two device-scoped users.
export HB_TEST_MQTT_BRIDGE_PASSWORD=$(hb_secret) HB_TEST_MQTT_SIM_PASSWORD=$(hb_secret) HB_TEST_MQTT_DEVICE_PASSWORD=$(hb_secret)
hb_start_mosquitto "$WORK/mosquitto" "$MQTT_PORT" "$ROOT/scripts/mosquitto-test.acl" \
  "hb-bridge=$HB_TEST_MQTT_BRIDGE_PASSWORD" "hb-sim=$HB_TEST_MQTT_SIM_PASSWORD" \
  "hb-test-device-1=$HB_TEST_MQTT_DEVICE_PASSWORD" "hb-test-device-2=$HB_TEST_MQTT_DEVICE_PASSWORD"

KAFKA_PORT=$(hb_free_port)
hb_start_tansu "$WORK/tansu" "$KAFKA_PORT" memory://tansu/

export HB_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export HB_TEST_MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT"
export HB_TEST_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export HB_TEST_WORK_DIR="$WORK/tests"
export HB_TEST_TANSU="$TANSU"
export HB_TEST_MOSQUITTO="$HB_MOSQUITTO"
export HB_TEST_MOSQUITTO_CONF="$ROOT/scripts/mosquitto-test.conf"
export HB_TEST_MOSQUITTO_AUTH_DIR="$WORK/mosquitto"
export HB_TEST_PG_BIN="$HB_PG_BIN"
export HB_TEST_CHROMIUM=/usr/bin/chromium
log "services: postgres :$PG_PORT, mosquitto :$MQTT_PORT, tansu :$KAFKA_PORT"

# --- 5. The tests --------------------------------------------------------------
start=$(date +%s)
# Three tests of a binary at a time (libtest's default is the core count, 2 here):
# the end-to-end fault tests spend minutes waiting through broker and collector
# outages, not computing.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-3}
cargo test --workspace --no-fail-fast "$@"
log "tests took $(( $(date +%s) - start )) s"

# --- 6. The README's first command, smoke-tested -------------------------------------
# Two short runs of scripts/run.sh on one state directory: the second checks that
# the first run's readings are still stored, that the dashboard serves live data,
# and that the collector and the bridge each survive being killed and restarted.
# The first logs at debug level, and no log of either (nor what /metrics showed)
# may hold one of the run's secrets (run.sh itself prints the dashboard token for
# the person starting it).
if [ $# -eq 0 ]; then
  start=$(date +%s)
  smoke() { ./scripts/run.sh --debug --devices 100 --port "$(hb_free_port)" --state-dir "$WORK/run" "$@" \
    >>"$WORK/run.log" 2>&1 || { log "scripts/run.sh $* failed:"; tail -n 60 "$WORK/run.log"; exit 1; }; }
  export HB_LOG=debug
  smoke --for 10
  unset HB_LOG
  smoke --for 10 --check
  (
    . "$WORK/run/secrets.env"
    for name in PG_PASSWORD PG_OWNER_PASSWORD PG_COLLECTOR_PASSWORD PG_TANSU_PASSWORD \
      MQTT_BRIDGE_PASSWORD MQTT_SIM_PASSWORD DASHBOARD_TOKEN; do
      value=${!name}
      [ ${#value} -ge 16 ] || { log "secrets.env: $name is missing or short"; exit 1; }
      if find "$WORK/run" -name '*.log' -exec grep -lF -- "$value" {} + | grep .; then
        log "the value of $name appears in the logs above"; exit 1
      fi
    done
    log "no secret of the run in its $(find "$WORK/run" -name '*.log' | wc -l) log files"
  )
  grep 'run_check\|check' "$WORK/run.log" >&2 || true
  log "scripts/run.sh smoke runs took $(( $(date +%s) - start )) s"
fi
