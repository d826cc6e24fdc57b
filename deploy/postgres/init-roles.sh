#!/bin/sh
# docker-compose: the postgres image runs this once, on an empty data directory,
# as its superuser. Makes Heartbeat's logins and roles (roles.sql); the
# superuser is not used again.
set -eu
psql -v ON_ERROR_STOP=1 -qtAX --username "$POSTGRES_USER" --dbname postgres \
  -v owner="$(cat "$HB_PG_OWNER_PASSWORD_FILE")" \
  -v collector="$(cat "$HB_PG_COLLECTOR_PASSWORD_FILE")" \
  -f /hb/roles.sql
