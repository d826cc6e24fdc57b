# Shared by scripts/test.sh and scripts/run.sh (sourced, not run): installing
# what is missing on Debian/Ubuntu, and starting private PostgreSQL, Mosquitto
# and tansu (Kafka protocol) on loopback ports. Every process started is recorded
# in HB_PIDS; hb_stop_all stops them (newest first).

HB_ROOT=${HB_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
HB_PIDS=()
declare -A HB_PG_DATA=()   # launcher PID -> data directory, for a clean stop
HB_AS_PG=()
export PATH="$HOME/.cargo/bin:$PATH"

hb_log() { printf '[%s] %s\n' "${HB_SCRIPT:-hb}" "$*" >&2; }

hb_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# hb_install_packages [extra apt packages…]: the base set plus the extras, where
# missing (as root; otherwise says what to install and fails).
hb_install_packages() {
  local missing=()
  [ -n "$(hb_pg_bin)" ] || missing+=(postgresql)
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  command -v make >/dev/null 2>&1 || missing+=(make)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  local p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      hb_log "missing packages: ${missing[*]} (install them: sudo apt-get install -y ${missing[*]})"
      return 1
    fi
    hb_log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # Debian starts a system-wide mosquitto/postgresql on install; we use our own.
  HB_PG_BIN=$(hb_pg_bin)
  HB_MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
}

# hb_install_tansu: the Kafka-protocol broker tansu 0.6.0, built from vendor/
# with its group coordinator patched (vendor/README.md), cached per source hash
# under ~/.cache/heartbeat. Sets HB_TANSU.
hb_install_tansu() {
  local hash root
  hash=$(cd "$HB_ROOT/vendor" && find tansu tansu-broker tansu-storage -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
  root="${XDG_CACHE_HOME:-$HOME/.cache}/heartbeat/tansu-$hash"
  if [ ! -x "$root/bin/tansu" ]; then
    hb_log "building tansu 0.6.0 with the patched group coordinator (~15-30 min the first time)"
    cargo install --quiet --locked --path "$HB_ROOT/vendor/tansu" --features dynostore,libsql,postgres \
      --root "$root.partial" --target-dir "${CARGO_TARGET_DIR:-$HB_ROOT/target}/tansu"
    rm -rf "$root" && mv "$root.partial" "$root"
  fi
  HB_TANSU="$root/bin/tansu"
}

# hb_install_cargo_deny: cargo-deny (licences, bans, sources and advisories of the
# dependency tree; deny.toml), a pinned version built once with its own lock file
# (--locked: the same build on every machine) and cached under ~/.cache/heartbeat.
# Sets HB_CARGO_DENY.
HB_CARGO_DENY_VERSION=0.20.2
hb_install_cargo_deny() {
  local root="${XDG_CACHE_HOME:-$HOME/.cache}/heartbeat/cargo-deny-$HB_CARGO_DENY_VERSION"
  if [ ! -x "$root/bin/cargo-deny" ]; then
    hb_log "building cargo-deny $HB_CARGO_DENY_VERSION (~3-5 min the first time)"
    # Into a .partial root, moved into place only when complete: an interrupted
    # build is never taken for a finished one. cargo builds it in a temporary
    # directory of its own and deletes it (nothing of it is worth keeping).
    rm -rf "$root.partial"
    cargo install --quiet --locked cargo-deny --version "=$HB_CARGO_DENY_VERSION" --root "$root.partial"
    rm -rf "$root" && mv "$root.partial" "$root"
  fi
  HB_CARGO_DENY="$root/bin/cargo-deny"
}

hb_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

hb_wait_port() { # port name pid
  local _
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || { hb_log "$2 exited at start"; return 1; }
    sleep 0.1
  done
  hb_log "$2 did not open port $1"; return 1
}

hb_secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(18))'; }

# hb_start_postgres DIR PORT [postgres -c settings…]: initialises DIR/data on
# first use (superuser "postgres"; password auth when DIR/pgpass holds one, else
# trust), then starts the server on 127.0.0.1:PORT. PostgreSQL refuses to run as
# root: as root it runs as the postgres user.
hb_start_postgres() {
  local dir=$1 port=$2; shift 2
  local as_pg=()
  mkdir -p "$dir/sock"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" postgres
    chown postgres "$dir" "$dir/sock"
    as_pg=(runuser -u postgres --)
  fi
  HB_AS_PG=("${as_pg[@]}")
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    local auth=(-A trust)
    if [ -f "$dir/pgpass" ]; then
      [ "$(id -u)" -eq 0 ] && chown postgres "$dir/pgpass"
      auth=(-A scram-sha-256 --pwfile="$dir/pgpass")
    fi
    "${as_pg[@]}" "$HB_PG_BIN/initdb" -D "$dir/data" -U postgres "${auth[@]}" --no-sync -E UTF8 >"$dir/initdb.out" 2>&1 \
      || { cat "$dir/initdb.out"; return 1; }
  fi
  "${as_pg[@]}" "$HB_PG_BIN/postgres" -D "$dir/data" -k "$dir/sock" -p "$port" -h 127.0.0.1 "$@" \
    >>"$dir/postgres.log" 2>&1 &
  HB_PIDS+=($!)
  HB_PG_DATA[$!]="$dir/data"
  hb_wait_port "$port" postgres "${HB_PIDS[-1]}"
  # The port opens before recovery after an unclean stop ends: wait until it
  # accepts connections.
  local _
  for _ in $(seq 600); do
    "$HB_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" && return 0
    sleep 0.1
  done
  hb_log "postgres on port $port is not ready after a minute; see $dir/postgres.log"; return 1
}

# hb_start_mosquitto DIR PORT ACL USER=PASSWORD…: Mosquitto with the project's
# settings (scripts/mosquitto-test.conf), the ACL file and these users, on
# 127.0.0.1:PORT, persisting in DIR.
hb_start_mosquitto() {
  local dir=$1 port=$2 acl=$3; shift 3
  mkdir -p "$dir"
  # user:password lines hashed in place (-U), so that no password is on a
  # command line for `ps` to show.
  local pair
  (umask 077 && for pair in "$@"; do printf '%s:%s\n' "${pair%%=*}" "${pair#*=}"; done >"$dir/passwd")
  mosquitto_passwd -U "$dir/passwd"
  cp "$acl" "$dir/acl"
  chmod 600 "$dir/passwd"
  # Started as root, mosquitto drops to the "mosquitto" user: let it read and persist.
  if [ "$(id -u)" -eq 0 ] && id mosquitto >/dev/null 2>&1; then chown -R mosquitto "$dir"; fi
  # A listener line, not -p: mosquitto 2.0 lets anonymous clients in on a -p port.
  { echo "listener $port 127.0.0.1"; cat "$HB_ROOT/scripts/mosquitto-test.conf"; } >"$dir/mosquitto.conf"
  (cd "$dir" && exec "$HB_MOSQUITTO" -c "$dir/mosquitto.conf") >>"$dir/mosquitto.log" 2>&1 &
  HB_PIDS+=($!)
  hb_wait_port "$port" mosquitto "${HB_PIDS[-1]}"
}

# hb_start_tansu DIR PORT STORAGE_URL: tansu on 127.0.0.1:PORT (the storage URL,
# which may hold a password, through the environment).
hb_start_tansu() {
  local dir=$1 port=$2 storage=$3
  mkdir -p "$dir"
  (cd "$dir" && export STORAGE_ENGINE="$storage" && exec "$HB_TANSU" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port") \
    >>"$dir/tansu.log" 2>&1 &
  HB_PIDS+=($!)
  hb_wait_port "$port" tansu "${HB_PIDS[-1]}"
}

# Forgets a process that was stopped by other means (so that hb_stop_all never
# signals a PID the system has given to another process since).
hb_forget_pid() {
  local kept=() pid
  for pid in "${HB_PIDS[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  HB_PIDS=("${kept[@]}")
}

# Stops every recorded process, newest first: SIGTERM, up to 5 s, then SIGKILL.
# PostgreSQL gets a fast shutdown through pg_ctl (as root its launcher is runuser,
# which would not wait for it), up to 30 s.
hb_stop_all() {
  local i pid _
  for ((i = ${#HB_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${HB_PIDS[$i]}
    kill -0 "$pid" 2>/dev/null || continue
    if [ -n "${HB_PG_DATA[$pid]:-}" ]; then
      "${HB_AS_PG[@]}" "$HB_PG_BIN/pg_ctl" -D "${HB_PG_DATA[$pid]}" stop -m fast -w -t 30 >/dev/null 2>&1 || true
    else
      kill "$pid" 2>/dev/null || continue
    fi
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  HB_PIDS=()
}
