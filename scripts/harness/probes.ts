// Clients the tests reach through the topology with: curl and ping, run inside a namespace.
// Neither throws for a failed transfer: a test asserts on what came back.

import { createHash } from 'node:crypto';
import type { ExecOptions, RawResult } from './processes.js';

/** Runs argv inside the namespace the probe is aimed from. */
export type RunIn = (argv: string[], opts: ExecOptions) => Promise<RawResult>;

export interface CurlOptions {
  timeoutS?: number;
  /** Pass -k for https URLs (default true: the kubelet stub's certificate is self-signed). */
  insecure?: boolean;
  /** curl --interface */
  interface?: string;
  /** Extra curl arguments, e.g. ['-X', 'POST', '--data-binary', '@file']. */
  args?: string[];
}

export interface CurlResult {
  /** Transfer succeeded and the HTTP status was below 400. */
  ok: boolean;
  body: string;
  /** HTTP status, 0 when no response arrived. */
  status: number;
  /** curl's exit code (28 = timeout, 7 = could not connect). */
  exitCode: number;
  /** curl's error line, if any. */
  error: string;
  bytes: number;
  /** hex sha256 of the raw body, for integrity checks against expectedSha256(n). */
  sha256: string;
}

export interface PingOptions {
  count?: number;
  timeoutS?: number;
  size?: number;
  dontFragment?: boolean;
}

export async function curl(runIn: RunIn, url: string, opts: CurlOptions = {}): Promise<CurlResult> {
  const timeoutS = opts.timeoutS ?? 5;
  const args = ['curl', '-sS', '-g', '--max-time', String(timeoutS), '-w', '%{stderr}\nNLHTTPSTATUS=%{http_code}\n'];
  if (url.startsWith('https:') && opts.insecure !== false) args.push('-k');
  if (opts.interface) args.push('--interface', opts.interface);
  if (opts.args) args.push(...opts.args);
  args.push(url);
  const r = await runIn(args, { allowFail: true, timeoutMs: (timeoutS + 5) * 1000 });
  const m = /\nNLHTTPSTATUS=(\d+)\n?$/.exec(r.stderr);
  const status = m ? Number(m[1]) : 0;
  const error = (m ? r.stderr.slice(0, m.index) : r.stderr).trim();
  return {
    ok: r.code === 0 && status > 0 && status < 400,
    body: r.stdout,
    status,
    exitCode: r.code,
    error,
    bytes: r.stdoutBuffer.length,
    sha256: createHash('sha256').update(r.stdoutBuffer).digest('hex'),
  };
}

/** True if at least one echo reply came back within timeoutS. */
export async function ping(runIn: RunIn, address: string, opts: PingOptions = {}): Promise<boolean> {
  const count = opts.count ?? 1;
  const timeoutS = opts.timeoutS ?? 2;
  const args = ['ping', '-n', '-q', '-c', String(count), '-w', String(timeoutS)];
  if (address.includes(':')) args.push('-6');
  if (count > 1) args.push('-i', '0.2');
  if (opts.size !== undefined) args.push('-s', String(opts.size));
  if (opts.dontFragment) args.push('-M', 'do');
  args.push(address);
  const r = await runIn(args, { allowFail: true, timeoutMs: (timeoutS + 5) * 1000 });
  return r.code === 0;
}
