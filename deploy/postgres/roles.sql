-- Heartbeat's PostgreSQL logins and roles, made once by an administrator (a
-- superuser), who then steps aside:
--
--   hb_owner      LOGIN: owns the `heartbeat` database and its schema; runs
--                 `hb-collector migrate`.
--   hb_collector  LOGIN: runs `hb-collector`; a member of hb_writer only.
--   hb_writer     reads and writes the rows the collector ingests; no DDL.
--   hb_reader     the dashboard's reads: SELECT on the dashboard_* views.
--
-- The migrations grant hb_writer and hb_reader their privileges. Idempotent; the
-- logins' passwords come from the environment of psql (15 or later), never from
-- its command line, which `ps` shows:
--
--   HB_PG_OWNER_PASSWORD=… HB_PG_COLLECTOR_PASSWORD=… psql -f roles.sql
\getenv owner HB_PG_OWNER_PASSWORD
\getenv collector HB_PG_COLLECTOR_PASSWORD
SELECT format('CREATE ROLE %I', r)
FROM unnest(ARRAY['hb_owner', 'hb_collector', 'hb_writer', 'hb_reader']) r
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec
ALTER ROLE hb_owner LOGIN PASSWORD :'owner';
ALTER ROLE hb_collector LOGIN PASSWORD :'collector';
GRANT hb_reader TO hb_writer;
GRANT hb_writer, hb_reader TO hb_owner;
GRANT hb_writer TO hb_collector;
SELECT 'CREATE DATABASE heartbeat OWNER hb_owner'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'heartbeat') \gexec
