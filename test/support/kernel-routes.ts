import type { Harness } from '../../scripts/harness/index.js';
import { parseRoutes, type KernelRoute } from '../../src/tun/index.js';

/** Every IPv4 and IPv6 route of a namespace with nodelink's routing protocol (78), in any table. */
export async function nodelinkRoutes(h: Harness, ns: string): Promise<KernelRoute[]> {
  const out: KernelRoute[] = [];
  for (const family of [4, 6] as const) {
    const r = await h.exec(ns, ['ip', '-N', '-j', `-${family}`, 'route', 'show', 'table', 'all']);
    out.push(...parseRoutes(r.stdout, family).filter((route) => route.protocol === 78));
  }
  return out;
}

/** The device `ip route get` picks for an address in a namespace (undefined: no device). */
export async function routeDevice(h: Harness, ns: string, address: string): Promise<string | undefined> {
  const r = await h.exec(ns, ['ip', '-j', 'route', 'get', address], { allowFail: true });
  if (r.code !== 0) return undefined;
  return (JSON.parse(r.stdout) as Array<{ dev?: string }>)[0]?.dev;
}
