#!/usr/bin/env bash
# Sends SIGTERM, SIGHUP and SIGINT to the real TUI in tmux while it records a session, and checks
# afterwards: exit status 128+N, the alternate screen left, the cursor shown, mouse capture off,
# the terminal out of raw mode (icanon and echo back on), and the session file whole.
# Usage: tests/tui_signals.sh [path/to/moescope]   (tests/ui_tmux.rs runs it under cargo test)
set -euo pipefail

BIN=${1:-${MOESCOPE_BIN:-target/debug/moescope}}
if ! command -v tmux >/dev/null 2>&1; then
    echo "SKIP: tmux is not installed (apt-get install -y tmux)"
    exit 0
fi
if [ ! -x "$BIN" ]; then
    echo "FAIL: no moescope binary at $BIN" >&2
    exit 1
fi

SOCK="moescope-signals-$$"
DIR=$(mktemp -d)
tm() { tmux -L "$SOCK" "$@"; }
trap 'tm kill-server >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT

screen() { tm capture-pane -p -t sig; }
flag() { tm display-message -p -t sig "#{$1}"; }

wait_for() {
    local i
    for i in $(seq 1 300); do
        if screen | grep -Eq -- "$1"; then
            return 0
        fi
        sleep 0.1
    done
    echo "FAIL: waited for $2 (/$1/); the screen was:" >&2
    screen >&2
    exit 1
}

expect_flag() {
    local got
    got=$(flag "$1")
    if [ "$got" != "$2" ]; then
        echo "FAIL: after $3, tmux #{$1} is $got; expected $2" >&2
        screen >&2
        exit 1
    fi
}

restart_server() {
    tm kill-server >/dev/null 2>&1 || true
    # A new socket each time: a command sent while the old server is still going away would
    # reach it and fail with "server exited unexpectedly".
    SERVERS=$((${SERVERS:-0} + 1))
    SOCK="moescope-signals-$$-$SERVERS"
}

for pair in TERM:15 HUP:1 INT:2; do
    name=${pair%%:*}
    num=${pair##*:}
    session="$DIR/$name.jsonl"
    restart_server
    # `exec` keeps the pid written to the file: the shell becomes moescope.
    tm new-session -d -s sig -x 120 -y 40 \
        "bash -c 'echo \$\$ > $DIR/pid; exec $BIN --backend cpu --preset deepseek-v3 --tokens 4 --hidden 64 --intermediate 64 --telemetry-hz 0 --record $session'; echo \"EXIT=\$?\"; stty -a | grep -Eo -- '(^| )-?(icanon|echo)( |$)' | tr -d ' ' | tr '\n' ' '; echo; sleep 60"
    wait_for '1 Overview' "the TUI to open ($name)"
    wait_for 'step [0-9]+ · T=4' "a step ($name)"
    expect_flag alternate_on 1 "opening the TUI"
    kill -"$name" "$(cat "$DIR/pid")"
    wait_for "^EXIT=$((128 + num))" "SIG$name to exit with status $((128 + num))"
    expect_flag alternate_on 0 "SIG$name"
    expect_flag cursor_flag 1 "SIG$name"
    expect_flag mouse_any_flag 0 "SIG$name"
    expect_flag mouse_standard_flag 0 "SIG$name"
    if screen | grep -Eq -- '-icanon|-echo '; then
        echo "FAIL: after SIG$name the terminal is still in raw mode:" >&2
        screen >&2
        exit 1
    fi
    screen | grep -Eq 'icanon' || { echo "FAIL: no stty output after SIG$name" >&2; screen >&2; exit 1; }
    if screen | grep -q '1 Overview'; then
        echo "FAIL: the TUI is still on the screen after SIG$name" >&2
        screen >&2
        exit 1
    fi
    # The session holds every finished step and ends on a whole line.
    "$BIN" replay --summary "$session" >"$DIR/summary" 2>"$DIR/warnings"
    if [ -s "$DIR/warnings" ]; then
        echo "FAIL: the session recorded before SIG$name has damage:" >&2
        cat "$DIR/warnings" >&2
        exit 1
    fi
    grep -Eq 'steps +[1-9]' "$DIR/summary" || { echo "FAIL: no steps in $session" >&2; cat "$DIR/summary" >&2; exit 1; }
    echo "SIG$name: exit $((128 + num)), terminal restored, $(grep -Eo 'steps +[0-9]+' "$DIR/summary" | head -1)"
done
echo "OK: SIGTERM, SIGHUP and SIGINT restore the terminal and keep the session"
