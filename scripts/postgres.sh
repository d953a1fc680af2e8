# Sourced by scripts/run and scripts/test: makes sure a PostgreSQL server answers
# at $PGHOST:$PGPORT. Where none answers on this machine, it starts the local
# Debian cluster, and installs PostgreSQL first if the machine has none.

export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"

postgres_ready() {
    pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null
}

ensure_postgres() {
    postgres_ready && return 0
    case "$PGHOST" in
        127.0.0.1 | localhost | ::1) ;;
        *) echo "PostgreSQL at $PGHOST:$PGPORT does not answer" >&2; return 1 ;;
    esac
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        echo "installing PostgreSQL (Debian packages)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
        echo "no PostgreSQL cluster under /etc/postgresql" >&2
        return 1
    fi
    echo "starting the local PostgreSQL $version cluster" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        postgres_ready && return 0
        sleep 1
    done
    echo "PostgreSQL did not start" >&2
    return 1
}

# Creates database "$1" unless it exists.
ensure_database() {
    local name="$1"
    if ! psql -d postgres -tAc "select 1 from pg_database where datname = '$name'" | grep -q 1; then
        echo "creating database $name" >&2
        psql -d postgres -qc "create database \"$name\""
    fi
}
