#!/usr/bin/env bash
# Start the local PostgreSQL server the tests use (Debian, as root) and print its URL on stdout,
# the only thing this script prints there. Safe to run again, also from several test sessions at
# once: a running server with its role and database is only checked, which takes under a second.
set -euo pipefail

ROLE=neurosam
PASSWORD=neurosam
DATABASE=neurosam_test
LOCK_FILE=/tmp/neurosam-start-postgres.lock

log() { echo "start_postgres: $*" >&2; }

install_packages() {
    if ! command -v pg_lsclusters >/dev/null || ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
        log "installing postgresql"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q postgresql >/dev/null ||
            { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }
    fi
}

# Debian's package creates a cluster on install; a machine set up without one gets one here.
ensure_cluster() {
    if [[ -z $(pg_lsclusters --no-header) ]]; then
        local version
        version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        log "creating cluster $version/main"
        pg_createcluster "$version" main >/dev/null
    fi
}

start_cluster() {
    local version=$1 name=$2 status=$3
    if [[ $status != online ]]; then
        log "starting cluster $version/$name"
        pg_ctlcluster "$version" "$name" start 9>&-  # the server must not inherit (and keep) the lock
    fi
}

sql_as_postgres() {
    runuser -u postgres -- psql --port "$PORT" --quiet --tuples-only --no-align -v ON_ERROR_STOP=1 --command "$1"
}

# The password is set every time, so the URL printed below always works.
ensure_role_and_database() {
    if [[ $(sql_as_postgres "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'") != 1 ]]; then
        log "creating role $ROLE"
        sql_as_postgres "CREATE ROLE $ROLE LOGIN"
    fi
    sql_as_postgres "ALTER ROLE $ROLE LOGIN PASSWORD '$PASSWORD'"
    if [[ $(sql_as_postgres "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'") != 1 ]]; then
        log "creating database $DATABASE"
        sql_as_postgres "CREATE DATABASE $DATABASE OWNER $ROLE"
    fi
}

if [[ $EUID -ne 0 ]]; then
    log "run as root (it installs and starts a system service)"
    exit 1
fi
cd /  # psql run as the postgres user complains about a working directory it cannot read
exec 9>"$LOCK_FILE"
flock 9
install_packages
ensure_cluster
read -r VERSION NAME PORT STATUS < <(pg_lsclusters --no-header | awk 'NR == 1 {print $1, $2, $3, $4}')
start_cluster "$VERSION" "$NAME" "$STATUS"
ensure_role_and_database
echo "postgresql://$ROLE:$PASSWORD@localhost:$PORT/$DATABASE"
