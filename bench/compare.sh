#!/usr/bin/env bash
# Runs the MQTT scenarios of tern-bench (connections: accept rate, idle memory, reconnect storm;
# p2p: QoS 1 and 2 pairs, 64 and 512 B, PAIRS and 1000 pairs, closed loop and fixed rate; fan-out
# to 1k and 10k subscribers) against Tern's MQTT listener, Mosquitto and rumqttd on this machine,
# alternating the brokers within each round, RUNS rounds, and prints medians, ranges and the
# Tern/peer ratios (raw JSON lines go to $OUT/results.jsonl). The `native-*` modes run Tern's own
# protocol (exactly once, durable) and only against Tern: no MQTT broker offers that path.
# The `floor` "broker" runs only the fan-out and native-rate modes. For fan-out it is
# `tern-bench floor-broker`: each PUBLISH forwarded to every subscriber with one write each and
# nothing else, what this machine's loopback TCP and the generator allow any broker. For
# native-rate it is `tern-bench disk-floor`: the offered rate into a bare append-and-fdatasync
# group commit, what this disk allows any broker that syncs before it acknowledges.
# Installs what it needs: Debian's mosquitto, and builds Tern, tern-bench and the rumqttd host
# program (bench/peers/rumqttd-host).
#
#   bench/compare.sh                     # RUNS=3 CONNECTIONS=10000 PAIRS=100 RATE=20000
#   RUNS=5 CONNECTIONS=19000 SOURCES=8 bench/compare.sh
#   MODES="fanout-1k fanout-10k" bench/compare.sh   # a subset of the scenarios
#   BROKERS="tern mosquitto" bench/compare.sh       # a subset of the brokers
#   BROKERS="tern floor" MODES=fanout-10k bench/compare.sh   # Tern beside the machine's floor
#
# Modes: clean persistent p2p-closed p2p-rate p2p-512 p2p-1000 p2p-stored-qos2
#        fanout-1k fanout-10k fanout-10k-closed native-closed native-closed-60s native-rate-1k native-rate-10k native-group-read
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
CONNECTIONS=${CONNECTIONS:-10000}
PAIRS=${PAIRS:-100}
RATE=${RATE:-20000}
# Source addresses of the connection scenarios (127.0.0.1 … 127.0.0.SOURCES).
SOURCES=${SOURCES:-8}
MODES=${MODES:-clean persistent p2p-closed p2p-rate p2p-512 p2p-1000 p2p-stored-qos2 fanout-1k fanout-10k fanout-10k-closed native-closed native-closed-60s native-rate-1k native-rate-10k native-group-read}
BROKERS=${BROKERS:-tern mosquitto rumqttd floor}
OUT=${OUT:-target/compare}
mkdir -p "$OUT"
ulimit -n 20000

if ! command -v mosquitto >/dev/null 2>&1; then
  sudo=""; if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto >/dev/null
fi
cargo build --release --locked -p tern-broker -p tern-bench
CARGO_TARGET_DIR=target/peers cargo build --release --locked --manifest-path bench/peers/rumqttd-host/Cargo.toml
TERN=target/release/tern BENCH=target/release/tern-bench RUMQTTD=target/peers/release/rumqttd-host
PORT=18883
NATIVE_PORT=17420
HTTP_PORT=17480

start_broker() { # name -> sets PID
  local dir="$OUT/$1-data"; rm -rf "$dir"; mkdir -p "$dir"
  case $1 in
    tern)
      # The per-connection PUBLISH limit (abuse protection, default 1,000/s with a burst of
      # 2,000) is lifted: one generator connection stands for many devices (the storm's single
      # publisher stores one message per session; a closed-loop sender exceeds 1,000/s), and
      # the peers have no such limit.
      printf 'max_connections = 19900\npublish_rate_per_sec = 10000000\npublish_burst = 10000000\n' > "$dir/tern.toml"
      $TERN serve --config "$dir/tern.toml" --listen 127.0.0.1:$NATIVE_PORT --http-listen 127.0.0.1:$HTTP_PORT \
        --mqtt-listen 127.0.0.1:$PORT --data-dir "$dir" >"$dir/log" 2>&1 & ;;
    mosquitto)
      # In-memory sessions (persistence false): Mosquitto keeps QoS 1 queues in memory and writes
      # them only at shutdown, where Tern stores every message durably before PUBACK.
      printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_type error\nmax_connections -1\n' \
        $PORT > "$dir/mosquitto.conf"
      mosquitto -c "$dir/mosquitto.conf" >"$dir/log" 2>&1 & ;;
    rumqttd)
      $RUMQTTD 127.0.0.1:$PORT >"$dir/log" 2>&1 & ;;
    floor)
      $BENCH floor-broker --listen 127.0.0.1:$PORT --threads 2 >"$dir/log" 2>&1 & ;;
  esac
  PID=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0; sleep 0.1; done
  echo "$1 did not start" >&2; cat "$dir/log" >&2; exit 1
}

