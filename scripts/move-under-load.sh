#!/usr/bin/env bash
# Moves one partition holding about 10,000 accounts while loadgen sends
# transfers, and prints how long the move took and what the load saw.
#
#   scripts/move-under-load.sh            (after: cargo build --release --workspace)
#
# MOVE_ACCOUNTS (80000 over 8 partitions: ~10,000 per partition),
# MOVE_CLIENTS (64), MOVE_SECONDS of load (40), MOVE_SCENARIO (mixed).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TARGET_DIR:-target}/release
accounts=${MOVE_ACCOUNTS:-80000}
clients=${MOVE_CLIENTS:-64}
seconds=${MOVE_SECONDS:-40}
scenario=${MOVE_SCENARIO:-mixed}
data=$(mktemp -d /tmp/move-under-load.XXXXXX)
chmod 755 "$data"
cleanup() { kill -INT "$cluster" 2>/dev/null || true; wait "$cluster" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT

"$bin/devcluster" run --data-dir "$data" --partitions 8 >"$data/cluster.log" 2>&1 &
cluster=$!
for _ in $(seq 120); do [ -f "$data/cluster.json" ] && break; sleep 1; done
[ -f "$data/cluster.json" ] || { tail -20 "$data/cluster.log"; exit 1; }
ctl() { "$bin/walletctl" --manifest "$data/cluster.json" "$@"; }

"$bin/loadgen" --manifest "$data/cluster.json" --scenario "$scenario" --accounts "$accounts" \
  --clients "$clients" --seconds "$seconds" --json "$data/load.json" >"$data/load.txt" 2>&1 &
load=$!
# Let the load set up its accounts and run for a while first.
for _ in $(seq 300); do grep -q "accounts ready\|measuring\|warm" "$data/load.txt" 2>/dev/null && break; sleep 1; done
sleep 10
ctl partitions show | awk 'NR == 1 || NR == 2'
from=$(ctl -o json partitions show | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitions"][0]["node"])')
to=$(ctl -o json nodes list | python3 -c "import json,sys; print([n['node_id'] for n in json.load(sys.stdin) if n['node_id'] != '$from'][0])")
echo "moving partition 0 from $from to $to under load"
ctl partitions move 0 --to "$to"
wait "$load"
cat "$data/load.txt"
