#!/usr/bin/env bash
# npm run bench — nodelink next to the VPNs it replaces, in one run, on one machine.
#
#   veth      the raw veth pair between the two namespaces (the underlay; the ceiling)
#   nodelink  this checkout, driven only through its CLI (keygen, pubkey, server, client)
#   ovpn-tcp  Debian's OpenVPN, TLS mode, proto tcp, dev tun, AES-256-GCM, userspace data path
#             (the shape of AKS's aks-link: the node is the client and dials the control plane)
#   ovpn-udp  the same OpenVPN over UDP (not in the default set)
#   wg-go     wireguard-go (userspace WireGuard)
#
# Topology: two namespaces made for this run, "<id>-cp" (control plane, runs the iperf3 and ping
# clients) and "<id>-node" (iperf3 server), joined by one veth pair. Addresses: 198.18.0.0/15
# only. Nothing is configured in the root namespace and neither namespace has a default route.
# On exit, failure or Ctrl-C (trap) only the PIDs started here are stopped and both namespaces
# are deleted.
#
# Per round and system: ping RTT (idle), then iperf3 single TCP stream cp → node and node → cp
# (-R), with the CPU ticks (utime+stime, /proc/PID/stat) of the tunnel processes at BOTH ends and
# of the whole host (/proc/stat) read around each run. Reported: medians over ROUNDS rounds,
# CPU seconds per GB received, and the ratios the throughput and CPU targets are stated in.
#
# Usage (root):  npm run bench          (builds, then runs this script)
#                bash scripts/bench.sh  (uses dist/ as it is)
# Environment:   ROUNDS=3 DURATION=5 (s per iperf3 run) PINGS=20 PING_INTERVAL=0.05
#                THROUGHPUT=0  pings only: the idle round trip of links that carry nothing else
#                  (with iperf3 between the rounds, nodelink's code is hot when it is pinged)
#                SYSTEMS="veth nodelink ovpn-tcp wg-go" (any of: veth nodelink ovpn-tcp ovpn-udp wg-go)
#                BENCH_JSON=/path/result.json (default /tmp/nodelink-bench-<UTC time>.json)
#                BENCH_NODELINK_ARGS="--mtu 1420"  extra flags for both nodelink ends
#                BENCH_SERVER_ARGS="--allow-node-initiated"  extra flags for the nodelink server only
#                BENCH_CP_NFT="table inet t { ... }"  an nftables ruleset for the control-plane namespace
#                NODELINK_ROOT=/path/to/checkout     (default: the checkout holding this script)
# Needs:         iproute2, iperf3, iputils-ping, jq, coreutils timeout; per system: node (and a
#                built checkout), openvpn + openssl, wireguard-go + wg. A system whose binary is
#                missing is skipped with a line saying so.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
PINGS=${PINGS:-20}
PING_INTERVAL=${PING_INTERVAL:-0.05}
THROUGHPUT=${THROUGHPUT:-1}
SYSTEMS=${SYSTEMS:-"veth nodelink ovpn-tcp wg-go"}
BENCH_NODELINK_ARGS=${BENCH_NODELINK_ARGS:-}
BENCH_SERVER_ARGS=${BENCH_SERVER_ARGS:-}
NODELINK_ROOT=${NODELINK_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
STARTED=$(date -u +%Y%m%dT%H%M%SZ)
BENCH_JSON=${BENCH_JSON:-/tmp/nodelink-bench-$STARTED.json}

die() { echo "bench: $*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

for v in ROUNDS DURATION PINGS; do
  [[ ${!v} =~ ^[1-9][0-9]{0,3}$ ]] || die "$v must be a whole number from 1 to 9999, got '${!v}'"
done
[[ $THROUGHPUT =~ ^[01]$ ]] || die "THROUGHPUT must be 1 (iperf3 and pings) or 0 (pings only), got '$THROUGHPUT'"
[[ $PING_INTERVAL =~ ^[0-9]*\.?[0-9]+$ ]] || die "PING_INTERVAL must be a number of seconds, got '$PING_INTERVAL'"
[ "$(id -u)" = 0 ] || die "needs root (it creates network namespaces): sudo npm run bench"
for c in ip iperf3 ping jq timeout awk od; do
  command -v "$c" >/dev/null || die "missing command '$c': apt-get install -y iproute2 iperf3 iputils-ping jq coreutils"
done

# ---------------------------------------------------------------- names unique to this run
ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')       # 6 hex digits
NS_CP=nlb$ID-cp NS_NODE=nlb$ID-node
IF_CP=nb${ID}c IF_NODE=nb${ID}n                        # veth ends (interface names ≤ 15 chars)
UL_CP=198.18.0.1 UL_NODE=198.18.0.2                    # underlay, 198.18.0.0/24
NL_NET=198.18.4.0 NL_NODE=198.18.5.2                   # nodelink tunnel CIDR /24; the node's "node IP"
OVT_NET=198.18.1.0 OVU_NET=198.18.2.0                  # OpenVPN tcp / udp tunnel subnets /24
WG_CP=198.18.3.1 WG_NODE=198.18.3.2                    # WireGuard tunnel /24
WG_SOCKDIR=/var/run/wireguard                          # wireguard-go's UAPI sockets: global, so the
WG_IF_CP=nb${ID}wc WG_IF_NODE=nb${ID}wn                # interface names are unique to the run
IPERF_PORT=5201
HZ=$(getconf CLK_TCK)

# ---------------------------------------------------------------- cleanup (trap)
WORK=$(mktemp -d "/tmp/nodelink-bench.$ID.XXXX")
[ -d $WG_SOCKDIR ] && WG_SOCKDIR_EXISTED=1 || WG_SOCKDIR_EXISTED=0
DONE=0          # set once the report is out: a non-zero exit after it needs no log dump
PIDS=()          # every background process started here
NS_MADE=()       # namespaces created here
cleanup() {
  local rc=$? p i alive
  set +e
  trap - INT TERM
  if [ "$rc" != 0 ] && [ "$DONE" = 0 ]; then   # on an abort show the daemons' last words
    for f in "$WORK"/*.log; do [ -s "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done >&2
  fi
  stop_pids "${PIDS[@]}"
  wait 2>/dev/null
  for ns in "${NS_MADE[@]}"; do ip netns del "$ns" 2>/dev/null; done
  rm -f "$WG_SOCKDIR/$WG_IF_CP.sock" "$WG_SOCKDIR/$WG_IF_NODE.sock"
  [ "$WG_SOCKDIR_EXISTED" = 0 ] && rmdir "$WG_SOCKDIR" 2>/dev/null
  rm -rf "$WORK"
  exit "$rc"
}
# stop_pids PID...: SIGTERM, up to 3 s for a clean exit, then SIGKILL what is left
stop_pids() {
  local p i alive
  [ $# = 0 ] && return 0
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 30); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'echo "bench: interrupted; cleaning up" >&2; exit 130' INT TERM

# spawn NS LOGNAME CMD...: CMD in NS, in the background. `ip netns exec` (and `env`) exec in
# place, so $! is the daemon's own PID.
spawn() {
  local ns=$1 name=$2; shift 2
  ip netns exec "$ns" "$@" >"$WORK/$name.log" 2>&1 &
  LASTPID=$!; PIDS+=("$LASTPID")
}
# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds, at most SECONDS
wait_for() { local t=$1 i; shift; for i in $(seq $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
# wait_while_alive SECONDS "PID..." CMD...: the same, but give up at once when one PID has exited
wait_while_alive() {
  local t=$1 pids=$2 i p; shift 2
  for i in $(seq $((t * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    for p in $pids; do kill -0 "$p" 2>/dev/null || return 1; done
    sleep 0.1
  done
  return 1
}
ping1() { nsx "$1" ping -c1 -W1 "$2"; }
listening() { nsx "$1" ss -ltnH "sport = :$2" | grep -q .; }
if_mtu() { ip -n "$1" -o link show dev "$2" | sed -n 's/.* mtu \([0-9]*\).*/\1/p'; }
if_addr4() { ip -n "$1" -4 -o addr show dev "$2" 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}'; }
has_addr4() { [ -n "$(if_addr4 "$1" "$2")" ]; }
comms() { local p out=(); for p in "$@"; do out+=("$p($(cat "/proc/$p/comm" 2>/dev/null))"); done; echo "${out[*]}"; }

# ---------------------------------------------------------------- bookkeeping files
RAW=$WORK/raw.tsv      # system  metric  round  value        one row per measurement
INFO=$WORK/info.tsv    # system  key     value                tun mtu, cipher, pids, ...
SKIP=$WORK/skip.tsv    # system  reason                       skipped or failed systems
: >"$RAW"; : >"$INFO"; : >"$SKIP"
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RAW"; }
info() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$INFO"; }
skip() { printf '%s\t%s\n' "$1" "$2" >>"$SKIP"; say "# $1: SKIPPED — $2"; }
num() { awk -v v="$1" -v d="$2" 'BEGIN { if (v == "" || v == "null") print "-"; else printf("%." d "f", v) }'; }

# ---------------------------------------------------------------- the machine
first_line() { "$@" 2>/dev/null | head -n1 || true; }
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
CPUS=$(nproc)
AES=$(grep -qw aes /proc/cpuinfo && echo yes || echo no)
V_NODE=$(first_line node --version)
V_OVPN=$(first_line openvpn --version | cut -d' ' -f1-2)
V_WG=$(first_line wireguard-go --version)
V_IPERF=$(first_line iperf3 --version | cut -d' ' -f1-2)
V_NL="$(cd "$NODELINK_ROOT" && node -p 'require("./package.json").version' 2>/dev/null || echo '?') \
$(git -C "$NODELINK_ROOT" describe --always --dirty 2>/dev/null || echo 'no git')"
say "nodelink bench, $(date -u +%Y-%m-%dT%H:%M:%SZ), run id $ID"
say "# machine: $CPU_MODEL × $CPUS CPUs (aes: $AES), kernel $(uname -r), $(uname -m)"
say "# versions: node ${V_NODE:-none}, nodelink $V_NL, ${V_OVPN:-openvpn none}, ${V_WG:-wireguard-go none}, ${V_IPERF:-iperf3}"
if [ "$THROUGHPUT" = 1 ]; then
  say "# rounds $ROUNDS, iperf3 -t $DURATION, 1 TCP stream; ping -c $PINGS -i $PING_INTERVAL; tcp cc $(sysctl -n net.ipv4.tcp_congestion_control)"
else
  say "# rounds $ROUNDS, pings only (THROUGHPUT=0): ping -c $PINGS -i $PING_INTERVAL; tcp cc $(sysctl -n net.ipv4.tcp_congestion_control)"
fi

# ---------------------------------------------------------------- namespaces + veth underlay
ip netns add "$NS_CP"; NS_MADE+=("$NS_CP")
ip netns add "$NS_NODE"; NS_MADE+=("$NS_NODE")
ip -n "$NS_CP" link set lo up
if [ -n "${BENCH_CP_NFT:-}" ]; then ip netns exec "$NS_CP" nft -f - <<<"$BENCH_CP_NFT" || die "BENCH_CP_NFT: nft refused it"; fi
ip -n "$NS_NODE" link set lo up
ip -n "$NS_CP" link add "$IF_CP" type veth peer name "$IF_NODE" netns "$NS_NODE"
ip -n "$NS_CP" addr add $UL_CP/24 dev "$IF_CP"
ip -n "$NS_NODE" addr add $UL_NODE/24 dev "$IF_NODE"
ip -n "$NS_CP" link set "$IF_CP" up
ip -n "$NS_NODE" link set "$IF_NODE" up
wait_for 10 ping1 "$NS_CP" $UL_NODE || die "the veth underlay does not pass packets"

# Per system: the address iperf3 and ping aim at, the tunnel PIDs, the two tunnel devices.
declare -A DST PIDS_OF DEVS

start_veth() {
  DST[veth]=$UL_NODE; PIDS_OF[veth]=""; DEVS[veth]="$IF_CP $IF_NODE"
  info veth tun_mtu "$(if_mtu "$NS_CP" "$IF_CP")"
}

start_nodelink() {
  local R=$NODELINK_ROOT K=$WORK/nl bin spid cpid spub npub tun_cp=nb${ID}lc tun_node=nb${ID}ln
  command -v node >/dev/null || { skip nodelink "node is not installed"; return 2; }
  bin=$(cd "$R" && node -p 'const b = require("./package.json").bin; typeof b === "string" ? b : (b && b.nodelink) || ""' 2>/dev/null) || bin=""
  [ -n "$bin" ] && [ -f "$R/$bin" ] || { skip nodelink "$R has no built CLI (package.json bin): run npm ci, or npm run build"; return 2; }
  [ -e /dev/net/tun ] || { skip nodelink "/dev/net/tun is missing"; return 2; }
  mkdir -p "$K"
  (umask 077; node "$R/$bin" keygen >"$K/cp.key" && node "$R/$bin" keygen >"$K/node.key") || { FAIL="keygen failed"; return 1; }
  spub=$(node "$R/$bin" pubkey <"$K/cp.key") && npub=$(node "$R/$bin" pubkey <"$K/node.key") || { FAIL="pubkey failed"; return 1; }
  printf '{"peers":[{"name":"bench-node","publicKey":"%s","allowedIPs":["%s/32"]}]}\n' "$npub" $NL_NODE >"$K/peers.json"
  ip -n "$NS_NODE" addr add $NL_NODE/32 dev lo        # the "node IP" that only the link reaches
  # shellcheck disable=SC2086 # BENCH_NODELINK_ARGS is a list of flags
  spawn "$NS_CP" nodelink-server node "$R/$bin" server --listen $UL_CP:8443 --key "$K/cp.key" \
    --peers "$K/peers.json" --tunnel-cidr $NL_NET/24 --tun "$tun_cp" --admin-socket "$K/server.sock" $BENCH_NODELINK_ARGS $BENCH_SERVER_ARGS
  spid=$LASTPID
  PIDS_OF[nodelink]=$spid
  wait_while_alive 20 "$spid" listening "$NS_CP" 8443 || { FAIL="the server did not listen on $UL_CP:8443"; return 1; }
  # shellcheck disable=SC2086
  spawn "$NS_NODE" nodelink-client node "$R/$bin" client --server $UL_CP:8443 --server-key "$spub" \
    --key "$K/node.key" --name bench-node --route $NL_NODE/32 --tun "$tun_node" --admin-socket "$K/client.sock" $BENCH_NODELINK_ARGS
  cpid=$LASTPID
  PIDS_OF[nodelink]="$spid $cpid"
  wait_while_alive 30 "$spid $cpid" ping1 "$NS_CP" $NL_NODE || { FAIL="$NL_NODE is not reachable through the link"; return 1; }
  DST[nodelink]=$NL_NODE; DEVS[nodelink]="$tun_cp $tun_node"
  info nodelink tun_mtu "$(if_mtu "$NS_CP" "$tun_cp")"
  info nodelink extra_args "$BENCH_NODELINK_ARGS"
  info nodelink server_args "$BENCH_SERVER_ARGS"
  say "# nodelink: up; pids $(comms $spid $cpid); node address $NL_NODE; tun mtu $(if_mtu "$NS_CP" "$tun_cp")${BENCH_NODELINK_ARGS:+; extra flags: $BENCH_NODELINK_ARGS}"
}

make_pki() {   # EC P-256 CA, a server certificate for cp and a client certificate for node
  [ -f "$WORK/pki/ca.crt" ] && return 0
  mkdir -p "$WORK/pki"
  (
    cd "$WORK/pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -keyout ca.key -out ca.crt -subj /CN=nodelink-bench-ca \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    for who in cp:serverAuth node:clientAuth; do
      n=${who%%:*} eku=${who#*:}
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $n.key -out $n.csr -subj /CN=$n
      printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=%s\n' "$eku" >$n.ext
      openssl x509 -req -in $n.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile $n.ext -out $n.crt
    done
  ) >"$WORK/pki.log" 2>&1
}

start_ovpn() {   # start_ovpn SYSTEM tcp|udp NET
  local sys=$1 proto=$2 net=$3 dev=nb${ID}o${2:0:1} sproto=$2 cproto=$2 P=$WORK/pki spid cpid
  command -v openvpn >/dev/null || { skip "$sys" "openvpn is not installed (apt-get install -y openvpn)"; return 2; }
  command -v openssl >/dev/null || { skip "$sys" "openssl is not installed"; return 2; }
  make_pki || { FAIL="making the OpenVPN PKI failed (see pki.log)"; return 1; }
  [ "$proto" = tcp ] && sproto=tcp-server cproto=tcp-client
  # Both ends: tun, AES-256-GCM only, no compression, no DCO (userspace data path, like aks-link).
  local common="dev $dev
dev-type tun
data-ciphers AES-256-GCM
allow-compression no
disable-dco
ca $P/ca.crt
verb 3"
  printf '%s\nproto %s\nlocal %s\nport 1194\nserver %s 255.255.255.0\ntopology subnet\ncert %s\nkey %s\ndh none\nkeepalive 10 60\n' \
    "$common" $sproto $UL_CP "$net" "$P/cp.crt" "$P/cp.key" >"$WORK/$sys-server.conf"
  printf '%s\nclient\nproto %s\nremote %s 1194\nnobind\ncert %s\nkey %s\nremote-cert-tls server\n' \
    "$common" $cproto $UL_CP "$P/node.crt" "$P/node.key" >"$WORK/$sys-client.conf"
  spawn "$NS_CP" "$sys-server" openvpn --config "$WORK/$sys-server.conf"; spid=$LASTPID
  PIDS_OF[$sys]=$spid
  sleep 0.5
  spawn "$NS_NODE" "$sys-client" openvpn --config "$WORK/$sys-client.conf"; cpid=$LASTPID
  PIDS_OF[$sys]="$spid $cpid"
  wait_while_alive 30 "$spid $cpid" has_addr4 "$NS_NODE" "$dev" || { FAIL="the client got no tunnel address"; return 1; }
  DST[$sys]=$(if_addr4 "$NS_NODE" "$dev")
  wait_for 15 ping1 "$NS_CP" "${DST[$sys]}" || { FAIL="tunnel up but ${DST[$sys]} is not reachable"; return 1; }
  DEVS[$sys]="$dev $dev"
  local cipher
  cipher=$(grep -ho "Data Channel: cipher '[^']*'" "$WORK/$sys-client.log" | head -n1 | cut -d"'" -f2 || true)
  info "$sys" tun_mtu "$(if_mtu "$NS_CP" "$dev")"
  info "$sys" cipher "${cipher:-?}"
  say "# $sys: up; pids $(comms $spid $cpid); node tunnel ip ${DST[$sys]}; tun mtu $(if_mtu "$NS_CP" "$dev"); data cipher ${cipher:-?}"
}

start_wg() {
  local K=$WORK/wg cpid npid
  for c in wireguard-go wg; do
    command -v $c >/dev/null || { skip wg-go "$c is not installed (apt-get install -y wireguard-go wireguard-tools)"; return 2; }
  done
  [ -e /dev/net/tun ] || { skip wg-go "/dev/net/tun is missing"; return 2; }
  mkdir -p "$K"
  (umask 077; for n in cp node; do wg genkey >"$K/$n.key"; wg pubkey <"$K/$n.key" >"$K/$n.pub"; done)
  # WG_PROCESS_FOREGROUND=1: no daemonizing, so the PID stays ours. wireguard-go's tun: MTU 1420.
  spawn "$NS_CP" wg-cp env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error wireguard-go "$WG_IF_CP"; cpid=$LASTPID
  spawn "$NS_NODE" wg-node env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error wireguard-go "$WG_IF_NODE"; npid=$LASTPID
  PIDS_OF[wg-go]="$cpid $npid"
  wait_while_alive 10 "$cpid" test -S "$WG_SOCKDIR/$WG_IF_CP.sock" || { FAIL="wireguard-go (cp) did not start"; return 1; }
  wait_while_alive 10 "$npid" test -S "$WG_SOCKDIR/$WG_IF_NODE.sock" || { FAIL="wireguard-go (node) did not start"; return 1; }
  nsx "$NS_CP" wg set "$WG_IF_CP" private-key "$K/cp.key" listen-port 51820 \
    peer "$(cat "$K/node.pub")" allowed-ips $WG_NODE/32 endpoint $UL_NODE:51820
  nsx "$NS_NODE" wg set "$WG_IF_NODE" private-key "$K/node.key" listen-port 51820 \
    peer "$(cat "$K/cp.pub")" allowed-ips $WG_CP/32 endpoint $UL_CP:51820
  ip -n "$NS_CP" addr add $WG_CP/24 dev "$WG_IF_CP"
  ip -n "$NS_NODE" addr add $WG_NODE/24 dev "$WG_IF_NODE"
  ip -n "$NS_CP" link set "$WG_IF_CP" up
  ip -n "$NS_NODE" link set "$WG_IF_NODE" up
  wait_for 15 ping1 "$NS_CP" $WG_NODE || { FAIL="$WG_NODE is not reachable through the tunnel"; return 1; }
  DST[wg-go]=$WG_NODE; DEVS[wg-go]="$WG_IF_CP $WG_IF_NODE"
  info wg-go tun_mtu "$(if_mtu "$NS_CP" "$WG_IF_CP")"
  say "# wg-go: up; pids $(comms $cpid $npid); node tunnel ip $WG_NODE; tun mtu $(if_mtu "$NS_CP" "$WG_IF_CP")"
}

# Start every selected system. A missing binary skips it (status 2); a start failure is
# reported, its processes stopped, and the run goes on without it (the exit status says so).
MEASURED=() FAILED=0
for sys in $SYSTEMS; do
  FAIL="" st=0
  case $sys in
    veth) start_veth || st=$? ;;
    nodelink) start_nodelink || st=$? ;;
    ovpn-tcp) start_ovpn ovpn-tcp tcp $OVT_NET || st=$? ;;
    ovpn-udp) start_ovpn ovpn-udp udp $OVU_NET || st=$? ;;
    wg-go) start_wg || st=$? ;;
    *) die "unknown system '$sys' in SYSTEMS (known: veth nodelink ovpn-tcp ovpn-udp wg-go)" ;;
  esac
  if [ $st = 0 ]; then
    MEASURED+=("$sys")
  elif [ $st = 1 ]; then
    FAILED=1
    printf '%s\t%s\n' "$sys" "FAILED to start: $FAIL" >>"$SKIP"
    say "# $sys: FAILED to start — $FAIL; its log:"
    case $sys in wg-go) logs=("$WORK"/wg-*.log) ;; *) logs=("$WORK/$sys"-*.log) ;; esac
    for f in "${logs[@]}"; do [ -s "$f" ] && tail -n 8 "$f" | sed "s|^|#   $(basename "$f"): |"; done
    # shellcheck disable=SC2086
    stop_pids ${PIDS_OF[$sys]:-}
  fi
