#!/usr/bin/env bash
# Heartbeat's test command. Installs what is missing, starts private PostgreSQL,
# Mosquitto and tansu (Kafka protocol) instances on free loopback ports, runs the
# whole test suite against them, and stops everything it started, pass or fail.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -p hb-shared   # extra arguments go to `cargo test`
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TANSU_VERSION=0.6.0
log() { printf '[test.sh] %s\n' "$*" >&2; }

# --- 1. Prerequisites ---------------------------------------------------------
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
missing=()
[ -n "$(pg_bin)" ] || missing+=(postgresql)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
dpkg -s libdbus-1-dev >/dev/null 2>&1 || missing+=(libdbus-1-dev)   # hb-agent --features ble
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages: ${missing[*]} (install them: sudo apt-get install -y ${missing[*]})"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts a system-wide mosquitto/postgresql on install; we use our own.
PG_BIN=$(pg_bin)
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1; then
  log "installing tansu $TANSU_VERSION (Kafka-compatible broker; ~10 min the first time)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi
TANSU=$(command -v tansu)

# --- 2. Static checks: the compose file is valid (no Docker engine runs here).
docker-compose -f "$ROOT/docker-compose.yml" config -q
log "docker-compose.yml is valid"

# The agent stays small: no Kafka or PostgreSQL client in its dependency tree.
if cargo tree -p hb-agent -e normal --prefix none | grep -E '^(rdkafka|tokio-postgres) '; then
  log "hb-agent must not depend on rdkafka or tokio-postgres"; exit 1
fi

# --- 3. Build first, so that services do not idle through a long compile -------
log "building"
cargo build --workspace --bins --quiet
# The Bluetooth source is off by default; keep it compiling.
cargo check -p hb-agent --features ble --quiet
cargo test --workspace --no-run --quiet 2>/dev/null || cargo test --workspace --no-run

# --- 4. Private services on free ports -----------------------------------------
WORK=$(mktemp -d /tmp/hb-test.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local code=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ "$code" -ne 0 ] && [ -d "$WORK" ]; then
    log "failed; service logs:"
    for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
  fi
  if [ -n "${HB_TEST_KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$code"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port name pid
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || { log "$2 exited at start"; return 1; }
    sleep 0.1
  done
  log "$2 did not open port $1"; return 1
}

# PostgreSQL refuses to run as root: run it as the postgres user on a directory it owns.
PG_PORT=$(free_port)
mkdir -p "$WORK/pg" "$WORK/pgsock"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir "$WORK/pg" postgres
  chown postgres "$WORK/pg" "$WORK/pgsock"
  as_pg=(runuser -u postgres --)
fi
"${as_pg[@]}" "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres -A trust --no-sync -E UTF8 >"$WORK/initdb.out" 2>&1 \
  || { cat "$WORK/initdb.out"; exit 1; }
"${as_pg[@]}" "$PG_BIN/postgres" -D "$WORK/pg/data" -k "$WORK/pgsock" -p "$PG_PORT" -h 127.0.0.1 \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
  >"$WORK/postgres.log" 2>&1 &
PIDS+=($!)
wait_port "$PG_PORT" postgres "${PIDS[-1]}"

MQTT_PORT=$(free_port)
mkdir -p "$WORK/mosquitto"
# Users: the bridge, the fleet simulator, and two device-scoped users.
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(18))'; }
export HB_TEST_MQTT_BRIDGE_PASSWORD=$(secret) HB_TEST_MQTT_SIM_PASSWORD=$(secret) HB_TEST_MQTT_DEVICE_PASSWORD=$(secret)
mosquitto_passwd -c -b "$WORK/mosquitto/passwd" hb-bridge "$HB_TEST_MQTT_BRIDGE_PASSWORD"
mosquitto_passwd -b "$WORK/mosquitto/passwd" hb-sim "$HB_TEST_MQTT_SIM_PASSWORD"
for d in hb-test-device-1 hb-test-device-2; do
  mosquitto_passwd -b "$WORK/mosquitto/passwd" "$d" "$HB_TEST_MQTT_DEVICE_PASSWORD"
done
cp "$ROOT/scripts/mosquitto-test.acl" "$WORK/mosquitto/acl"
chmod 600 "$WORK/mosquitto/passwd"
# Started as root, mosquitto drops to the "mosquitto" user: let it read and persist.
if [ "$(id -u)" -eq 0 ] && id mosquitto >/dev/null 2>&1; then chown -R mosquitto "$WORK/mosquitto"; fi
# A listener line, not -p: mosquitto 2.0 lets anonymous clients in on a -p port.
{ echo "listener $MQTT_PORT 127.0.0.1"; cat "$ROOT/scripts/mosquitto-test.conf"; } >"$WORK/mosquitto/mosquitto.conf"
(cd "$WORK/mosquitto" && exec "$MOSQUITTO" -c "$WORK/mosquitto/mosquitto.conf") >"$WORK/mosquitto.log" 2>&1 &
PIDS+=($!)
wait_port "$MQTT_PORT" mosquitto "${PIDS[-1]}"

KAFKA_PORT=$(free_port)
mkdir -p "$WORK/tansu"
(cd "$WORK/tansu" && exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/) \
  >"$WORK/tansu.log" 2>&1 &
PIDS+=($!)
wait_port "$KAFKA_PORT" tansu "${PIDS[-1]}"

export HB_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export HB_TEST_MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT"
export HB_TEST_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export HB_TEST_WORK_DIR="$WORK/tests"
export HB_TEST_TANSU="$TANSU"
export HB_TEST_MOSQUITTO="$MOSQUITTO"
export HB_TEST_MOSQUITTO_CONF="$ROOT/scripts/mosquitto-test.conf"
export HB_TEST_MOSQUITTO_AUTH_DIR="$WORK/mosquitto"
export HB_TEST_PG_BIN="$PG_BIN"
log "services: postgres :$PG_PORT, mosquitto :$MQTT_PORT, tansu :$KAFKA_PORT"

# --- 5. The tests --------------------------------------------------------------
start=$(date +%s)
# Three tests of a binary at a time (libtest's default is the core count, 2 here):
# the end-to-end fault tests spend minutes waiting through broker and collector
# outages, not computing.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-3}
cargo test --workspace --no-fail-fast "$@"
log "tests took $(( $(date +%s) - start )) s"
