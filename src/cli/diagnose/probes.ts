import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { userMessage } from '../../errors.js';
import type { Prefix } from '../../routing/index.js';
import { ip } from '../../tun/index.js';

/**
 * The small measurements both sides of `nodelink diagnose` take: a TCP connect, a ping, the
 * kernel's route for an address, a sysctl. Each returns what it saw; the checks decide what
 * that means and what to fix.
 */

export type Connect = { ok: true; ms: number } | { ok: false; code: string };

export function tcpConnect(host: string, port: number, timeoutMs: number): Promise<Connect> {
  return new Promise((resolve) => {
    const started = performance.now();
    const socket = netConnect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ ok: false, code: 'ETIMEDOUT' });
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ ok: true, ms: performance.now() - started });
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve({ ok: false, code: err.code ?? err.message });
    });
  });
}

export function describeConnectError(code: string, timeoutMs: number): string {
  switch (code) {
    case 'ECONNREFUSED':
      return 'connection refused';
    case 'ETIMEDOUT':
      return `no answer within ${timeoutMs} ms`;
    case 'EHOSTUNREACH':
      return 'host unreachable';
    case 'ENETUNREACH':
      return 'network unreachable (no route)';
    default:
      return code;
  }
}

export type Echo = { ok: boolean; detail: string; missing?: boolean };

/** One ICMP echo with the system's ping (optionally from SOURCE); `missing` when ping is not installed. */
export function ping(address: string, timeoutMs: number, source?: string): Promise<Echo> {
  const args = ['-n', '-c', '1', '-W', String(Math.max(1, Math.ceil(timeoutMs / 1000)))];
  if (address.includes(':')) args.unshift('-6');
  if (source) args.push('-I', source);
  args.push(address);
  return new Promise((resolve) => {
    execFile('ping', args, { timeout: timeoutMs + 2000 }, (err, stdout) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') {
        resolve({ ok: false, missing: true, detail: 'ping is not installed' });
        return;
      }
      const rtt = /time=([\d.]+) ms/.exec(stdout);
      resolve(
        err ? { ok: false, detail: 'no echo reply' } : { ok: true, detail: rtt ? `reply in ${rtt[1]} ms` : 'reply' },
      );
    });
  });
}

/** The device the kernel would send ADDRESS out of, or why it would not. */
export async function routeDevice(address: string): Promise<{ dev?: string; error?: string }> {
  try {
    const [route] = JSON.parse(await ip(['-j', 'route', 'get', address])) as Array<{ dev?: string }>;
    return { dev: route?.dev };
  } catch (err) {
    return { error: userMessage(err).replace(/^.*failed: /, '') };
  }
}

/** How a route that does not lead into DEV goes instead, for a MISSING route line. */
export function wrongWay(route: { dev?: string; error?: string }): string {
  return route.dev ? `via ${route.dev}` : `nowhere (${route.error ?? 'no route'})`;
}

export function readSysctl(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** An address inside the CIDR to ask the kernel about: its first host (or itself for /32, /128). */
export function sampleAddress(cidr: Prefix): string {
  return cidr.length >= cidr.bits - 1 ? cidr.address : cidr.firstHost();
}
