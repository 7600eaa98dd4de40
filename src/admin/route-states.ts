import { Prefix } from '../routing/index.js';
import type { RouteState } from './status.js';

/**
 * Each route in status with its state (RouteState says what each one means): whether the
 * forwarding table carries it and whether the kernel sends it into the TUN. The server judges
 * its Prefix objects (LinkServer.routeStates); a node the tunnel CIDRs its server's welcome named.
 */

/** The routes the kernel sends into the TUN, by canonical CIDR text. */
export type KernelRoutes = ReadonlySet<string>;

/** What `ip route` printed for the TUN, canonical; undefined (could not be read) stays undefined. */
export function kernelRouteSet(texts: readonly string[] | undefined): KernelRoutes | undefined {
  return texts && new Set(texts.map(canonical));
}

/**
 * Server: each route a node's peers-file entry allows. `announced` is what its live session
 * announced, undefined while it has none.
 */
export function nodeRouteStates(
  allowed: readonly Prefix[],
  announced: readonly Prefix[] | undefined,
  kernel: KernelRoutes | undefined,
): RouteState[] {
  return allowed.map((prefix): RouteState => {
    const route = prefix.toString();
    const inKernel = kernel ? kernel.has(route) : null;
    let state: RouteState['state'];
    if (inKernel === false) state = 'missing';
    else if (!announced) state = 'offline';
    else state = announced.some((route) => prefix.contains(route)) ? 'active' : 'not_announced';
    return { route, state, kernel: inKernel };
  });
}

/** Node: the tunnel CIDRs as the server's welcome wrote them, each routed into the TUN or not. */
export function tunnelRouteStates(cidrs: readonly string[], kernel: KernelRoutes | undefined): RouteState[] {
  return cidrs.map((text): RouteState => {
    const route = canonical(text);
    const inKernel = kernel ? kernel.has(route) : null;
    return { route, state: inKernel === false ? 'missing' : 'installed', kernel: inKernel };
  });
}

function canonical(text: string): string {
  try {
    return Prefix.parse(text).toString();
  } catch {
    return text;
  }
}
