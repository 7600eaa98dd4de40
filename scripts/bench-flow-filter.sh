#!/usr/bin/env bash
# The data-path cost of the server's flow filter (nodes answer, never initiate): scripts/bench.sh
# runs nodelink with the filter on (the default) and off (--allow-node-initiated) in turn, REPS
# times each, at the default MTU and at --mtu 1500, and OpenVPN-TCP beside the filtered runs for
# the 2x bar. Every bench.sh run builds and deletes its own namespaces (see its header). On a
# shared machine these runs vary more than the filter costs: scripts/bench-flow-filter-toggle.sh
# pairs the runs on one link, and with PERF=1 says which share of the CPU netfilter took.
#
# Usage (root):  bash scripts/bench-flow-filter.sh        (uses dist/ as it is: npm run build first)
# Environment:   REPS=3 DURATION=5 MTUS="default 1500" OVPN=1 (0: no OpenVPN runs)
#                MODES="filter off" (add off-ct: the filter off, but connection tracking on in the
#                control plane's namespace anyway, as kube-proxy or a firewall has it on a real host)
# Prints one line per run, then medians per MTU and mode: iperf3 Mbit/s cp→node and node→cp,
# tunnel CPU s/GB, and the ratios filter/off and nodelink (filter)/ovpn-tcp.
set -euo pipefail

REPS=${REPS:-3}
DURATION=${DURATION:-5}
MTUS=${MTUS:-"default 1500"}
OVPN=${OVPN:-1}
MODES=${MODES:-"filter off"}
CONNTRACK_ONLY='table inet bench_conntrack {
  chain c { type filter hook prerouting priority 0; ct state invalid counter; }
}'
[[ $REPS =~ ^[1-9][0-9]?$ ]] || { echo "REPS must be 1..99" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (bench.sh creates network namespaces)" >&2; exit 1; }
command -v jq >/dev/null || { echo "needs jq: apt-get install -y jq" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d /tmp/nodelink-bench-flow-filter.XXXX)
rows=$out/rows.jsonl

for mtu in $MTUS; do
  args=""
  [ "$mtu" = default ] || args="--mtu $mtu"
  for r in $(seq "$REPS"); do
    for mode in $MODES; do
      server="" cpnft=""
      [ "$mode" != filter ] && server="--allow-node-initiated"
      [ "$mode" = off-ct ] && cpnft=$CONNTRACK_ONLY
      systems=nodelink
      [ "$mode" = filter ] && [ "$OVPN" = 1 ] && systems="nodelink ovpn-tcp"
      name=$mtu-$mode-$r
      if ! ROUNDS=1 DURATION=$DURATION PINGS=5 SYSTEMS="$systems" BENCH_NODELINK_ARGS="$args" \
        BENCH_SERVER_ARGS="$server" BENCH_CP_NFT="$cpnft" BENCH_JSON="$out/$name.json" bash "$here/bench.sh" >"$out/$name.log" 2>&1; then
        echo "bench.sh failed ($name); its output:" >&2
        tail -n 20 "$out/$name.log" >&2
        exit 1
      fi
      jq -c --arg mtu "$mtu" --arg mode "$mode" --argjson rep "$r" '.results | to_entries[]
        | {mtu: $mtu, mode: (if .key == "nodelink" then $mode else .key end), rep: $rep,
           c2n: .value.cp_to_node_mbps, n2c: .value.node_to_cp_mbps,
           cpu_c2n: .value.cp_to_node_cpu_s_per_gb, cpu_n2c: .value.node_to_cp_cpu_s_per_gb,
           host_c2n: .value.cp_to_node_host_cpu_s_per_gb}' "$out/$name.json" | tee -a "$rows" |
        jq -r '"\(.mtu) \(.mode) #\(.rep): cp→node \(.c2n) Mbit/s (\(.cpu_c2n) s/GB), node→cp \(.n2c) Mbit/s (\(.cpu_n2c) s/GB)"'
    done
  done
done

echo
echo "Medians over $REPS runs (iperf3 -t $DURATION, one TCP stream; CPU: tunnel processes at both ends per GB):"
jq -rs '
  def median: map(select(. != null)) | sort | if length == 0 then null
    elif length % 2 == 1 then .[(length - 1) / 2] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r2: if . == null then null else (. * 100 | round) / 100 end;
  def ratio($a; $b): if $a == null or $b == null or $b == 0 then null else ($a / $b * 1000 | round) / 1000 end;
  group_by(.mtu)[] | .[0].mtu as $mtu
  | (group_by(.mode) | map({key: .[0].mode, value: {c2n: (map(.c2n) | median), n2c: (map(.n2c) | median),
      cpu_c2n: (map(.cpu_c2n) | median | r2), cpu_n2c: (map(.cpu_n2c) | median | r2)}}) | from_entries) as $m
  | ($m | to_entries[] | "  mtu \($mtu) \(.key): cp→node \(.value.c2n) Mbit/s, node→cp \(.value.n2c) Mbit/s, CPU \(.value.cpu_c2n) / \(.value.cpu_n2c) s/GB"),
    "  mtu \($mtu) filter/off: throughput cp→node \(ratio($m.filter.c2n; $m.off.c2n)), node→cp \(ratio($m.filter.n2c; $m.off.n2c)); CPU s/GB cp→node \(ratio($m.filter.cpu_c2n; $m.off.cpu_c2n)), node→cp \(ratio($m.filter.cpu_n2c; $m.off.cpu_n2c))",
    "  mtu \($mtu) filter/off-ct: throughput cp→node \(ratio($m.filter.c2n; $m["off-ct"].c2n)), node→cp \(ratio($m.filter.n2c; $m["off-ct"].n2c)); CPU s/GB cp→node \(ratio($m.filter.cpu_c2n; $m["off-ct"].cpu_c2n)), node→cp \(ratio($m.filter.cpu_n2c; $m["off-ct"].cpu_n2c))",
    "  mtu \($mtu) nodelink (filter) / ovpn-tcp throughput: cp→node \(ratio($m.filter.c2n; $m["ovpn-tcp"].c2n)), node→cp \(ratio($m.filter.n2c; $m["ovpn-tcp"].n2c))"
' "$rows"
echo
echo "per-run JSON and logs: $out"