stop_broker() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; sleep 1; }

: > "$OUT/results.jsonl"
for run in $(seq "$RUNS"); do
  # Rotate the order each round so no broker always goes first.
  read -r -a order <<< "$BROKERS"; shift_by=$(( (run - 1) % ${#order[@]} ))
  order=("${order[@]:$shift_by}" "${order[@]:0:$shift_by}")
  for b in "${order[@]}"; do
    for mode in $MODES; do
      # Tern's native protocol has no counterpart in the MQTT brokers. The floors run fan-out at
      # a rate (the floor broker writes each message on its own: a floor for one message's
      # latency, not for saturation, where brokers batch a subscriber's messages into one
      # write) and native-rate (disk-floor).
      case $b:$mode in
        tern:* | floor:fanout-1k | floor:fanout-10k | floor:native-rate-*) ;;
        floor:* | *:native-*) continue ;;
      esac
      if [[ $b == floor && $mode == native-rate-* ]]; then
        # The durable floor: the same offered rate into a bare group commit on this disk, each
        # record as many bytes as Tern wrote to disk per message at 10,000/s (journal and tables).
        rate=${mode#native-rate-}; rate=${rate%k}000
        echo "round $run: floor, $mode" >&2
        mkdir -p "$OUT/floor-data"
        line=$($BENCH disk-floor --dir "$OUT/floor-data" --rate "$rate" --record 1200 --duration 10 | tail -1)
        echo "$line" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["broker"]="floor"; d["run"]=int(sys.argv[1]); d["mode"]=sys.argv[2]; print(json.dumps(d))' "$run" "$mode" >> "$OUT/results.jsonl"
        continue
      fi
      start_broker "$b"
      auth=(); [ "$b" = tern ] && auth=(--data-dir "$OUT/tern-data")
      target=(--addr 127.0.0.1:$PORT --broker "$b")
      case $mode in
        clean) args=(mqtt-connections --connections "$CONNECTIONS" --sources "$SOURCES" --clean) ;;
        persistent) args=(mqtt-connections --connections "$CONNECTIONS" --sources "$SOURCES") ;;
        # Telemetry topics: Tern's live path (nothing stored), plain topics for the peers.
        p2p-closed) args=(mqtt-p2p --topics telemetry --pairs "$PAIRS" --window 8 --duration 10) ;;
        p2p-rate) args=(mqtt-p2p --topics telemetry --pairs "$PAIRS" --rate "$RATE" --duration 10) ;;
        p2p-512) args=(mqtt-p2p --topics telemetry --pairs "$PAIRS" --payload 512 --window 8 --duration 10) ;;
        p2p-1000) args=(mqtt-p2p --topics telemetry --pairs 1000 --window 8 --duration 10) ;;
        # QoS 2 end to end. Tern: exactly once into the receiver's durable inbox (fsync'd group
        # commit before PUBREC), delivered at QoS 2; the peers: QoS 2 with their sessions in
        # memory (see start_broker). (Tern delivers live topics at QoS 0 whatever the publisher's
        # QoS, spec 15.3, so QoS 2 is compared on stored topics only.)
        p2p-stored-qos2) args=(mqtt-p2p --topics stored --qos 2 --pairs "$PAIRS" --window 8 --duration 10) ;;
        # One publisher, one topic (Tern: a user's telemetry), 100,000 deliveries offered per second.
        fanout-1k) args=(mqtt-fanout --members 1000 --rate 100 --duration 10) ;;
        fanout-10k) args=(mqtt-fanout --members 10000 --rate 10 --duration 10) ;;
        # Saturation: closed loop, at most 16 messages on their way to some subscriber.
        fanout-10k-closed) args=(mqtt-fanout --members 10000 --window 16 --duration 10) ;;
        # Tern's native protocol: QoS 2, exactly once, durable (fsync'd group commit before PUBACK).
        native-closed) args=(p2p --pairs "$PAIRS" --window 8 --duration 10)
          target=(--addr 127.0.0.1:$NATIVE_PORT) ;;
        # The same for a minute: the store grows, so compaction's share is nearer its steady state.
        native-closed-60s) args=(p2p --pairs "$PAIRS" --window 8 --duration 60)
          target=(--addr 127.0.0.1:$NATIVE_PORT) ;;
        native-rate-1k) args=(p2p --pairs "$PAIRS" --rate 1000 --duration 10); target=(--addr 127.0.0.1:$NATIVE_PORT) ;;
        native-rate-10k) args=(p2p --pairs "$PAIRS" --rate 10000 --duration 10); target=(--addr 127.0.0.1:$NATIVE_PORT) ;;
        # A 100,000-member group in read fan-out, 2,000 members online pulling, 10 senders.
        native-group-read) args=(group-read --members 100000 --online 2000 --senders 10 --duration 10)
          target=(--addr 127.0.0.1:$NATIVE_PORT --http 127.0.0.1:$HTTP_PORT) ;;
      esac
      echo "round $run: $b, $mode" >&2
      if line=$($BENCH "${args[@]}" "${target[@]}" --broker-pid "$PID" --prefix "r$run" \
          "${auth[@]}" 2>"$OUT/bench.log" | tail -1); then
        echo "$line" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["run"]=int(sys.argv[1]); d["mode"]=sys.argv[2]; print(json.dumps(d))' "$run" "$mode" >> "$OUT/results.jsonl"
      else
        echo "  $b failed: $(tail -3 "$OUT/bench.log")" >&2
        echo "{\"broker\": \"$b\", \"run\": $run, \"mode\": \"$mode\", \"failed\": true}" >> "$OUT/results.jsonl"
      fi
      stop_broker
    done
  done
