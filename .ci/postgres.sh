#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the multi-worker tests, in CI and on a developer's machine.
#
#   .ci/postgres.sh start DIR   install Debian's postgresql if absent (as root), initdb a cluster in DIR, start it
#                               on a free loopback port, create database "autoprune", print its URL on stdout
#   .ci/postgres.sh stop DIR    stop that server (DIR is left for the caller to remove)
#   .ci/postgres.sh restart DIR start a stopped server again on its port, with its data (a database that came back)
#
#   export AUTOPRUNE_TEST_POSTGRES="$(.ci/postgres.sh start /tmp/pg)"   # then: pytest tests/test_workers.py
#   .ci/postgres.sh stop /tmp/pg
#
# PostgreSQL refuses to run as root: as root the server runs as the `postgres` user the package creates. The cluster
# trusts local connections (it listens on loopback only and lives as long as the test run) and skips fsync.
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
if [[ -z "$cmd" || -z "$dir" ]]; then
    echo "usage: $0 start|stop|restart DIR" >&2
    exit 2
fi

bindir() {
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -z "$d" && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "installing Debian's postgresql package" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
        d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    fi
    if [[ -z "$d" || ! -x "$d/initdb" ]]; then
        echo "no PostgreSQL server binaries (install Debian's postgresql package)" >&2
        exit 1
    fi
    echo "$d"
}

as_owner() {  # run a server binary as the cluster's owner: postgres when we are root, else ourselves
    if [[ $(id -u) == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

serve() {  # BIN DIR PORT; niced: the test machine has two cores and the server is only a test fixture
    as_owner nice -n 19 "$1/pg_ctl" -D "$2/data" -l "$2/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $3 -k $2 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >&2 || { cat "$2/server.log" >&2; exit 1; }
}

case "$cmd" in
start)
    bin="$(bindir)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [[ $(id -u) == 0 ]]; then
        chown postgres "$dir"
    fi
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as_owner "$bin/initdb" -D "$dir/data" -U autoprune --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    serve "$bin" "$dir" "$port"
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U autoprune autoprune
    echo "$port" >"$dir/port"
    echo "postgresql://autoprune@127.0.0.1:$port/autoprune"
    ;;
restart)
    bin="$(bindir)"
    dir="$(cd "$dir" && pwd)"
    port="$(cat "$dir/port")"
    serve "$bin" "$dir" "$port"
    echo "postgresql://autoprune@127.0.0.1:$port/autoprune"
    ;;
stop)
    bin="$(bindir)"
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2
    fi
    ;;
*)
    echo "usage: $0 start|stop|restart DIR" >&2
    exit 2
    ;;
esac
