# Sourced by scripts/test, scripts/check-readme and scripts/bench when
# LOYALTY_TEST_CITUS_URL names a Citus coordinator (docs/scale-out.md): every
# database they create is then a fresh Citus database, distributed by the
# migrations.
#
# What it needs: a coordinator dedicated to tests, whose `postgres` database
# (the URL's) has the `citus` extension, the coordinator in its own metadata
# (`citus_set_coordinator_host`) and its workers added (`citus_add_node`); the
# same user, with trust or a password file, on every node.
#
# What it does, idempotently: `template1` of every node gets the extension, and
# the coordinator's `template1` knows the workers, so that a database created
# from it is a Citus database with those workers; `create database` on the
# coordinator is propagated to the workers. A session left in `template1`
# would block every `create database`, so the ones this leaves (Citus's
# maintenance daemon) are ended; so are the test databases failed runs left.

# The URL's host, port, user and database: CITUS_HOST, CITUS_PORT, CITUS_USER,
# CITUS_DATABASE (postgres://[user@]host[:port]/database[?options]).
parse_citus_url() {
    local pattern='^postgres(ql)?://(([^@/:]+)(:[^@/]*)?@)?([^:/?]+)(:([0-9]+))?/([^?]+)'
    if [[ ! "$1" =~ $pattern ]]; then
        echo "LOYALTY_TEST_CITUS_URL must look like postgres://user@host:port/postgres" >&2
        return 1
    fi
    CITUS_USER=${BASH_REMATCH[3]:-$PGUSER} CITUS_HOST=${BASH_REMATCH[5]}
    CITUS_PORT=${BASH_REMATCH[7]:-5432} CITUS_DATABASE=${BASH_REMATCH[8]}
    if [ "$CITUS_DATABASE" != postgres ]; then
        echo "LOYALTY_TEST_CITUS_URL must name the coordinator's postgres database" >&2
        return 1
    fi
}

# Runs SQL ($2...) on node $1 (host:port) in database template1 or postgres
# ($DB), stopping at the first error, quiet but for warnings and errors.
citus_sql() {
    local node="$1"
    shift
    PGOPTIONS='-c client_min_messages=warning' psql -q -v ON_ERROR_STOP=1 -tA \
        -h "${node%:*}" -p "${node##*:}" -U "$CITUS_USER" -d "$DB" "$@"
}

# prepare_citus URL
prepare_citus() {
    local url="$1" nodes coordinator node leftover
    parse_citus_url "$url" || return 1
    coordinator="$CITUS_HOST:$CITUS_PORT"
    if [ "$(DB=postgres citus_sql "$coordinator" -c "select citus_is_coordinator()" 2>/dev/null)" != t ]; then
        echo "LOYALTY_TEST_CITUS_URL is not a Citus coordinator (citus installed, workers added)" >&2
        return 1
    fi
    nodes=$(DB=postgres citus_sql "$coordinator" \
        -c "select nodename || ':' || nodeport from pg_dist_node where groupid <> 0 and noderole = 'primary' order by nodeid")
    if [ -z "$nodes" ]; then
        echo "the coordinator has no workers (citus_add_node)" >&2
        return 1
    fi
    for node in $coordinator $nodes; do
        DB=template1 citus_sql "$node" -c "create extension if not exists citus" >/dev/null
    done
    DB=template1 citus_sql "$coordinator" >/dev/null <<SQL
select citus_set_coordinator_host('$CITUS_HOST', $CITUS_PORT)
    where not exists (select 1 from pg_dist_node where groupid = 0);
$(for node in $nodes; do
    echo "select citus_add_node('${node%:*}', ${node##*:})
    where not exists (select 1 from pg_dist_node where nodename = '${node%:*}' and nodeport = ${node##*:});"
done)
SQL
    DB=postgres citus_sql "$coordinator" -c "alter database postgres set citus.enable_create_database_propagation = on"
    # A failed test leaves its database, where the maintenance daemon then
    # sits (and, on a worker, sometimes a connection of the test's): the next
    # run could not drop it to start afresh. One run at a time, so no session
    # of a test database is in use here.
    for node in $coordinator $nodes; do
        DB=postgres citus_sql "$node" >/dev/null \
            -c "select pg_terminate_backend(pid) from pg_stat_activity where datname like '\_sqlx\_test\_%'"
    done
    for leftover in $(DB=postgres citus_sql "$coordinator" \
        -c "select datname from pg_database where datname like '\_sqlx\_test\_%'"); do
        DB=postgres citus_sql "$coordinator" -c "set citus.enable_create_database_propagation = on" \
            -c "drop database if exists \"$leftover\" with (force)"
    done
    for node in $coordinator $nodes; do
        DB=postgres citus_sql "$node" >/dev/null \
            -c "select pg_terminate_backend(pid) from pg_stat_activity where datname = 'template1' and pid <> pg_backend_pid()"
    done
}

# For the scripts that create their database with psql (check-readme, bench):
# prepares the coordinator of LOYALTY_TEST_CITUS_URL, if set, and points
# PGHOST, PGPORT and PGUSER at it.
use_citus_if_asked() {
    [ -n "${LOYALTY_TEST_CITUS_URL:-}" ] || return 0
    prepare_citus "$LOYALTY_TEST_CITUS_URL"
    export PGHOST="$CITUS_HOST" PGPORT="$CITUS_PORT" PGUSER="$CITUS_USER"
}
