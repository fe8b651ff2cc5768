#!/usr/bin/env bash
# Local Redis and Postgres for chatd, in a data folder, as plain background
# processes (no pg_ctl daemon): source this file, then
#   services_start_redis DIR PORT      -> pid in DIR/redis.pid
#   services_start_postgres DIR PORT   -> pid in DIR/postgres.pid, db "chatd"
#   services_stop DIR                  -> stops what the two above started
#   services_redis_unix_url DIR        -> unix:// URL of DIR's Redis socket, or nothing
#   services_pg_unix_conninfo DIR PORT -> libpq conninfo of DIR's Postgres socket, or nothing
#   services_redact_url URL            -> URL with its password shown as ***
#   services_end_pids PID...           -> ends processes the caller started
# Postgres runs as the postgres user when we are root (initdb refuses root).
#
# Durable by default (./run.sh): Postgres with fsync and synchronous_commit on,
# Redis with an append-only file fsynced before each reply (appendfsync always;
# REDIS_APPENDFSYNC=everysec fsyncs once a second instead: README "Durability"
# says what each keeps). SERVICES_FAST=1 -- set by ./test.sh only -- turns
# durability off for speed: never use it where an ack must mean stored.
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

_services_fast() { [ "${SERVICES_FAST:-0}" = 1 ]; }

services_start_redis() {
    local dir=$1 port=$2
    mkdir -p "$dir/redis"
    local fsync=${REDIS_APPENDFSYNC:-always}
    case $fsync in
        always|everysec) ;;
        *) echo "REDIS_APPENDFSYNC must be always or everysec, not '$fsync'" >&2; return 1 ;;
    esac
    local persist=(--appendonly yes --appendfsync "$fsync")
    _services_fast && persist=(--appendonly no)
    # its unix socket too (unix:// in CHAT_REDIS_URL: no TCP per command), where
    # the path fits a sockaddr_un; REDIS_NO_UNIXSOCKET=1 leaves it out
    local sock=() sp
    sp=$(cd "$dir/redis" && pwd)/redis.sock
    [ "${REDIS_NO_UNIXSOCKET:-0}" != 1 ] && [ ${#sp} -le 100 ] &&
        sock=(--unixsocket "$sp" --unixsocketperm 700)
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/redis" --save '' \
        "${persist[@]}" "${sock[@]}" --daemonize no --loglevel warning \
        >"$dir/redis/redis.log" 2>&1 &
    echo $! >"$dir/redis.pid"
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "redis did not start on port $port (see $dir/redis/redis.log)" >&2
    return 1
}

_pg_as() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

services_start_postgres() {
    local dir=$1 port=$2 pgdir="$1/pg"
    # As root, Postgres runs as "postgres", which must be able to reach the
    # folder; a checkout under /root is not reachable. Then the data goes to
    # the postgres user's home (/var/lib/postgresql: it survives a reboot, so
    # ./run.sh's history does), or /tmp for the test suite's throwaway ones.
    if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
        local home=/tmp
        ! _services_fast && runuser -u postgres -- test -w /var/lib/postgresql 2>/dev/null &&
            home=/var/lib/postgresql
        pgdir="$home/chatd-pg-$(printf '%s' "$dir" | md5sum | cut -c1-12)"
        echo "services: $dir is not reachable by the postgres user; Postgres data in $pgdir" >&2
    fi
    mkdir -p "$pgdir"
    [ "$(id -u)" = 0 ] && chown postgres: "$pgdir" && chmod 700 "$pgdir"
    if [ ! -f "$pgdir/PG_VERSION" ]; then
        _pg_as "$PGBIN/initdb" -D "$pgdir" -U postgres -A trust -E UTF8 >"$dir/initdb.log" 2>&1 ||
            { echo "initdb failed (see $dir/initdb.log)" >&2; return 1; }
    fi
    local durability=(-c fsync=on -c synchronous_commit=on -c full_page_writes=on)
    _services_fast && durability=(-c fsync=off -c synchronous_commit=off -c full_page_writes=off)
    _pg_as "$PGBIN/postgres" -D "$pgdir" -p "$port" -k "$pgdir" -c listen_addresses=127.0.0.1 \
        "${durability[@]}" -c max_connections=200 >"$dir/postgres.log" 2>&1 &
    echo $! >"$dir/postgres.pid"
    echo "$pgdir" >"$dir/postgres.datadir"
    for _ in $(seq 1 200); do
        if "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port"; then
            psql -h 127.0.0.1 -p "$port" -U postgres -tAc \
                "SELECT 1 FROM pg_database WHERE datname='chatd'" | grep -q 1 ||
                psql -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE chatd" >/dev/null
            return 0
        fi
        sleep 0.1
    done
    echo "postgres did not start on port $port (see $dir/postgres.log)" >&2
    return 1
}

services_stop() {
    local dir=$1 f pid
    # runuser's pid is recorded; stop the postmaster itself too
    if [ -f "$dir/postgres.datadir" ] && [ -f "$(cat "$dir/postgres.datadir")/postmaster.pid" ]; then
        pid=$(head -1 "$(cat "$dir/postgres.datadir")/postmaster.pid")
        kill "$pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        rm -f "$dir/postgres.datadir"
    fi
    for f in "$dir/redis.pid" "$dir/postgres.pid"; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        rm -f "$f"
    done
}

# How chatd reaches the Redis and Postgres started in DIR over their unix
# sockets (no TCP stack per command: docs/cost.md section 20); nothing when
# there is no socket (a path too long for one, a relative Postgres socket
# directory, or one with ' or \ that a libpq value cannot carry), and the
# caller uses TCP. The path of the Redis socket is percent-encoded.
services_redis_unix_url() {
    [ -S "$1/redis/redis.sock" ] || return 0
    local p
    p="$(cd "$1/redis" && pwd)/redis.sock"
    p=${p//%/%25}; p=${p// /%20}; p=${p//\?/%3F}; p=${p//#/%23}
    printf 'unix://%s\n' "$p"
}
services_pg_unix_conninfo() {
    local d
    d=$(cat "$1/postgres.datadir" 2>/dev/null) || return 0
    [[ $d == /* ]] && [ -S "$d/.s.PGSQL.$2" ] && [ "${d//[\'\\]/}" = "$d" ] || return 0
    printf "host='%s' port=%s user=postgres dbname=chatd\n" "$d" "$2"
}

# A Redis URL or libpq conninfo / URL fit to print: a password shown as ***.
services_redact_url() {
    sed -E 's#(://[^/@]*:)[^/@]*@#\1***@#; s#(password=)[^ ]*#\1***#' <<<"$1"
}

# Ends processes the caller started, by pid: SIGTERM to each, then SIGKILL to
# any still there after 5 s.
services_end_pids() {
    local p
    for p in "$@"; do kill "$p" 2>/dev/null; done
    for p in "$@"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$p" 2>/dev/null
    done
}
