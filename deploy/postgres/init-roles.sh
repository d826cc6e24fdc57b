#!/bin/sh
# docker-compose: the postgres image runs this once, on an empty data directory,
# as its superuser. Makes Heartbeat's logins and roles (roles.sql); the
# superuser is not used again.
set -eu
# The passwords reach psql through its environment (not its command line).
HB_PG_OWNER_PASSWORD=$(cat "$HB_PG_OWNER_PASSWORD_FILE") \
HB_PG_COLLECTOR_PASSWORD=$(cat "$HB_PG_COLLECTOR_PASSWORD_FILE") \
  psql -v ON_ERROR_STOP=1 -qtAX --username "$POSTGRES_USER" --dbname postgres -f /hb/roles.sql
