#!/usr/bin/env bash
# Development certificates for MQTT over TLS with client certificates (mutual TLS).
# FOR DEVELOPMENT AND TESTS ONLY: the CA key lies unencrypted next to the
# certificates it signs. Production devices get their certificates from a real
# PKI, with keys made on the device and a CA key that never leaves it.
#
#   scripts/make-dev-certs.sh OUT_DIR [--broker-host NAME]... DEVICE_ID...
#
# Writes into OUT_DIR:
#   ca.pem, ca.key          a development CA (kept if it exists: run the script
#                           again to add devices to the same CA)
#   server.pem, server.key  the broker's certificate, for every --broker-host
#                           (default: localhost and 127.0.0.1; IP addresses and
#                           DNS names both work)
#   ID.pem, ID.key          one client certificate per device, CN = the device id,
#                           which Mosquitto's `use_identity_as_username true` makes
#                           the user name that deploy/mosquitto/acl applies to
# Keys are mode 0600. A certificate that is still valid for a day, signed by the
# CA and (the broker's) for the same hosts is kept, so running the script twice
# changes nothing. Keys are EC P-256.
#
# Then, for example:
#   scripts/make-dev-certs.sh certs strap-1 strap-2
#   hb-agent --mqtt-url mqtts://localhost:8883 --mqtt-ca-file certs/ca.pem \
#       --device-id-template strap-{index} --devices 2 \
#       --mqtt-cert-file 'certs/{device}.pem' --mqtt-key-file 'certs/{device}.key'
# and a Mosquitto listener as in deploy/mosquitto/mosquitto.conf (port 8883).
set -euo pipefail

usage() {
  sed -n '7p' "$0" | sed 's/^# *//' >&2
  exit 2
}

[ $# -ge 1 ] || usage
case $1 in -h|--help) usage ;; -*) echo "make-dev-certs: the first argument is the output folder" >&2; usage ;; esac
OUT=$1
shift
HOSTS=()
DEVICES=()
while [ $# -gt 0 ]; do
  case $1 in
    --broker-host)
      [ $# -ge 2 ] && [ -n "$2" ] || { echo "make-dev-certs: --broker-host needs a name" >&2; exit 2; }
      HOSTS+=("$2"); shift 2 ;;
    --broker-host=*) HOSTS+=("${1#*=}"); shift ;;
    -h|--help) usage ;;
    -*) echo "make-dev-certs: unknown option $1" >&2; usage ;;
    *) DEVICES+=("$1"); shift ;;
  esac
done
[ ${#HOSTS[@]} -gt 0 ] || HOSTS=(localhost 127.0.0.1)
for id in ${DEVICES[@]+"${DEVICES[@]}"}; do
  # The agent's device ids (hb_shared::DeviceId); also safe as a file name and CN.
  if ! [[ $id =~ ^[A-Za-z0-9_-]{1,64}$ ]]; then
    echo "make-dev-certs: device id \"$id\" is not valid (1-64 of A-Z a-z 0-9 _ -)" >&2; exit 2
  fi
  case $id in ca|server) echo "make-dev-certs: device id \"$id\" would overwrite the $id files" >&2; exit 2 ;; esac
done
for h in "${HOSTS[@]}"; do
  if ! [[ $h =~ ^[A-Za-z0-9.:*-]+$ ]]; then
    echo "make-dev-certs: broker host \"$h\" is not a DNS name or IP address" >&2; exit 2
  fi
done
command -v openssl >/dev/null || { echo "make-dev-certs: needs the openssl command" >&2; exit 1; }

mkdir -p "$OUT"
cd "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# Keys are created unreadable to others from the start.
umask 077

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }
serial() { echo "0x$(openssl rand -hex 16)"; }

# A certificate worth keeping: signed by this CA, valid for at least another day,
# and made for its key.
usable() {
  local cert=$1 key=$2
  [ -s "$cert" ] && [ -s "$key" ] || return 1
  openssl verify -CAfile ca.pem "$cert" >/dev/null 2>&1 || return 1
  openssl x509 -in "$cert" -noout -checkend 86400 >/dev/null || return 1
  [ "$(openssl x509 -in "$cert" -noout -pubkey)" = "$(openssl pkey -in "$key" -pubout 2>/dev/null)" ]
}

# sign CN EXTFILE CERT KEY: a certificate for KEY (made if missing) signed by the CA.
sign() {
  local cn=$1 ext=$2 cert=$3 key=$4
  [ -s "$key" ] || new_key "$key"
  openssl req -new -key "$key" -subj "/CN=$cn" -out "$TMP/req.csr"
  (umask 022 && openssl x509 -req -in "$TMP/req.csr" -CA ca.pem -CAkey ca.key -set_serial "$(serial)" \
    -days 825 -sha256 -extfile "$ext" -out "$cert" 2>/dev/null)
  chmod 644 "$cert"
}

# --- The CA --------------------------------------------------------------------
if [ -s ca.pem ] && [ -s ca.key ]; then
  echo "make-dev-certs: keeping the CA in $OUT/ca.pem"
else
  [ ! -e ca.pem ] && [ ! -e ca.key ] || { echo "make-dev-certs: $OUT has only half a CA (ca.pem or ca.key); remove it" >&2; exit 1; }
  new_key ca.key
  cat >"$TMP/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = ca
[dn]
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  (umask 022 && openssl req -x509 -new -key ca.key -sha256 -days 3650 -set_serial "$(serial)" \
    -subj "/CN=Heartbeat development CA $(date -u +%Y-%m-%dT%H:%M:%SZ)" -config "$TMP/ca.cnf" -out ca.pem)
  chmod 644 ca.pem
  echo "make-dev-certs: made a development CA in $OUT/ca.pem"
fi

# --- The broker ----------------------------------------------------------------
san=""
for h in "${HOSTS[@]}"; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+="${san:+, }IP:$h"; else san+="${san:+, }DNS:$h"; fi
done
cat >"$TMP/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
authorityKeyIdentifier = keyid
EOF
# OpenSSL prints "IP Address:…", the extension file says "IP:…".
wanted=$(tr ',' '\n' <<<"$san" | sed 's/^ *//; s/^IP:/IP Address:/' | sort)
have=$( { openssl x509 -in server.pem -noout -ext subjectAltName 2>/dev/null || true; } | tail -n +2 | tr ',' '\n' | sed 's/^ *//' | sort)
if usable server.pem server.key && [ "$wanted" = "$have" ]; then
  echo "make-dev-certs: keeping the broker certificate $OUT/server.pem"
else
  sign "${HOSTS[0]}" "$TMP/server.ext" server.pem server.key
  echo "make-dev-certs: made the broker certificate $OUT/server.pem for ${HOSTS[*]}"
fi

# --- The devices ---------------------------------------------------------------
cat >"$TMP/client.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF
for id in ${DEVICES[@]+"${DEVICES[@]}"}; do
  if usable "$id.pem" "$id.key" && [ "$(openssl x509 -in "$id.pem" -noout -subject -nameopt multiline | sed -n 's/^ *commonName *= *//p')" = "$id" ]; then
    echo "make-dev-certs: keeping $OUT/$id.pem"
  else
    sign "$id" "$TMP/client.ext" "$id.pem" "$id.key"
    echo "make-dev-certs: made $OUT/$id.pem (CN=$id)"
  fi
done
