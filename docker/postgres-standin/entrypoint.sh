#!/bin/sh
# First start on an empty PGDATA: make the cluster, the user (with its password,
# checked with SCRAM over the network) and the database, as the official image
# does. Later starts find PG_VERSION and only run the server.
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$db" != "postgres" ]; then
        # Single-user mode: no server listens while the database is made.
        printf 'CREATE DATABASE "%s" OWNER "%s";\n' "$db" "$user" | postgres --single -D "$PGDATA" postgres > /dev/null
    fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