done
[ ${#MEASURED[@]} -gt 0 ] || die "no system left to measure"

spawn "$NS_NODE" iperf3-server iperf3 -s -p $IPERF_PORT
wait_for 10 listening "$NS_NODE" $IPERF_PORT || die "the iperf3 server did not start"

# ---------------------------------------------------------------- measurements
proc_ticks() {   # utime+stime (clock ticks, all threads) of the given PIDs, summed; fails if one has exited
  local t=0 p f
  for p in "$@"; do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || return 1
    t=$((t + $(sed 's/^.*) //' <<<"$f" | awk '{print $12 + $13}')))   # fields after "pid (comm) "
  done
  echo $t
}
host_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }   # non-idle, all CPUs

measure_ping() {   # measure_ping SYSTEM ROUND: median, mean and minimum of the replies' RTT
  local sys=$1 r=$2 out med avg min loss
  out=$(timeout 30 ip netns exec "$NS_CP" ping -n -c "$PINGS" -i "$PING_INTERVAL" -W 1 "${DST[$sys]}" 2>&1) || true
  med=$(sed -n 's/.* time=\([0-9.]*\) ms$/\1/p' <<<"$out" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')
  avg=$(awk -F/ '/^rtt|^round-trip/{print $5}' <<<"$out")
  min=$(awk -F/ '/^rtt|^round-trip/{split($4, a, "= "); print a[2]}' <<<"$out")
  loss=$(grep -o '[0-9.]*% packet loss' <<<"$out" || echo "no reply")
  rec "$sys" rtt_ms "$r" "${med:-null}"; rec "$sys" rtt_avg_ms "$r" "${avg:-null}"; rec "$sys" rtt_min_ms "$r" "${min:-null}"
  say "  $(printf '%-9s' "$sys") ping      median $(num "$med" 3) ms, avg $(num "$avg" 3), min $(num "$min" 3) ($loss)"
}

measure_iperf() {   # measure_iperf SYSTEM ROUND fwd|rev
  local sys=$1 r=$2 key=cp_to_node label="cp→node" args=() json c0 c1 h0 h1 bps bytes retr m
  [ "$3" = rev ] && { args=(-R); key=node_to_cp; label="node→cp"; }
  # shellcheck disable=SC2086
  c0=$(proc_ticks ${PIDS_OF[$sys]}) || die "$sys: a tunnel process has exited (pids ${PIDS_OF[$sys]}); logs below"
  h0=$(host_ticks)
  json=$(timeout $((DURATION + 20)) ip netns exec "$NS_CP" iperf3 -c "${DST[$sys]}" -p $IPERF_PORT \
    -t "$DURATION" --connect-timeout 3000 -J "${args[@]}" 2>>"$WORK/iperf3-client.log") || true
  # shellcheck disable=SC2086
  c1=$(proc_ticks ${PIDS_OF[$sys]}) || die "$sys: a tunnel process exited during the run (pids ${PIDS_OF[$sys]}); logs below"
  h1=$(host_ticks)
  bps=$(jq -r '.end.sum_received.bits_per_second // empty' <<<"$json" 2>/dev/null || true)
  bytes=$(jq -r '.end.sum_received.bytes // empty' <<<"$json" 2>/dev/null || true)
  retr=$(jq -r '.end.sum_sent.retransmits // empty' <<<"$json" 2>/dev/null || true)
  if [ -z "$bps" ] || [ -z "$bytes" ] || [ "$bytes" = 0 ]; then
    say "  $(printf '%-9s' "$sys") $label  iperf3 FAILED: $(jq -r '.error // empty' <<<"$json" 2>/dev/null || tail -n1 <<<"$json")"
    for m in mbps gb cpu_s_per_gb host_cpu_s_per_gb retransmits; do rec "$sys" "${key}_$m" "$r" null; done
    return 0
  fi
  local mbps gb cpu cpg hcpu hpg
  mbps=$(awk -v x="$bps" 'BEGIN{printf "%.1f", x / 1e6}')
  gb=$(awk -v x="$bytes" 'BEGIN{printf "%.4f", x / 1e9}')
  hcpu=$(awk -v a="$h0" -v b="$h1" -v hz="$HZ" 'BEGIN{printf "%.2f", (b - a) / hz}')
  hpg=$(awk -v c="$hcpu" -v g="$gb" 'BEGIN{printf "%.2f", c / g}')
  if [ -n "${PIDS_OF[$sys]}" ]; then
    cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" 'BEGIN{printf "%.2f", (b - a) / hz}')
    cpg=$(awk -v c="$cpu" -v g="$gb" 'BEGIN{printf "%.2f", c / g}')
  else
    cpu=null cpg=null
  fi
  rec "$sys" "${key}_mbps" "$r" "$mbps"; rec "$sys" "${key}_gb" "$r" "$gb"
  rec "$sys" "${key}_cpu_s_per_gb" "$r" "$cpg"; rec "$sys" "${key}_host_cpu_s_per_gb" "$r" "$hpg"
  rec "$sys" "${key}_retransmits" "$r" "${retr:-null}"
  say "  $(printf '%-9s' "$sys") $label  $(printf '%8s' "$mbps") Mbit/s  $gb GB  retr ${retr:-?}  tunnel cpu $(num "$cpu" 2) s = $(num "$cpg" 2) s/GB  host cpu $hcpu s = $hpg s/GB"
}

# Systems interleave within each round, so a slow drift of the machine hits all of them alike.
for r in $(seq "$ROUNDS"); do
  say "round $r/$ROUNDS"
  for sys in "${MEASURED[@]}"; do
    measure_ping "$sys" "$r"
    [ "$THROUGHPUT" = 1 ] || continue
    measure_iperf "$sys" "$r" fwd; sleep 1
    measure_iperf "$sys" "$r" rev; sleep 1
  done
done

# ---------------------------------------------------------------- diagnostics (whole run)
for sys in "${MEASURED[@]}"; do
  read -r dcp dnode <<<"${DEVS[$sys]}"
  drops=$(for x in "$NS_CP $dcp" "$NS_NODE $dnode"; do
    set -- $x
    ip -j -s -n "$1" link show dev "$2" | jq -r --arg n "${1##*-}/$2" '.[0].stats64 | "\($n) rx_dropped=\(.rx.dropped) tx_dropped=\(.tx.dropped)"'
  done | paste -sd' ')
  say "# diag $sys: $drops"
done
if [[ " ${MEASURED[*]} " == *" nodelink "* ]]; then
  for end in server client; do
    d=$(node "$NODELINK_ROOT/dist/src/cli/main.js" status --admin-socket "$WORK/nl/$end.sock" --json 2>/dev/null |
      jq -c '{dropsByReason, peers: [.peers[] | {name, drops, dropsByReason}]}' 2>/dev/null || echo "status unavailable")
    say "# diag nodelink $end status: $d"
  done
fi

# ---------------------------------------------------------------- JSON (medians, rounds, ratios)
jq -n --rawfile raw "$RAW" --rawfile infos "$INFO" --rawfile skips "$SKIP" \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg systems "${MEASURED[*]}" \
  --arg cpu "$CPU_MODEL" --argjson cpus "$CPUS" --arg aes "$AES" --arg kernel "$(uname -r)" \
  --arg node "$V_NODE" --arg nodelink "$V_NL" --arg openvpn "$V_OVPN" --arg wgv "$V_WG" --arg iperf "$V_IPERF" \
  --arg cc "$(sysctl -n net.ipv4.tcp_congestion_control)" \
  --argjson rounds "$ROUNDS" --argjson duration "$DURATION" --argjson pings "$PINGS" --arg interval "$PING_INTERVAL" \
  --argjson throughput "$THROUGHPUT" '
  def rows($s): $s | split("\n") | map(select(length > 0) | split("\t"));
  def median: map(select(. != null)) | sort
    | if length == 0 then null elif length % 2 == 1 then .[(length - 1) / 2] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r3: if . == null then null else (. * 1000 | round) / 1000 end;
  def ratio($a; $b): if $a == null or $b == null or $b == 0 then null else ($a / $b | r3) end;
  (rows($raw) | map({s: .[0], m: .[1], v: (.[3] | if . == "null" then null else tonumber end)})) as $raw
  | ($systems | split(" ") | map(select(length > 0))) as $measured
  | ($measured | map(. as $s | {key: $s, value: (
        (rows($infos) | map(select(.[0] == $s) | {key: .[1], value: (.[2] | tonumber? // .)}) | from_entries)
        + ([$raw[] | select(.s == $s)] | group_by(.m) | map({key: .[0].m, value: (map(.v) | median)}) | from_entries)
        + {rounds: ([$raw[] | select(.s == $s)] | group_by(.m) | map({key: .[0].m, value: map(.v)}) | from_entries)}
      )}) | from_entries) as $res
  | ($res.nodelink // {}) as $nl | ($res["ovpn-tcp"] // {}) as $ov | ($res["wg-go"] // {}) as $wgr | ($res.veth // {}) as $veth
  | def added($x): if $x.rtt_ms == null or $veth.rtt_ms == null then null else $x.rtt_ms - $veth.rtt_ms end;
  {
    tool: "nodelink scripts/bench.sh", date: $date,
    machine: {cpu: $cpu, cpus: $cpus, aes: ($aes == "yes"), kernel: $kernel, node: $node, nodelink: $nodelink,
              openvpn: $openvpn, wireguard_go: $wgv, iperf3: $iperf, tcp_congestion_control: $cc},
    params: {rounds: $rounds, duration_s: $duration, pings: $pings, ping_interval_s: ($interval | tonumber),
             throughput_measured: ($throughput == 1),
             iperf3: "one TCP stream; cp_to_node = client in cp sends, node_to_cp = -R",
             rtt_ms: "median of the idle ping replies of a round (rtt_avg_ms, rtt_min_ms: ping summary)",
             cpu_s_per_gb: "utime+stime of the tunnel processes at both ends / GB received (1e9 bytes)",
             host_cpu_s_per_gb: "all non-idle CPU of the machine (iperf3 and kernel included) / GB received"},
    skipped: (rows($skips) | map({key: .[0], value: .[1]}) | from_entries),
    results: $res,
    ratios: [
      {name: "nodelink / ovpn-tcp throughput cp→node", value: ratio($nl.cp_to_node_mbps; $ov.cp_to_node_mbps), target: ">= 2"},
      {name: "nodelink / wg-go throughput cp→node", value: ratio($nl.cp_to_node_mbps; $wgr.cp_to_node_mbps), target: ">= 1.2"},
      {name: "nodelink / ovpn-tcp CPU s/GB cp→node", value: ratio($nl.cp_to_node_cpu_s_per_gb; $ov.cp_to_node_cpu_s_per_gb), target: "<= 0.7"},
      {name: "nodelink / ovpn-tcp added RTT (RTT − veth RTT)", value: ratio(added($nl); added($ov)), target: "<= 1"},
      {name: "nodelink / ovpn-tcp RTT", value: ratio($nl.rtt_ms; $ov.rtt_ms), target: "<= 1"},
      {name: "nodelink / ovpn-tcp throughput node→cp", value: ratio($nl.node_to_cp_mbps; $ov.node_to_cp_mbps), target: null},
      {name: "nodelink / ovpn-tcp CPU s/GB node→cp", value: ratio($nl.node_to_cp_cpu_s_per_gb; $ov.node_to_cp_cpu_s_per_gb), target: null}
    ] | map(. + {met: (if .value == null or .target == null then null
                       else (.target | split(" ")) as [$op, $t] | (if $op == ">=" then .value >= ($t | tonumber) else .value <= ($t | tonumber) end) end)})
  }' >"$WORK/result.json" || die "internal error: could not assemble the JSON result"
cp "$WORK/result.json" "$BENCH_JSON"

# ---------------------------------------------------------------- table
say ""
say "Medians of $ROUNDS round(s). Mbit/s: iperf3 receiver, one TCP stream. CPU s/GB: CPU seconds of the tunnel"
say "processes at both ends (utime+stime) per GB received; host: all non-idle CPU (iperf3 and kernel included)."
say ""
jq -r '
  def pad($n): tostring | if length >= $n then . else " " * ($n - length) + . end;
  def rpad($n): tostring | if length >= $n then . else . + " " * ($n - length) end;
  def fix($d): if . == null then "–" elif $d == 0 then (round | tostring)
    else (. * pow(10; $d) | round | tostring) | ("0" * ($d + 1 - length)) + . | .[0:length - $d] + "." + .[length - $d:] end;
  ["system", "tun MTU", "cp→node Mbit/s", "node→cp Mbit/s", "RTT ms", "CPU s/GB cp→node", "CPU s/GB node→cp",
   "host s/GB cp→node", "host s/GB node→cp"] as $head
  | ($head | map(length) | .[0] = 9) as $w
  | def row: . as $r | "| " + ([range(0; $w | length) as $i | $r[$i] | if $i == 0 then rpad($w[$i]) else pad($w[$i]) end]
      | join(" | ")) + " |";
  ($head | row),
  ("|" + ($w | to_entries | map(if .key == 0 then "-" * (.value + 2) else "-" * (.value + 1) + ":" end) | join("|")) + "|"),
  (.results | to_entries[] | [.key, (.value.tun_mtu | tostring), (.value.cp_to_node_mbps | fix(0)),
    (.value.node_to_cp_mbps | fix(0)), (.value.rtt_ms | fix(3)), (.value.cp_to_node_cpu_s_per_gb | fix(2)),
    (.value.node_to_cp_cpu_s_per_gb | fix(2)), (.value.cp_to_node_host_cpu_s_per_gb | fix(2)),
    (.value.node_to_cp_host_cpu_s_per_gb | fix(2))] | row),
  (.skipped | to_entries[] | "# \(.key): \(.value)")' "$WORK/result.json"
say ""
say "Ratios against the targets:"
jq -r '.ratios[] | "  \(.name | . + " " * (48 - length)) \(if .value == null then "–   (a system is missing)" else (.value | tostring) end)\(if .target == null or .value == null then "" else "   target \(.target): \(if .met then "met" else "NOT met" end)" end)"' "$WORK/result.json"
say ""
say "JSON: $BENCH_JSON"
DONE=1
exit $FAILED
