#!/usr/bin/env bash
# First start of the source container: point TREMpy at its database and RabbitMQ, create the extension.
set -euo pipefail
: "${TREMPY_AMQP_URL:?set TREMPY_AMQP_URL}"
cat >> "$PGDATA/postgresql.auto.conf" <<CONF
trempy.databases = '"${POSTGRES_DB}"'
trempy.amqp_url = '${TREMPY_AMQP_URL}'
CONF
chmod 600 "$PGDATA/postgresql.auto.conf"
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c 'CREATE EXTENSION IF NOT EXISTS trempy'
