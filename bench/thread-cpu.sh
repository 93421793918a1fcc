#!/usr/bin/env bash
# Where the broker's CPU goes by thread on the durable path: starts a fresh Tern (release build,
# its own data directory), runs `tern-bench p2p` on Tern's protocol (100 pairs, QoS 2, durable)
# for 10 s, and over seconds 3–9 reads each broker thread's CPU time and its time runnable but
# waiting for a core (/proc/PID/task/TID/stat and schedstat). Prints one line per thread name
# (threads of one name summed) and then the generator's JSON line. Compare two builds by
# alternating them: `TERN=/path/to/other/tern bench/thread-cpu.sh`.
#
#   bench/thread-cpu.sh              # fixed rate, 10,000 msgs/s
#   RATE=closed bench/thread-cpu.sh  # closed loop, 8 in flight per sender
#   BENCH_ARGS="--prefix b" bench/thread-cpu.sh  # more `tern-bench p2p` options (here: short user names)
#   RATE=closed DURATION=60 FROM=50 bench/thread-cpu.sh  # a 60-s run, threads read over seconds 50–56
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-10000}
DURATION=${DURATION:-10}
FROM=${FROM:-3}
TERN=${TERN:-target/release/tern}
BENCH=${BENCH:-target/release/tern-bench}
OUT=${OUT:-target/thread-cpu}
[ -x "$TERN" ] && [ -x "$BENCH" ] || cargo build --release --locked -p tern-broker -p tern-bench
DIR="$OUT/data"; rm -rf "$DIR"; mkdir -p "$DIR"
printf 'max_connections = 19900\npublish_rate_per_sec = 10000000\npublish_burst = 10000000\n' > "$DIR/tern.toml"
"$TERN" serve --config "$DIR/tern.toml" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  --mqtt-listen 127.0.0.1:0 --data-dir "$DIR" >"$DIR/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
# The broker logs the native address it bound (port 0: the kernel picks a free one).
ADDR=""
for _ in $(seq 100); do
  ADDR=$(sed -n 's/^tern: listening on \([0-9.:]*\) (native protocol).*/\1/p' "$DIR/log" | head -1)
  [ -n "$ADDR" ] && break; sleep 0.1
done
[ -n "$ADDR" ] || { echo "tern did not start" >&2; cat "$DIR/log" >&2; exit 1; }
if [ "$RATE" = closed ]; then load=(--window 8); else load=(--rate "$RATE"); fi
"$BENCH" p2p --pairs 100 "${load[@]}" --duration "$DURATION" --addr "$ADDR" --broker-pid $PID --data-dir "$DIR" ${BENCH_ARGS:-} \
  2>"$DIR/bench.log" | tail -1 > "$DIR/result.json" &
GEN=$!
snapshot() { # name, CPU ticks (utime + stime), ns waiting for a core
  for t in /proc/$PID/task/*; do
    echo "$(tr ' ' _ < "$t/comm") $(awk '{print $14 + $15}' "$t/stat") $(awk '{print $2}' "$t/schedstat")"
  done
}
sleep "$FROM"; snapshot > "$DIR/before"; sleep 6; snapshot > "$DIR/after"
wait $GEN
python3 - "$DIR/before" "$DIR/after" "$(getconf CLK_TCK)" <<'PY'
import collections, sys
def read(path):
    sums = collections.defaultdict(lambda: [0, 0])
    for line in open(path):
        name, ticks, waited = line.split()
        sums[name][0] += int(ticks); sums[name][1] += int(waited)
    return sums
before, after, hz = read(sys.argv[1]), read(sys.argv[2]), int(sys.argv[3])
rows = [(n, (after[n][0] - before[n][0]) * 1000 // hz, (after[n][1] - before[n][1]) // 1_000_000) for n in after]
for name, cpu, waited in sorted(rows, key=lambda r: -r[1]):
    if cpu or waited:
        print(f"{name:24s} CPU {cpu:6d} ms   waited for a core {waited:6d} ms   (over 6 s)")
PY
cat "$DIR/result.json"
