#!/usr/bin/env bash
# Scripted fault run: kill -9 moescope at random points while it records (`run --headless
# --record`) and while it exports (`run --headless --export json -o`), then open what is left
# with replay --summary and export. Prints one line of figures per mode:
#   cases tried, faults survived (the file opens and exports), steps lost, steps in flight.
# Steps lost = steps the run had printed as finished that the file does not hold (goal 0); the
# step in flight is the one being written when the kill came (skipped as an incomplete line).
# Usage: tests/fault_run.sh [path/to/moescope] [cases per mode]   (tests/fault_run.rs runs it)
set -euo pipefail

BIN=${1:-${MOESCOPE_BIN:-target/release/moescope}}
CASES=${2:-20}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
LAYER=(--backend cpu --preset deepseek-v3 --hidden 64 --intermediate 64 --tokens 8 --telemetry-hz 0)

# A random delay of 50–800 ms.
pause() { sleep "0.$(printf '%03d' $((RANDOM % 750 + 50)))"; }

complete_lines() { [ -f "$1" ] && tr -cd '\n' <"$1" | wc -c || echo 0; }

fail=0
for mode in record export; do
    tried=0 survived=0 lost=0 in_flight=0
    for i in $(seq 1 "$CASES"); do
        work="$DIR/$mode-$i"
        mkdir -p "$work"
        if [ "$mode" = record ]; then
            session="$work/s.jsonl"
            "$BIN" run --headless "${LAYER[@]}" --steps 1000000 --record "$session" \
                >"$work/stdout" 2>/dev/null &
        else
            session="$work/out.json.partial.jsonl"
            "$BIN" run --headless "${LAYER[@]}" --steps 1000000 --export json -o "$work/out.json" \
                >/dev/null 2>&1 &
        fi
        pid=$!
        pause
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        tried=$((tried + 1))
        # The steps the run finished: printed lines (record), or complete lines (export).
        if [ "$mode" = record ]; then
            finished=$(complete_lines "$work/stdout")
        else
            finished=$(( $(complete_lines "$session") - 1 ))
        fi
        [ "$finished" -lt 0 ] && finished=0
        if ! [ -f "$session" ]; then
            # Killed before the session existed: nothing started, nothing lost.
            survived=$((survived + 1))
            continue
        fi
        if "$BIN" replay --summary "$session" >"$work/summary" 2>"$work/warnings" \
            && "$BIN" export "$session" --format csv -o "$work/out.csv" 2>/dev/null; then
            kept=$(grep -Eo '^ *steps +[0-9]+' "$work/summary" | grep -Eo '[0-9]+$' || echo 0)
            survived=$((survived + 1))
            if [ "$kept" -lt "$finished" ]; then
                lost=$((lost + finished - kept))
            fi
            grep -q 'incomplete' "$work/warnings" && in_flight=$((in_flight + 1))
        elif [ "$finished" -eq 0 ] && grep -q 'no valid step\|empty\|incomplete' "$work/warnings"; then
            # Killed while writing the header or the first step: refused, nothing was finished.
            survived=$((survived + 1))
        else
            echo "FAIL: $mode case $i: the file did not open:" >&2
            cat "$work/warnings" >&2
            fail=1
        fi
        if ls -a "$work" | grep -q '\.tmp$'; then
            echo "FAIL: $mode case $i left a temporary file" >&2
            fail=1
        fi
    done
    echo "$mode: cases $tried, faults survived $survived, steps lost $lost, steps in flight $in_flight"
    [ "$lost" -eq 0 ] || fail=1
done
[ "$fail" -eq 0 ] && echo "OK: every fault survived, no finished step lost"
exit "$fail"
