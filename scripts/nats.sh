# Sourced by scripts/test and scripts/bench-events: makes sure a NATS server
# with JetStream answers at $NATS_HOST:$NATS_PORT. Where none answers on this
# machine, it starts Debian's nats-server (installing it first if missing),
# with JetStream, keeping its data under target/nats.

export NATS_HOST="${NATS_HOST:-127.0.0.1}" NATS_PORT="${NATS_PORT:-4222}"

nats_ready() {
    bash -c "exec 3<>/dev/tcp/$NATS_HOST/$NATS_PORT" 2>/dev/null
}

ensure_nats() {
    nats_ready && return 0
    case "$NATS_HOST" in
        127.0.0.1 | localhost | ::1) ;;
        *) echo "NATS at $NATS_HOST:$NATS_PORT does not answer" >&2; return 1 ;;
    esac
    if ! command -v nats-server >/dev/null 2>&1; then
        echo "installing nats-server (Debian package)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
    fi
    local dir
    dir="$(pwd)/target/nats"
    mkdir -p "$dir"
    echo "starting nats-server with JetStream on $NATS_HOST:$NATS_PORT" >&2
    nohup nats-server -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$dir" >"$dir/nats-server.log" 2>&1 &
    for _ in $(seq 1 30); do
        nats_ready && return 0
        sleep 0.5
    done
    echo "nats-server did not start; see $dir/nats-server.log" >&2
    return 1
}
