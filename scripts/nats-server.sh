#!/usr/bin/env bash
# A NATS server with JetStream for remote tasks, from nothing: installs `nats-server` with
# apt if it is missing, and runs it on loopback with a store directory of its own.
#
#   scripts/nats-server.sh install          install nats-server if missing
#   scripts/nats-server.sh start DIR [PORT] [ADDRESS] [USER:PASSWORD]
#                                           start a server storing in DIR (on a free port
#                                           unless PORT is given, or PORT is -1; on
#                                           127.0.0.1 unless ADDRESS is given; requiring
#                                           that user and password if given); prints its URL
#   scripts/nats-server.sh stop DIR         stop the server started with DIR
#
# `start` returns once the server accepts clients; its pid is in DIR/pid, its log in
# DIR/log. Starting again with the same DIR and PORT restarts it on the same store.
set -euo pipefail

install() {
    if command -v nats-server >/dev/null 2>&1; then
        return
    fi
    echo "nats-server is missing: installing it with apt" >&2
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nats-server >&2
}

start() {
    local dir=$1 port=${2:--1} address=${3:-127.0.0.1} credentials=${4:-}
    if [ -z "$port" ]; then port=-1; fi
    if [ -z "$address" ]; then address=127.0.0.1; fi
    local auth=()
    if [ -n "$credentials" ]; then
        auth=(--user "${credentials%%:*}" --pass "${credentials#*:}")
    fi
    install
    mkdir -p "$dir/store"
    : >"$dir/log"
    # `-p -1`: a free port, chosen by the server and read back from its log.
    # Its own output goes to the log: a caller reading ours must not wait for the server.
    nats-server -js -a "$address" -p "$port" -sd "$dir/store" -l "$dir/log" "${auth[@]}" \
        </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/pid"
    disown
    local url=""
    for _ in $(seq 1 200); do
        url=$(grep -o 'Listening for client connections on [0-9.]*:[0-9]*' "$dir/log" \
            | tail -1 | sed 's/.* on /nats:\/\//' || true)
        if [ -n "$url" ] && grep -q 'Server is ready' "$dir/log"; then
            echo "$url"
            return
        fi
        if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            break
        fi
        sleep 0.05
    done
    echo "nats-server did not start; its log:" >&2
    cat "$dir/log" >&2
    exit 1
}

stop() {
    local dir=$1
    [ -f "$dir/pid" ] || return 0
    local pid
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?a store directory}" "${3:-}" "${4:-}" "${5:-}" ;;
    stop) stop "${2:?the store directory}" ;;
    *)
        echo "usage: $0 install | start DIR [PORT] [ADDRESS] [USER:PASSWORD] | stop DIR" >&2
        exit 2
        ;;
esac
