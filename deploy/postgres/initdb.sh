#!/bin/sh
# The logistics database behind the broker's PostgreSQL door, for deploy/compose.yaml.
# The postgres image runs this once, when it initialises an empty data directory
# (/docker-entrypoint-initdb.d), as its superuser ($POSTGRES_USER) in $POSTGRES_DB.
#
# The broker refuses to open the door with a login that is a superuser, has BYPASSRLS
# or owns the tables it guards: a door bug must not be able to turn off the server's
# own checks. So the tables belong to the superuser, and the broker gets a login of
# its own ($BROKER_DOOR_USER) that may only read and change their rows.
set -eu
: "${BROKER_DOOR_PASSWORD:?set BROKER_DOOR_PASSWORD: the password of the broker's own database login}"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
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

GRANT USAGE ON SCHEMA public TO :"door_user";
GRANT SELECT, INSERT, UPDATE, DELETE ON waybills, customers TO :"door_user";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"door_user";
SQL
