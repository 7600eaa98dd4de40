import type { Prefix } from './prefix.js';

/**
 * A node's node IP among the routes it announces: its first host route, IPv4 first. The server
 * checks the path to it, and diagnose pings it.
 */
export function nodeIp(routes: readonly Prefix[]): Prefix | undefined {
  const hosts = routes.filter((route) => route.length === route.bits);
  return hosts.find((route) => route.family === 4) ?? hosts[0];
}
