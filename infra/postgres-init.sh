#!/bin/bash
# Run once by the postgres image when its data volume is empty: one role and one database per
# service, so a leaked MLflow password does not open the Prefect database.
# The passwords come from the container's environment (infra/.env), never from this file.
set -euo pipefail
: "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD in infra/.env}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in infra/.env}"

create() {  # create <role/database name> <password>
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v name="$1" -v pass="$2" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'pass';
CREATE DATABASE :"name" OWNER :"name";
SQL
}

create prefect "$PREFECT_DB_PASSWORD"
create mlflow "$MLFLOW_DB_PASSWORD"
