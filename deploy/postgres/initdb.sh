#!/bin/sh
# The logistics database behind the broker's PostgreSQL door, for deploy/compose.yaml.
# The postgres image runs this once, when it initialises an empty data directory
# (/docker-entrypoint-initdb.d), as its superuser ($POSTGRES_USER) in $POSTGRES_DB.
#
# The broker refuses to open the door with a login that is a superuser, has BYPASSRLS
# or owns the tables it guards: a door bug must not be able to turn off the server's
# own checks. So the tables belong to the superuser, and the broker gets a login of
# its own ($BROKER_DOOR_USER) that may only read and change their rows: not make TEMP
# tables or pg_temp functions (PUBLIC's default grant on a database, taken back here),
# not read a sequence's last_value (the row count of every branch: USAGE, for nextval, is
# all it gets) and not use the large-object functions (lo_*, loread, lowrite: storage
# outside the tables the door guards).
set -eu
: "${BROKER_DOOR_PASSWORD:?set BROKER_DOOR_PASSWORD: the password of the broker's own database login}"
: "${POSTGRES_DB:?set POSTGRES_DB: the database this script sets up}"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v db="$POSTGRES_DB" \
     -v door_user="${BROKER_DOOR_USER:-broker_door}" -v door_password="$BROKER_DOOR_PASSWORD" <<'SQL'
CREATE ROLE :"door_user" LOGIN PASSWORD :'door_password'
    NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION;

-- The tables policies/tables.toml maps (branch column and PII columns as it names them).
CREATE TABLE waybills (
    id serial PRIMARY KEY,
    waybill_no text NOT NULL UNIQUE,
    branch_code text NOT NULL,
    sender_name text, sender_phone text, sender_address text,
    recipient_name text, recipient_phone text, recipient_address text,
    status text NOT NULL DEFAULT 'created',
    weight_kg numeric(6,2) NOT NULL DEFAULT 1.0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE customers (
    id serial PRIMARY KEY,
    branch_code text NOT NULL,
    name text, phone text, address text
);

-- Sample rows for the demo roster's branches (policies/roster.csv).
INSERT INTO waybills (waybill_no, branch_code, sender_name, sender_phone, recipient_name, recipient_phone, status)
SELECT 'SF' || lpad((b * 100000 + g)::text, 10, '0'), 'BR00' || b, 'Sender ' || g, '138' || lpad(g::text, 8, '0'),
       'Recipient ' || g, '139' || lpad(g::text, 8, '0'),
       CASE WHEN g % 3 = 0 THEN 'delivered' ELSE 'in_transit' END
FROM generate_series(1, 4) AS b, generate_series(1, 250) AS g;
INSERT INTO customers (branch_code, name, phone)
SELECT 'BR00' || b, 'Customer ' || g, '137' || lpad(g::text, 8, '0')
FROM generate_series(1, 4) AS b, generate_series(1, 25) AS g;

-- PUBLIC's default grant on a database is CONNECT and TEMPORARY: the door login gets CONNECT
-- alone (no TEMP tables, no pg_temp functions to shadow or stash with).
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"door_user";
GRANT USAGE ON SCHEMA public TO :"door_user";
GRANT SELECT, INSERT, UPDATE, DELETE ON waybills, customers TO :"door_user";
-- USAGE is nextval (the serial defaults) and currval; SELECT would add last_value, a count
-- of every branch's rows.
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO :"door_user";
-- The large-object functions PUBLIC may run by default (PostgreSQL 15: lo_create, lo_creat,
-- lo_open, lo_close, loread, lowrite, lo_lseek[64], lo_tell[64], lo_truncate[64], lo_unlink,
-- lo_get, lo_put, lo_from_bytea; lo_import and lo_export are superuser-only already), every
-- overload, found by name so a new one is not missed. pg_proc is per database: this one.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace
          AND (p.proname LIKE 'lo\_%' OR p.proname IN ('loread', 'lowrite'))
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;
SQL
