#!/usr/bin/env bash
# The server on every core: aggregate throughput from the control plane to 4 nodes at once, with
# `nodelink server --workers 1` (one process, one core at most) against `--workers $WORKERS` (all
# cores), in one run. The second half of `npm run bench` (CORES=0 skips it).
#
# Topology: namespaces made for this run, "<id>-cp" (server, iperf3 clients) and "<id>-n1".."-n4"
# (a nodelink client and an iperf3 server each), each joined by a veth pair to a bridge in
# "<id>-sw". Addresses: 198.18.0.0/24 underlay, 198.18.4.0/24 tunnel, node N's "node IP"
# 198.18.5.N/32 (on lo, reached only through the link). Nothing is configured in the root
# namespace. On exit, failure or Ctrl-C only the PIDs started here are stopped and the namespaces
# deleted.
#
# Per round, for --workers 1 and then --workers $WORKERS (the server restarted between them; the
# clients stay and redial): 4 iperf3 single-stream TCP runs at once, cp → each node, for DURATION
# seconds; reported: the sum of the 4 receivers' rates, and the CPU the server's processes
# (primary and workers), the 4 clients and the whole host used meanwhile, in cores (CPU seconds
# per second). Medians over ROUNDS rounds, and the ratio all cores / one core.
#
# Usage (root):  bash scripts/bench-cores.sh (uses dist/ as it is; npm run bench builds first)
# Environment:   ROUNDS=3 DURATION=5 WORKERS=$(nproc) CORES=0 (skip)
#                BENCH_NODELINK_ARGS="--mtu 1500"  extra flags for both nodelink ends
#                BENCH_JSON=/path/result.json (default /tmp/nodelink-bench-cores-<UTC time>.json)
# Needs:         iproute2, iperf3, jq, node and a built checkout.
set -euo pipefail

