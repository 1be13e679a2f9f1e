# Sourced by scripts/test: start a throw-away PostgreSQL server for the tests, as a non-root
# user in a temporary directory on a free loopback port, and export MRAGW_TEST_PG_DSN.
# The server is stopped by the EXIT trap that the caller installs (pg_temp_stop).
pg_temp_bindir() {
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir; return 0
    fi
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    return 1
}

pg_temp_start() {
    local bindir user port
    bindir="$(pg_temp_bindir)" || return 1
    PG_TEMP_DIR="$(mktemp -d -t mragw-pg.XXXXXX)"
    user="$(id -un)"
    PG_RUN=()
    if [ "$(id -u)" = "0" ]; then
        # PostgreSQL refuses to run as root: use a dedicated unprivileged account.
        user="mragwtest"
        id -u "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
        chown "$user" "$PG_TEMP_DIR"
        PG_RUN=(runuser -u "$user" --)
    fi
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
    "${PG_RUN[@]}" "$bindir/initdb" -D "$PG_TEMP_DIR/data" -U mragw --auth=trust -E UTF8 >"$PG_TEMP_DIR/initdb.log" 2>&1 \
        || { cat "$PG_TEMP_DIR/initdb.log" >&2; return 1; }
    "${PG_RUN[@]}" "$bindir/pg_ctl" -D "$PG_TEMP_DIR/data" -l "$PG_TEMP_DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_TEMP_DIR -c fsync=off -c max_connections=200" start >/dev/null \
        || { cat "$PG_TEMP_DIR/server.log" >&2; return 1; }
    PG_TEMP_BINDIR="$bindir"
    export MRAGW_TEST_PG_DSN="postgresql+asyncpg://mragw@127.0.0.1:$port/postgres"
    echo "started PostgreSQL for the tests on 127.0.0.1:$port" >&2
}

pg_temp_stop() {
    if [ -n "${PG_TEMP_DIR:-}" ] && [ -d "$PG_TEMP_DIR/data" ]; then
        "${PG_RUN[@]}" "$PG_TEMP_BINDIR/pg_ctl" -D "$PG_TEMP_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_TEMP_DIR"
    fi
}