done

python3 - "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def pick(broker, mode, key):
    vals = []
    for r in rows:
        if r["broker"] != broker or r.get("mode") != mode or r.get("failed"):
            continue
        v = r
        for k in key.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            vals.append(v)
    return vals
def fmt(vals, digits=0, broker=None, mode=None):
    if not vals:
        # A metric a broker does not report (the floors report fewer) is "–", not a failure.
        failed = any(r["broker"] == broker and r.get("mode") == mode and r.get("failed") for r in rows)
        return "failed" if failed else "–"
    return f"{statistics.median(vals):,.{digits}f} ({min(vals):,.{digits}f}–{max(vals):,.{digits}f})"
metrics = [
    ("clean", "connections_per_sec", "connections accepted per second (clean sessions)", 0),
    ("clean", "rss_bytes_per_connection", "resident bytes per idle connection (clean)", 0),
    ("persistent", "connections_per_sec", "connections accepted per second (persistent sessions)", 0),
    ("persistent", "rss_bytes_per_connection", "resident bytes per idle persistent session", 0),
    ("persistent", "storm.resumed_seconds", "reconnect storm: seconds until all resumed", 3),
    ("persistent", "storm.received_seconds", "reconnect storm: seconds until all had their message", 3),
    ("persistent", "storm.missing", "reconnect storm: messages missing", 0),
    ("persistent", "storm.duplicates", "reconnect storm: duplicates", 0),
    ("p2p-closed", "msgs_per_sec", "p2p QoS 1 closed loop: messages per second", 0),
    ("p2p-closed", "broker_cpu_us_per_msg", "p2p closed loop: broker CPU µs per message", 2),
    ("p2p-closed", "generator_cpu_us_per_msg", "p2p closed loop: generator CPU µs per message", 2),
    ("p2p-rate", "msgs_per_sec", "p2p QoS 1 at the fixed rate: messages per second", 0),
    ("p2p-rate", "latency_us.p50", "p2p fixed rate: latency p50 µs", 0),
    ("p2p-rate", "latency_us.p99", "p2p fixed rate: latency p99 µs", 0),
    ("p2p-rate", "broker_cpu_us_per_msg", "p2p fixed rate: broker CPU µs per message", 2),
    ("p2p-512", "msgs_per_sec", "p2p QoS 1, 512 B, closed loop: messages per second", 0),
    ("p2p-512", "broker_cpu_us_per_msg", "p2p 512 B: broker CPU µs per message", 2),
    ("p2p-1000", "msgs_per_sec", "p2p QoS 1, 1000 pairs, closed loop: messages per second", 0),
    ("p2p-1000", "broker_cpu_us_per_msg", "p2p 1000 pairs: broker CPU µs per message", 2),
    ("p2p-stored-qos2", "msgs_per_sec", "p2p QoS 2 closed loop (Tern: durable inboxes): messages per second", 0),
    ("p2p-stored-qos2", "latency_us.p99", "p2p QoS 2 (Tern durable): latency p99 µs", 0),
    ("p2p-stored-qos2", "broker_cpu_us_per_msg", "p2p QoS 2 (Tern durable): broker CPU µs per message", 2),
    ("native-closed", "msgs_per_sec", "Tern native QoS 2, durable, closed loop: messages per second", 0),
    ("native-closed", "broker_cpu_us_per_msg", "Tern native closed loop: broker CPU µs per message", 2),
    ("native-closed", "generator_cpu_us_per_msg", "Tern native closed loop: generator CPU µs per message", 2),
    ("native-closed-60s", "msgs_per_sec", "Tern native closed loop, 60 s: messages per second", 0),
    ("native-closed-60s", "broker_cpu_us_per_msg", "Tern native closed loop, 60 s: broker CPU µs per message", 2),
    ("native-closed-60s", "generator_cpu_us_per_msg", "Tern native closed loop, 60 s: generator CPU µs per message", 2),
    ("native-rate-1k", "latency_us.p50", "Tern native at 1,000/s: latency p50 µs", 0),
    ("native-rate-1k", "latency_us.p99", "Tern native at 1,000/s: latency p99 µs", 0),
    ("native-rate-1k", "ack_latency_us.p99", "Tern native at 1,000/s: send to PUBACK p99 µs", 0),
    ("native-rate-10k", "msgs_per_sec", "Tern native at 10,000/s: messages per second", 0),
    ("native-rate-10k", "latency_us.p50", "Tern native at 10,000/s: latency p50 µs", 0),
    ("native-rate-10k", "latency_us.p99", "Tern native at 10,000/s: latency p99 µs", 0),
    ("native-rate-10k", "ack_latency_us.p50", "Tern native at 10,000/s: send to PUBACK p50 µs", 0),
    ("native-rate-10k", "ack_latency_us.p99", "Tern native at 10,000/s: send to PUBACK p99 µs", 0),
    ("native-rate-10k", "broker_cpu_us_per_msg", "Tern native at 10,000/s: broker CPU µs per message", 2),
    ("native-rate-10k", "generator_cpu_us_per_msg", "Tern native at 10,000/s: generator CPU µs per message", 2),
    ("native-rate-10k", "fdatasync_us.p99", "disk floor at 10,000/s: fdatasync p99 µs", 0),
    ("native-group-read", "events.sends_acked_per_sec", "Tern group of 100k (2k online), read fan-out: sends per second", 1),
    ("native-group-read", "msgs_per_sec", "Tern group of 100k: messages pulled by members per second", 0),
    ("native-group-read", "events.notifies_per_sec", "Tern group of 100k: NOTIFYs per second", 0),
    ("native-group-read", "events.syncs_per_sec", "Tern group of 100k: SYNCs per second", 0),
    ("native-group-read", "broker_cpu_us_per_msg", "Tern group of 100k: broker CPU µs per pulled message", 2),
    ("fanout-1k", "deliveries_per_sec", "fan-out to 1k (100 msgs/s offered): deliveries per second", 0),
    ("fanout-1k", "all_reached_us.p99", "fan-out to 1k: µs for one message to reach all, p99", 0),
    ("fanout-1k", "broker_cpu_us_per_delivery", "fan-out to 1k: broker CPU µs per delivery", 2),
    ("fanout-10k", "deliveries_per_sec", "fan-out to 10k (10 msgs/s offered): deliveries per second", 0),
    ("fanout-10k", "all_reached_us.p50", "fan-out to 10k: µs for one message to reach all, p50", 0),
    ("fanout-10k", "all_reached_us.p99", "fan-out to 10k: µs for one message to reach all, p99", 0),
    ("fanout-10k", "incomplete_messages", "fan-out to 10k: messages that missed a subscriber", 0),
    ("fanout-10k", "broker_cpu_us_per_delivery", "fan-out to 10k: broker CPU µs per delivery", 2),
    ("fanout-10k", "generator_cpu_us_per_delivery", "fan-out to 10k: generator CPU µs per delivery", 2),
    ("fanout-10k-closed", "deliveries_per_sec", "fan-out to 10k, closed loop (16 messages on their way): deliveries per second", 0),
    ("fanout-10k-closed", "incomplete_messages", "fan-out to 10k, closed loop: messages that missed a subscriber", 0),
    ("fanout-10k-closed", "broker_cpu_us_per_delivery", "fan-out to 10k, closed loop: broker CPU µs per delivery", 2),
    ("fanout-10k-closed", "generator_cpu_us_per_delivery", "fan-out to 10k, closed loop: generator CPU µs per delivery", 2),
]
brokers = ["tern", "mosquitto", "rumqttd"] + (["floor"] if any(r["broker"] == "floor" for r in rows) else [])
peers = [b for b in brokers if b != "tern"]
print("| metric (median, range) | " + " | ".join(brokers) + " | " + " | ".join(f"tern/{p}" for p in peers) + " |")
print("|---|" + "---|" * (len(brokers) + len(peers)))
for mode, key, label, d in metrics:
    if not any(r.get("mode") == mode for r in rows):
        continue
    cells = [fmt(pick(b, mode, key), d, b, mode) for b in brokers]
    ratios = []
    for peer in peers:
        t, p = pick("tern", mode, key), pick(peer, mode, key)
        ratios.append(f"{statistics.median(t) / statistics.median(p):.2f}" if t and p and statistics.median(p) else "–")
    print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
PY