[ "${CORES:-1}" = 0 ] && exit 0
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WORKERS=${WORKERS:-$(nproc)}
BENCH_NODELINK_ARGS=${BENCH_NODELINK_ARGS:-}
NODELINK_ROOT=${NODELINK_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
STARTED=$(date -u +%Y%m%dT%H%M%SZ)
BENCH_JSON=${BENCH_JSON:-/tmp/nodelink-bench-cores-$STARTED.json}
NODES=4

die() { echo "bench-cores: $*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

for v in ROUNDS DURATION; do
  [[ ${!v} =~ ^[1-9][0-9]{0,3}$ ]] || die "$v must be a whole number from 1 to 9999, got '${!v}'"
done
[[ $WORKERS =~ ^[1-9][0-9]?$ ]] || die "WORKERS must be a whole number from 1 to 64, got '$WORKERS'"
[ "$(id -u)" = 0 ] || die "needs root (it creates network namespaces): sudo npm run bench"
for c in ip iperf3 jq timeout awk od node; do
  command -v "$c" >/dev/null || die "missing command '$c': apt-get install -y iproute2 iperf3 jq coreutils nodejs"
done
CLI=$NODELINK_ROOT/dist/src/cli/main.js
[ -f "$CLI" ] || die "$CLI is missing: npm run build"

ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
NS_SW=nlc$ID-sw NS_CP=nlc$ID-cp
BR=nc${ID}br TUN=nc${ID}t                              # ≤ 15 characters, with the workers' "-N"
CP_UL=198.18.0.1 TUNNEL=198.18.4.0/24
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d "/tmp/nodelink-bench-cores.$ID.XXXX")
PIDS=() NS_MADE=() DONE=0
node_ns() { echo "nlc$ID-n$1"; }
node_ip() { echo "198.18.5.$1"; }

stop_pids() {   # SIGTERM, up to 5 s for a clean exit, then SIGKILL what is left
  local p i alive
  [ $# = 0 ] && return 0
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 50); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}
cleanup() {
  local rc=$?
  set +e
  trap - INT TERM
  if [ "$rc" != 0 ] && [ "$DONE" = 0 ]; then
    for f in "$WORK"/*.log; do [ -s "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done >&2
  fi
  stop_pids "${PIDS[@]}"
  wait 2>/dev/null
  for ns in "${NS_MADE[@]}"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench-cores: interrupted; cleaning up" >&2; exit 130' INT TERM

spawn() {   # spawn NS LOGNAME CMD...: in the background; `ip netns exec` execs, so $! is the daemon
  local ns=$1 name=$2; shift 2
  ip netns exec "$ns" "$@" >"$WORK/$name.log" 2>&1 &
  LASTPID=$!; PIDS+=("$LASTPID")
}
wait_for() { local t=$1 i; shift; for i in $(seq $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
listening() { nsx "$1" ss -ltnH "sport = :$2" | grep -q .; }
proc_ticks() {   # utime+stime of the given PIDs, summed (an exited one counts 0)
  local t=0 p f
  for p in "$@"; do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    t=$((t + $(sed 's/^.*) //' <<<"$f" | awk '{print $12 + $13}')))
  done
  echo $t
}
host_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
V_NL="$(git -C "$NODELINK_ROOT" describe --always --dirty 2>/dev/null || echo 'no git')"
say "nodelink bench-cores, $(date -u +%Y-%m-%dT%H:%M:%SZ), run id $ID"
say "# machine: $CPU_MODEL × $(nproc) CPUs, kernel $(uname -r); node $(node --version); nodelink $V_NL; load $(cut -d' ' -f1-3 /proc/loadavg)"
say "# rounds $ROUNDS; per round --workers 1 then --workers $WORKERS; $NODES iperf3 -t $DURATION streams at once, cp → each node"

# ---------------------------------------------------------------- namespaces: a bridge, cp, 4 nodes
ip netns add "$NS_SW"; NS_MADE+=("$NS_SW")
ip -n "$NS_SW" link add "$BR" type bridge
ip -n "$NS_SW" link set "$BR" up
attach() {   # attach NS ADDRESS: a veth from NS to the bridge
  local ns=$1 addr=$2 a=nc${ID}$3a b=nc${ID}$3b
  ip netns add "$ns"; NS_MADE+=("$ns")
  ip -n "$ns" link set lo up
  ip -n "$NS_SW" link add "$a" type veth peer name "$b" netns "$ns"
  ip -n "$NS_SW" link set "$a" master "$BR" up
  ip -n "$ns" addr add "$addr/24" dev "$b"
  ip -n "$ns" link set "$b" up
}
attach "$NS_CP" $CP_UL c
for n in $(seq $NODES); do
  attach "$(node_ns "$n")" "198.18.0.1$n" "$n"
  ip -n "$(node_ns "$n")" addr add "$(node_ip "$n")/32" dev lo
done
wait_for 10 nsx "$(node_ns 1)" ping -c1 -W1 $CP_UL || die "the bridge does not pass packets"

# ---------------------------------------------------------------- keys, peers, clients
K=$WORK/keys; mkdir -p "$K"
(umask 077; node "$CLI" keygen >"$K/cp.key"; for n in $(seq $NODES); do node "$CLI" keygen >"$K/n$n.key"; done)
SPUB=$(node "$CLI" pubkey <"$K/cp.key")
peers=""
for n in $(seq $NODES); do
  peers+="${peers:+,}{\"name\":\"node-$n\",\"publicKey\":\"$(node "$CLI" pubkey <"$K/n$n.key")\",\"allowedIPs\":[\"$(node_ip "$n")/32\"]}"
done
printf '{"peers":[%s]}\n' "$peers" >"$K/peers.json"

SERVER_PID="" STARTS=0
start_server() {   # start_server WORKERS
  STARTS=$((STARTS + 1))
  local log=server-$STARTS-w$1
  # shellcheck disable=SC2086 # BENCH_NODELINK_ARGS is a list of flags
  spawn "$NS_CP" "$log" node "$CLI" server --listen $CP_UL:8443 --key "$K/cp.key" --peers "$K/peers.json" \
    --tunnel-cidr $TUNNEL --tun "$TUN" --admin-socket "$WORK/server.sock" --workers "$1" $BENCH_NODELINK_ARGS
  SERVER_PID=$LASTPID
  wait_for 30 grep -q 'server ready' "$WORK/$log.log" || die "the server (--workers $1) did not start"
}
all_connected() {
  node "$CLI" status --admin-socket "$WORK/server.sock" --json 2>/dev/null |
    jq -e '[.peers[] | select(.connected)] | length == '$NODES >/dev/null
}
server_pids() {   # the primary and its workers (the workers' PIDs from status)
  echo "$SERVER_PID $(node "$CLI" status --admin-socket "$WORK/server.sock" --json 2>/dev/null |
    jq -r '[.workers[]?.pid | select(. != null)] | join(" ")')"
}

start_server 1
CLIENT_PIDS=()
for n in $(seq $NODES); do
  # shellcheck disable=SC2086
  spawn "$(node_ns "$n")" "client-$n" node "$CLI" client --server $CP_UL:8443 --server-key "$SPUB" \
    --key "$K/n$n.key" --name "node-$n" --route "$(node_ip "$n")/32" --tun "$TUN" \
    --admin-socket "$WORK/client-$n.sock" --backoff-base-ms 100 --backoff-cap-ms 1000 $BENCH_NODELINK_ARGS
  CLIENT_PIDS+=("$LASTPID")
  spawn "$(node_ns "$n")" "iperf3-$n" iperf3 -s -p 5201
done
for n in $(seq $NODES); do wait_for 10 listening "$(node_ns "$n")" 5201 || die "iperf3 on node $n did not start"; done

RAW=$WORK/raw.tsv; : >"$RAW"   # workers  round  metric  value
measure() {   # measure WORKERS ROUND
  local w=$1 r=$2 n s0 c0 h0 s1 c1 h1 t0 t1 total=0 bytes=0 bps b spids p
  local -A before
  wait_for 30 all_connected || die "not every node connected to the server (--workers $w)"
  for n in $(seq $NODES); do wait_for 10 nsx "$NS_CP" ping -c1 -W1 "$(node_ip "$n")" || die "node $n unreachable"; done
  spids=$(server_pids)
  # shellcheck disable=SC2086
  s0=$(proc_ticks $spids); c0=$(proc_ticks "${CLIENT_PIDS[@]}"); h0=$(host_ticks); t0=$(date +%s.%N)
  for p in $spids; do before[$p]=$(proc_ticks "$p"); done
  for n in $(seq $NODES); do
    timeout $((DURATION + 20)) ip netns exec "$NS_CP" iperf3 -c "$(node_ip "$n")" -p 5201 -t "$DURATION" \
      --connect-timeout 3000 -J >"$WORK/iperf-$n.json" 2>>"$WORK/iperf3-client.log" &
  done
  wait_iperf
  # shellcheck disable=SC2086
  s1=$(proc_ticks $spids); c1=$(proc_ticks "${CLIENT_PIDS[@]}"); h1=$(host_ticks); t1=$(date +%s.%N)
  # How evenly the server's work split: the busiest process's share of the server's CPU.
  local busiest=0
  for p in $spids; do b=$(($(proc_ticks "$p") - before[$p])); [ "$b" -gt "$busiest" ] && busiest=$b; done
  local per=()
  for n in $(seq $NODES); do
    bps=$(jq -r '.end.sum_received.bits_per_second // 0' "$WORK/iperf-$n.json" 2>/dev/null || echo 0)
    b=$(jq -r '.end.sum_received.bytes // 0' "$WORK/iperf-$n.json" 2>/dev/null || echo 0)
    bytes=$(awk -v a="$bytes" -v b="$b" 'BEGIN{print a + b}')
    per+=("$(awk -v x="$bps" 'BEGIN{printf "%.0f", x / 1e6}')")
    total=$(awk -v a="$total" -v b="$bps" 'BEGIN{print a + b}')
  done
  local mbps wall scores ccores hcores spg share
  mbps=$(awk -v x="$total" 'BEGIN{printf "%.1f", x / 1e6}')
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')
  scores=$(awk -v a="$s0" -v b="$s1" -v hz="$HZ" -v w="$wall" 'BEGIN{printf "%.2f", (b - a) / hz / w}')
  ccores=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v w="$wall" 'BEGIN{printf "%.2f", (b - a) / hz / w}')
  hcores=$(awk -v a="$h0" -v b="$h1" -v hz="$HZ" -v w="$wall" 'BEGIN{printf "%.2f", (b - a) / hz / w}')
  spg=$(awk -v a="$s0" -v b="$s1" -v hz="$HZ" -v x="$bytes" 'BEGIN{printf "%.2f", (x > 0 ? (b - a) / hz / (x / 1e9) : 0)}')
  share=$(awk -v m="$busiest" -v a="$s0" -v b="$s1" 'BEGIN{printf "%.2f", (b > a ? m / (b - a) : 0)}')
  printf '%s\t%s\t%s\t%s\n' "$w" "$r" mbps "$mbps" "$w" "$r" server_cores "$scores" "$w" "$r" client_cores "$ccores" \
    "$w" "$r" host_cores "$hcores" "$w" "$r" server_cpu_s_per_gb "$spg" "$w" "$r" busiest_share "$share" >>"$RAW"
  say "  --workers $w: $(printf '%7s' "$mbps") Mbit/s in all (per node ${per[*]}); cores used: server $scores, 4 clients $ccores, host $hcores; server $spg CPU s/GB, busiest process $share of it"
}
wait_iperf() { local j; for j in $(jobs -p); do case " ${PIDS[*]} " in *" $j "*) ;; *) wait "$j" || true ;; esac; done; }

for r in $(seq "$ROUNDS"); do
  say "round $r/$ROUNDS"
  for w in 1 "$WORKERS"; do
    if [ -z "$SERVER_PID" ]; then start_server "$w"; fi
    measure "$w" "$r"
    stop_pids "$SERVER_PID"; SERVER_PID=""
    sleep 0.5
  done
done

jq -Rn --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg cpu "$CPU_MODEL" --argjson cpus "$(nproc)" \
  --arg nodelink "$V_NL" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --argjson workers "$WORKERS" \
  --argjson rounds "$ROUNDS" --argjson duration "$DURATION" '
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[(length - 1) / 2] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  [inputs | split("\t") | {w: .[0], m: .[2], v: (.[3] | tonumber)}] as $rows
  | def of($w; $m): [$rows[] | select(.w == $w and .m == $m) | .v];
  def summary($w): {mbps: (of($w; "mbps") | median), mbps_rounds: of($w; "mbps"),
    server_cores: (of($w; "server_cores") | median), client_cores: (of($w; "client_cores") | median),
    host_cores: (of($w; "host_cores") | median), server_cpu_s_per_gb: (of($w; "server_cpu_s_per_gb") | median),
    busiest_share: (of($w; "busiest_share") | median)};
  {tool: "nodelink scripts/bench-cores.sh", date: $date, machine: {cpu: $cpu, cpus: $cpus, nodelink: $nodelink, load_at_end: $load},
   params: {nodes: 4, rounds: $rounds, duration_s: $duration, direction: "cp → node, 4 single-stream iperf3 at once"},
   one_core: summary("1"), all_cores: (summary($workers | tostring) + {workers: $workers})}
  | . + {ratio: (if .one_core.mbps then ((.all_cores.mbps / .one_core.mbps) * 1000 | round) / 1000 else null end)}' \
  <"$RAW" >"$BENCH_JSON" || die "internal error: could not assemble the JSON result"

say ""
jq -r '"Medians of \(.params.rounds) rounds: --workers 1 \(.one_core.mbps) Mbit/s (server \(.one_core.server_cores) cores, clients \(.one_core.client_cores), host \(.one_core.host_cores));",
  "--workers \(.all_cores.workers) \(.all_cores.mbps) Mbit/s (server \(.all_cores.server_cores) cores, clients \(.all_cores.client_cores), host \(.all_cores.host_cores)).",
  "Aggregate throughput all cores / one core: \(.ratio) (rounds: \(.one_core.mbps_rounds) against \(.all_cores.mbps_rounds))",
  "Server CPU per GB: \(.one_core.server_cpu_s_per_gb) s with one process, \(.all_cores.server_cpu_s_per_gb) s with \(.all_cores.workers), the busiest of them doing \(.all_cores.busiest_share) of it:",
  "one server core carries up to \((8 / .one_core.server_cpu_s_per_gb * 10 | round) / 10) Gbit/s of this traffic; --workers K up to K times that, while the nodes and the host keep up (host cores used here: \(.all_cores.host_cores) of \(.machine.cpus))."' "$BENCH_JSON"
say "JSON: $BENCH_JSON"
DONE=1
