#!/bin/bash
# First start of the postgres container only: one role and database for the Prefect server, one
# role with two databases for Tiled (the catalog, and tabular storage for event data).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" \
     -v prefect_pw="$PREFECT_DB_PASSWORD" -v tiled_pw="$TILED_DB_PASSWORD" <<'SQL'
CREATE ROLE prefect LOGIN PASSWORD :'prefect_pw';
CREATE DATABASE prefect OWNER prefect;
CREATE ROLE tiled LOGIN PASSWORD :'tiled_pw';
CREATE DATABASE tiled OWNER tiled;
CREATE DATABASE tiled_tabular OWNER tiled;
SQL
