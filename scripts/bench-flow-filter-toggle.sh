#!/usr/bin/env bash
# The flow filter's data-path cost, paired: one nodelink link (server --allow-node-initiated), and
# the server's own table (rendered by this checkout's dist/, or by BASE's) loaded into and removed
# from the control plane's namespace between iperf3 runs. Each round runs every variant, in an
# order rotated per round, so a drift of the machine's load hits them alike; the ratios are the
# medians of per-round ratios against `off`. scripts/bench-flow-filter.sh restarts the whole
# bench per run instead (and adds OpenVPN); on a shared machine its runs vary more than the effect.
#
# Usage (root):  bash scripts/bench-flow-filter-toggle.sh        (uses dist/ as it is)
# Environment:   ROUNDS=10 DURATION=3 MTU=default|N VARIANTS="off filter" (also: base, the table as
#                BASE=/path/to/an/older/checkout renders it; ct, connection tracking on and no rules)
#                PERF=1: also record each run with `perf record -a -g` and print which share of the
#                two tunnel processes' samples ran inside netfilter (conntrack, nft rules).
# Namespaces and addresses are made for the run (198.18.0.0/15) and deleted on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-10}
DURATION=${DURATION:-3}
MTU=${MTU:-default}
VARIANTS=${VARIANTS:-"off filter"}
PERF=${PERF:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[[ $ROUNDS =~ ^[1-9][0-9]?$ ]] || { echo "ROUNDS must be 1..99" >&2; exit 1; }
[[ $DURATION =~ ^[1-9][0-9]?$ ]] || { echo "DURATION must be 1..99 s" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
for c in ip iperf3 jq nft; do command -v $c >/dev/null || { echo "needs $c" >&2; exit 1; }; done
[ "$PERF" = 0 ] || command -v perf >/dev/null || { echo "PERF=1 needs perf (apt-get install -y linux-perf)" >&2; exit 1; }

ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
CP=nlt$ID-cp ND=nlt$ID-node TUN=nt${ID}s
W=$(mktemp -d /tmp/nodelink-bench-toggle.XXXX)
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for _ in $(seq 30); do alive=0; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done; [ $alive = 0 ] && break; sleep 0.1; done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  ip netns del "$CP" 2>/dev/null; ip netns del "$ND" 2>/dev/null
  rm -f "$W"/*.data "$W"/*.data.old "$W"/*.key   # the rows, logs and tables stay for a look
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$CP"; ip netns add "$ND"
ip -n "$CP" link set lo up; ip -n "$ND" link set lo up
ip -n "$CP" link add nt${ID}c type veth peer name nt${ID}n netns "$ND"
ip -n "$CP" addr add 198.18.0.1/24 dev nt${ID}c; ip -n "$ND" addr add 198.18.0.2/24 dev nt${ID}n
ip -n "$CP" link set nt${ID}c up; ip -n "$ND" link set nt${ID}n up
ip -n "$ND" addr add 198.18.5.2/32 dev lo
nl() { node "$ROOT/dist/src/cli/main.js" "$@"; }
(umask 077; nl keygen >"$W/cp.key"; nl keygen >"$W/node.key")
spub=$(nl pubkey <"$W/cp.key"); npub=$(nl pubkey <"$W/node.key")
printf '{"peers":[{"name":"bench-node","publicKey":"%s","allowedIPs":["198.18.5.2/32"]}]}\n' "$npub" >"$W/peers.json"
mtu=(); [ "$MTU" = default ] || mtu=(--mtu "$MTU")
ip netns exec "$CP" node "$ROOT/dist/src/cli/main.js" server --listen 198.18.0.1:8443 --key "$W/cp.key" --peers "$W/peers.json" \
  --tunnel-cidr 198.18.4.0/24 --tun "$TUN" --admin-socket "$W/server.sock" --allow-node-initiated "${mtu[@]}" >"$W/server.log" 2>&1 &
SP=$!; PIDS+=($SP)
for _ in $(seq 100); do ip netns exec "$CP" ss -ltnH 'sport = :8443' | grep -q . && break; sleep 0.1; done
ip netns exec "$ND" node "$ROOT/dist/src/cli/main.js" client --server 198.18.0.1:8443 --server-key "$spub" --key "$W/node.key" \
  --name bench-node --route 198.18.5.2/32 --tun nt${ID}l --admin-socket "$W/client.sock" "${mtu[@]}" >"$W/client.log" 2>&1 &
CPID=$!; PIDS+=($CPID)
for _ in $(seq 200); do ip netns exec "$CP" ping -c1 -W1 198.18.5.2 >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "$CP" ping -c1 -W1 198.18.5.2 >/dev/null || { echo "the link did not come up; server log:" >&2; tail "$W/server.log" >&2; exit 1; }
ip netns exec "$ND" iperf3 -s -p 5201 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5

render() {   # render CHECKOUT: the table that checkout's server would install for this link
  (cd "$1" && node --input-type=module -e "
    import { renderFlowFilter, DEFAULT_FLOW_FILTER_LIMITS } from './dist/src/link-server/flow-filter.js';
    import { Prefix } from './dist/src/routing/index.js';
    const peer = { publicKeyText: process.argv[1], name: 'bench-node', allowedIPs: [Prefix.parse('198.18.5.2/32')] };
    process.stdout.write(renderFlowFilter(process.argv[2], [peer], DEFAULT_FLOW_FILTER_LIMITS));" "$npub" "$TUN")
}
render "$ROOT" >"$W/filter.nft"
[[ " $VARIANTS " == *" base "* ]] && { [ -n "${BASE:-}" ] || { echo "variant base needs BASE=/path/to/checkout" >&2; exit 1; }; render "$BASE" >"$W/base.nft"; }
printf 'table inet bench_ct {\n  chain c { type filter hook prerouting priority 0; ct state invalid counter; }\n}\n' >"$W/ct.nft"
apply() { [ "$1" = off ] || ip netns exec "$CP" nft -f "$W/$1.nft"; }
unapply() { ip netns exec "$CP" nft flush ruleset; }   # the namespace is ours: only our tables are in it
ticks() { local t=0 p; for p in $SP $CPID; do t=$((t + $(sed 's/^.*) //' /proc/$p/stat | awk '{print $12 + $13}'))); done; echo $t; }
share() {   # share PERFDATA: "conntrack% rules%" of the tunnel processes' samples
  perf script -i "$1" -F pid,ip,sym 2>/dev/null | awk -v s=$SP -v c=$CPID '
    function flush() { if (mine) { n++; if (hook ~ /^nft_do_chain/) r++; else if (hook != "") k++ } mine = 0; hook = ""; prev = "" }
    NF == 1 && $1 ~ /^[0-9]+$/ { flush(); mine = ($1 == s || $1 == c); next }
    NF == 0 { flush(); next }
    { sym = $2; sub(/\+0x.*/, "", sym); if (sym == "nf_hook_slow" && hook == "") hook = prev == "" ? "self" : prev; prev = sym }
    END { flush(); printf "%.2f %.2f", n ? 100 * k / n : 0, n ? 100 * r / n : 0 }'
}
# One untimed run each way first: the link's code is cold until it has carried traffic.
ip netns exec "$CP" iperf3 -c 198.18.5.2 -p 5201 -t 1 >/dev/null 2>&1 || true
ip netns exec "$CP" iperf3 -c 198.18.5.2 -p 5201 -t 1 -R >/dev/null 2>&1 || true
HZ=$(getconf CLK_TCK)
ROWS=$W/rows.jsonl
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) nodelink $(git -C "$ROOT" describe --always --dirty 2>/dev/null) mtu $MTU, $ROUNDS rounds of iperf3 -t $DURATION each way; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  vs=($VARIANTS); k=$(((r - 1) % ${#vs[@]})); order=("${vs[@]:k}" "${vs[@]:0:k}")
  for v in "${order[@]}"; do
    apply "$v"
    for d in cp_to_node node_to_cp; do
      a=(); [ $d = node_to_cp ] && a=(-R)
      [ "$PERF" = 1 ] && { perf record -a -g -o "$W/$v.data" -- sleep "$DURATION" >/dev/null 2>&1 & pp=$!; }
      t0=$(ticks)
      j=$(timeout $((DURATION + 20)) ip netns exec "$CP" iperf3 -c 198.18.5.2 -p 5201 -t "$DURATION" -J "${a[@]}" 2>/dev/null || true)
      t1=$(ticks)
      sh="null null"
      [ "$PERF" = 1 ] && { wait $pp; read -r a1 a2 <<<"$(share "$W/$v.data")"; sh="$a1 $a2"; }
      read -r ct rules <<<"$sh"
      jq -c --arg v "$v" --arg d $d --argjson r "$r" --argjson t $((t1 - t0)) --argjson hz "$HZ" --argjson ct "$ct" --argjson rules "$rules" \
        '{variant: $v, dir: $d, round: $r, mbps: (.end.sum_received.bits_per_second / 1e6 | round),
          cpu_s_per_gb: (($t / $hz) / (.end.sum_received.bytes / 1e9) * 100 | round / 100), perf_conntrack_pct: $ct, perf_rules_pct: $rules}' \
        <<<"$j" | tee -a "$ROWS"
    done
    unapply
  done
done
echo "# load $(cut -d' ' -f1-3 /proc/loadavg); rows and logs: $W"
jq -rs '
  def med: sort | if length == 0 then null elif length % 2 == 1 then .[(length - 1) / 2] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r3: if . == null then null else (. * 1000 | round) / 1000 end;
  def r2: if . == null then null else (. * 100 | round) / 100 end;
  group_by(.dir)[] | .[0].dir as $d | (map(select(.variant == "off"))) as $off
  | group_by(.variant)[] | .[0].variant as $v
  | [.[] | . as $x | ($off[] | select(.round == $x.round)) as $o | {t: ($x.mbps / $o.mbps), c: ($x.cpu_s_per_gb / $o.cpu_s_per_gb)}] as $p
  | "\($d) \($v): Mbit/s \(map(.mbps) | med | round) (\(map(.mbps) | min)–\(map(.mbps) | max)), CPU s/GB \(map(.cpu_s_per_gb) | med | r2) (\(map(.cpu_s_per_gb) | min)–\(map(.cpu_s_per_gb) | max))"
    + (if $v == "off" then "" else "; against off, per round: throughput \($p | map(.t) | med | r3) (\($p | map(.t) | min | r3)–\($p | map(.t) | max | r3)), CPU s/GB \($p | map(.c) | med | r3) (\($p | map(.c) | min | r3)–\($p | map(.c) | max | r3))" end)
    + (if .[0].perf_conntrack_pct == null then "" else "; perf: conntrack \(map(.perf_conntrack_pct) | med | r2)%, nft rules \(map(.perf_rules_pct) | med | r2)% of the tunnel processes" end)' "$ROWS"
