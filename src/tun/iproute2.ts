import { execFileSync } from 'node:child_process';
import { runTool } from './exec.js';

/**
 * Kernel addresses and routes go through iproute2, the tool operators use to inspect them,
 * so what nodelink did is exactly what `ip route` shows. Calls are rare (setup, peer changes),
 * never per packet.
 */
export function ip(args: readonly string[]): Promise<string> {
  return runTool('ip', args, { code: 'iproute2', timeoutMs: 10_000 });
}

/**
 * The destinations in `ip -j route show` output, as CIDR text. iproute2 prints a host route
 * without its length, so /32 or /128 is added; the default route is left out.
 */
export function routeDestinations(json: string): string[] {
  const destinations: string[] = [];
  for (const entry of JSON.parse(json || '[]') as Array<{ dst?: string }>) {
    if (!entry.dst || entry.dst === 'default') continue;
    destinations.push(entry.dst.includes('/') ? entry.dst : `${entry.dst}/${entry.dst.includes(':') ? 128 : 32}`);
  }
  return destinations;
}

/**
 * The destinations routed on a device, both families, as CIDR text the way `ip route` prints
 * them (routeDestinations); undefined when `ip` could not say.
 */
export async function kernelRoutes(dev: string): Promise<string[] | undefined> {
  try {
    const [v4, v6] = await Promise.all([
      // The server's routes live in a table of their own (routes.ts), the node's in main.
      ip(['-j', '-4', 'route', 'show', 'table', 'all', 'dev', dev]),
      ip(['-j', '-6', 'route', 'show', 'table', 'all', 'dev', dev]),
    ]);
    return [...routeDestinations(v4), ...routeDestinations(v6)];
  } catch {
    return undefined;
  }
}

/** Whether the device exists and is administratively up, as a health check reads it. */
export async function deviceUp(dev: string): Promise<{ ok: boolean; detail: string }> {
  try {
    const [link] = JSON.parse(await ip(['-j', 'link', 'show', 'dev', dev])) as Array<{ flags?: string[] }>;
    const up = link?.flags?.includes('UP') === true;
    return { ok: up, detail: up ? `${dev} is up` : `${dev} exists but is down` };
  } catch {
    return { ok: false, detail: `${dev} does not exist` };
  }
}

/** For exit paths, where the event loop may not run again. */
export function ipSync(args: readonly string[]): void {
  try {
    execFileSync('ip', args, { timeout: 5_000, stdio: 'ignore' });
  } catch {
    // Best effort on the way out: the device and its routes vanish with the process anyway.
  }
}

/** Runs many `ip` commands in one process (`ip -batch`), for route sets of many peers. */
export async function ipBatch(commands: readonly string[]): Promise<void> {
  if (commands.length === 0) return;
  const input = commands.join('\n') + '\n';
  await runTool('ip', ['-force', '-batch', '-'], { code: 'iproute2', label: 'ip -batch', timeoutMs: 30_000, input });
}

export type ExistingLink = 'none' | 'tun-in-use' | 'tun-persistent' | 'other';

/**
 * What already carries this interface name. A TUN device lives only as long as the process
 * holding its fd, unless it was made persistent (`ip tuntap add`): so an existing non-persistent
 * TUN belongs to a live process, and only a persistent one is a leftover we may remove.
 */
export async function existingLink(name: string): Promise<ExistingLink> {
  const out = await ip(['-d', 'link', 'show', 'dev', name]).catch(() => null);
  if (out === null) return 'none';
  if (!/\btun type tun\b/.test(out)) return 'other';
  return /\bpersist on\b/.test(out) ? 'tun-persistent' : 'tun-in-use';
}
