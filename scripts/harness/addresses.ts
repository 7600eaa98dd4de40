// The address plan of the namespace harness: every address, prefix and port the topology uses
// is written here once, and the picture below is drawn from these functions.
//
//   ${prefix}-cp   control plane 1  eth0 198.18.0.2/24  fd00:18::2/64      (no route to nodes)
//   ${prefix}-cp2  control plane 2  eth0 198.18.1.2/24  fd00:18:1::2/64    (optional)
//   ${prefix}-cpI  control plane I  eth0 198.18.(I-1).2/24  fd00:18:hex(I-1)::2/64   (optional, I <= 4)
//                                    │
//   ${prefix}-rt   router           cp0  198.18.0.1/24  fd00:18::1/64
//                                   cp1  198.18.1.1/24  fd00:18:1::1/64    (with cp2; cpI-1 with cpI)
//                                   br0  198.19.0.1/24  fd00:19::1/64      (bridge, node network)
//                                   nft: masquerade node network -> cpN; drop NEW cpN -> anywhere
//                                   load balancer (optional): 198.18.200.1:8443 DNAT at random to
//                                   the servers of chosen control planes, like a Service's IP
//                                   routes: 198.19.N.0/24 via node N, fd00:19:N::/64 via node N
//                                    │ nN (bridge port)
//   ${prefix}-nN   node N           eth0 198.19.0.(10+N)/24  fd00:19::hex(10+N)/64   (node 1: fd00:19::b)
//                                   cbr0 198.19.N.1/24  fd00:19:N::1/64    (bridge, like kubenet)
//                                   default via 198.19.0.1 / fd00:19::1, forwarding on
//                                   kubelet stub: HTTPS [::]:10250
//                                    │ vpP (cbr0 port)
//   ${prefix}-nNpP pod P of node N  eth0 198.19.N.(1+P)/24  fd00:19:N::hex(1+P)/64
//                                   default via 198.19.N.1 / fd00:19:N::1
//                                   pod stub: HTTP [::]:8080
//
// The server of control plane i listens on 198.18.(i-1).2:8443 with tunnel CIDRs
// 198.18.(256-i).0/24 and fd00:18:hex(256-i)::/64, distinct per server.
// In IPv6 addresses every number is written in hex: node N's pod CIDR is fd00:19:hex(N)::/64.
// Everything lies in 198.18.0.0/15 and, for IPv6, in fd00:18::/32 and fd00:19::/32.

export const SERVER_PORT = 8443;
export const KUBELET_PORT = 10250;
export const POD_PORT = 8080;
export const MAX_NODES = 200;
export const MAX_PODS = 200;
export const MAX_CONTROL_PLANES = 4;

/** The one address in front of several servers (loadBalance); on no interface, DNAT'd by the router. */
export const LOAD_BALANCER_ADDRESS = '198.18.200.1';

/** The node network as the router masquerades it toward the control planes. */
export const NODE_NETWORK = '198.19.0.0/16';
export const NODE_NETWORK6 = 'fd00:19::/48';

/** Matches an address of the test ranges in `ip` output: the root namespace must show none. */
export const TEST_RANGE_PATTERN = /\b(198\.1[89]\.|fd00:1[89]:)/i;

/** Prefix lengths of every link network (control-plane links, node network, pod bridges). */
const LINK_LENGTH = 24;
const LINK_LENGTH6 = 64;

function hex(n: number): string {
  return n.toString(16);
}

/** `address/24` or `address/64`: an interface address on its link network. */
export function onLink(address: string): string {
  return `${address}/${address.includes(':') ? LINK_LENGTH6 : LINK_LENGTH}`;
}

/** The third IPv6 group of control plane i's network: fd00:18::/64 for the first. */
function cpGroup6(i: number): string {
  return i === 1 ? 'fd00:18:' : `fd00:18:${hex(i - 1)}:`;
}

/** Control plane i's own address (the server's listen address). */
export function cpAddress(i: number): string {
  return `198.18.${i - 1}.2`;
}
export function cpAddress6(i: number): string {
  return `${cpGroup6(i)}:2`;
}

/** The router's side of control plane i's link: the address the cp sees node traffic come from. */
export function routerCpAddress(i: number): string {
  return `198.18.${i - 1}.1`;
}
export function routerCpAddress6(i: number): string {
  return `${cpGroup6(i)}:1`;
}

/** The router's side of the node network: every node's default gateway. */
export const ROUTER_NODE_ADDRESS = '198.19.0.1';
export const ROUTER_NODE_ADDRESS6 = 'fd00:19::1';

/** Tunnel CIDRs of control plane i's server. */
export function tunnelCidr(i: number): string {
  return `198.18.${256 - i}.0/24`;
}
export function tunnelCidr6(i: number): string {
  return `fd00:18:${hex(256 - i)}::/64`;
}

/** 198.19.0.(10+n) */
export function nodeAddress(n: number): string {
  return `198.19.0.${10 + n}`;
}
/** fd00:19::hex(10+n): node 1 is fd00:19::b, node 6 is fd00:19::10. */
export function nodeAddress6(n: number): string {
  return `fd00:19::${hex(10 + n)}`;
}

/** 198.19.n.0/24 */
export function podCidr(n: number): string {
  return `198.19.${n}.0/24`;
}
/** fd00:19:hex(n)::/64 */
export function podCidr6(n: number): string {
  return `fd00:19:${hex(n)}::/64`;
}

/** Node n's address on its pod bridge (cbr0): its pods' gateway. */
export function podGateway(n: number): string {
  return `198.19.${n}.1`;
}
export function podGateway6(n: number): string {
  return `fd00:19:${hex(n)}::1`;
}

/** 198.19.n.(1+p) */
export function podAddress(n: number, p: number): string {
  return `198.19.${n}.${1 + p}`;
}
/** fd00:19:hex(n)::hex(1+p) */
export function podAddress6(n: number, p: number): string {
  return `fd00:19:${hex(n)}::${hex(1 + p)}`;
}

/** What node n's client announces with --route: its node address /32 and /128, its pod CIDRs. */
export function nodeRoutes(n: number): string[] {
  return [`${nodeAddress(n)}/32`, podCidr(n), `${nodeAddress6(n)}/128`, podCidr6(n)];
}

/** `http://198.19.1.2:8080/x` or `http://[fd00:19:1::2]:8080/x`. */
export function url(scheme: 'http' | 'https', host: string, port: number, urlPath = '/'): string {
  const h = host.includes(':') ? `[${host}]` : host;
  return `${scheme}://${h}:${port}${urlPath.startsWith('/') ? urlPath : `/${urlPath}`}`;
}
