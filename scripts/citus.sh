# Sourced by scripts/test and scripts/check-readme when LOYALTY_TEST_CITUS_URL
# names a Citus coordinator (docs/scale-out.md): every test database is then a
# fresh Citus database, distributed by the migrations.
#
# What it needs: a coordinator whose database in the URL (usually `postgres`)
# has the `citus` extension and its workers added (`citus_add_node`), the same
# user and trust (or a password file) on every node.
#
# What it does, idempotently: `template1` of every node gets the extension, the
# coordinator's `template1` knows the workers (so that a database created from
# it is a Citus database with those workers), and `create database` on the
# coordinator is propagated to the workers. A session left in `template1`
# would block every `create database`, so the ones this leaves (Citus's
# maintenance daemon) are ended.

# prepare_citus URL
prepare_citus() {
    local url="$1" database nodes coordinator node host port
    database=$(psql "$url" -tAc "select current_database()") || {
        echo "the Citus coordinator at LOYALTY_TEST_CITUS_URL does not answer" >&2
        return 1
    }
    if ! psql "$url" -tAc "select citus_is_coordinator()" 2>/dev/null | grep -q t; then
        echo "LOYALTY_TEST_CITUS_URL is not a Citus coordinator (citus installed, workers added)" >&2
        return 1
    fi
    coordinator=$(psql "$url" -tAc "select nodename || ':' || nodeport from pg_dist_node where groupid = 0")
    nodes=$(psql "$url" -tAc "select nodename || ':' || nodeport from pg_dist_node where groupid <> 0 and noderole = 'primary' order by nodeid")
    [ -n "$coordinator" ] && [ -n "$nodes" ] || {
        echo "the coordinator must be in its own metadata (citus_set_coordinator_host) and have workers" >&2
        return 1
    }
    for node in $coordinator $nodes; do
        host=${node%:*} port=${node##*:}
        psql -q -h "$host" -p "$port" -d template1 -c "create extension if not exists citus" 2>&1 | grep -v NOTICE || true
    done
    host=${coordinator%:*} port=${coordinator##*:}
    psql -q -h "$host" -p "$port" -d template1 -tA >/dev/null <<SQL
select citus_set_coordinator_host('$host', $port) where not exists (select 1 from pg_dist_node where groupid = 0);
$(for node in $nodes; do
    echo "select citus_add_node('${node%:*}', ${node##*:}) where not exists (select 1 from pg_dist_node where nodename = '${node%:*}' and nodeport = ${node##*:});"
done)
SQL
    psql -q "$url" -c "alter database \"$database\" set citus.enable_create_database_propagation = on"
    # A failed test leaves its database, where the maintenance daemon then
    # sits: the next run could not drop it to start afresh.
    psql "$url" -tAc "select datname from pg_database where datname like '\_sqlx\_test\_%'" |
        while read -r leftover; do
            psql -q "$url" -c "set citus.enable_create_database_propagation = on" \
                -c "drop database if exists \"$leftover\" with (force)"
        done
    for node in $coordinator $nodes; do
        host=${node%:*} port=${node##*:}
        psql -q -h "$host" -p "$port" -d postgres -tA >/dev/null \
            -c "select pg_terminate_backend(pid) from pg_stat_activity where datname = 'template1' and pid <> pg_backend_pid()"
    done
}

# For the scripts that create their database with psql (check-readme, bench):
# prepares the coordinator of LOYALTY_TEST_CITUS_URL, if set, and points
# PGHOST and PGPORT at it.
use_citus_if_asked() {
    [ -n "${LOYALTY_TEST_CITUS_URL:-}" ] || return 0
    prepare_citus "$LOYALTY_TEST_CITUS_URL"
    PGHOST=$(psql "$LOYALTY_TEST_CITUS_URL" -tAc "select host(inet_server_addr())")
    PGPORT=$(psql "$LOYALTY_TEST_CITUS_URL" -tAc "select inet_server_port()")
    export PGHOST PGPORT
}
