// The "apiserver" of the namespace harness: a process in the server's network namespace that
// dials kubelets and pods the way kube-apiserver does behind `kubectl logs/exec` (HTTPS to
// :10250) and `kubectl top` (HTTP to a pod IP), so tests exercise the sidecar shape: the
// apiserver's own dials follow the kernel routes nodelink installs in its namespace.
//
// It serves HTTP on a unix socket, which the test process reaches from the root namespace, while
// every dial and its timing happen here, inside this namespace:
//
//   GET /dial?host=198.19.0.11&port=10250&tls=1&path=/healthz&timeoutMs=2000
//   → {"ok":true,"status":200,"ms":3.1,"body":"ok"}
//   → {"ok":false,"status":0,"ms":0.2,"error":"EHOSTUNREACH"}
//
// Usage: node apiserver-standin.js --socket PATH      (prints "listening on PATH" when ready)

import { request as httpRequest, createServer, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const MAX_TIMEOUT_MS = 30_000;
const MAX_BODY = 64 * 1024;

export interface DialRequest {
  readonly host: string;
  readonly port: number;
  /** HTTPS (kubelet) instead of HTTP (pod); the certificate is not checked. */
  readonly tls?: boolean;
  readonly path?: string;
  readonly timeoutMs?: number;
}

export interface DialResult {
  readonly ok: boolean;
  /** HTTP status; 0 when no response came. */
  readonly status: number;
  /** From the start of the dial to the response's end or the error. */
  readonly ms: number;
  /** The socket error code (EHOSTUNREACH, ECONNREFUSED, …), 'timeout', or '' on success. */
  readonly error: string;
  readonly body: string;
}

/** One dial from this namespace, timed. */
export function dial(target: DialRequest): Promise<DialResult> {
  const timeoutMs = Math.min(target.timeoutMs ?? 3000, MAX_TIMEOUT_MS);
  const started = performance.now();
  const request = target.tls ? httpsRequest : httpRequest;
  return new Promise((resolve) => {
    let settled = false;
    const finish = (result: Omit<DialResult, 'ms'>): void => {
      if (settled) return;
      settled = true;
      resolve({ ...result, ms: Math.round((performance.now() - started) * 1000) / 1000 });
    };
    const req = request(
      {
        host: target.host,
        port: target.port,
        path: target.path ?? '/',
        method: 'GET',
        rejectUnauthorized: false,
        agent: false,
        timeout: timeoutMs,
      },
      (res) => {
        const status = res.statusCode ?? 0;
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          if (size < MAX_BODY) chunks.push(chunk);
          size += chunk.length;
        });
        res.on('end', () => {
          finish({ ok: status > 0 && status < 400, status, error: '', body: Buffer.concat(chunks).toString('utf8') });
        });
        res.on('error', (err: NodeJS.ErrnoException) =>
          finish({ ok: false, status, error: err.code ?? err.message, body: '' }),
        );
      },
    );
    req.on('timeout', () => {
      finish({ ok: false, status: 0, error: 'timeout', body: '' });
      req.destroy();
    });
    req.on('error', (err: NodeJS.ErrnoException) =>
      finish({ ok: false, status: 0, error: err.code ?? err.message, body: '' }),
    );
    req.end();
  });
}

/** The test side: asks the stand-in at `socketPath` to dial. */
export function dialVia(socketPath: string, target: DialRequest): Promise<DialResult> {
  const query = new URLSearchParams({
    host: target.host,
    port: String(target.port),
    tls: target.tls ? '1' : '0',
    path: target.path ?? '/',
    timeoutMs: String(target.timeoutMs ?? 3000),
  });
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath, path: `/dial?${query}`, method: 'GET', agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as DialResult);
        } catch (err) {
          reject(err as Error);
        }
      });
    });
    req.setTimeout(MAX_TIMEOUT_MS + 5000, () => req.destroy(new Error('the apiserver stand-in did not answer')));
    req.on('error', reject);
    req.end();
  });
}

function parseDial(req: IncomingMessage): DialRequest | undefined {
  const url = new URL(req.url ?? '/', 'http://standin');
  if (url.pathname !== '/dial') return undefined;
  const host = url.searchParams.get('host') ?? '';
  const port = Number(url.searchParams.get('port'));
  if (!host || !Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return {
    host,
    port,
    tls: url.searchParams.get('tls') === '1',
    path: url.searchParams.get('path') ?? '/',
    timeoutMs: Number(url.searchParams.get('timeoutMs') ?? 3000),
  };
}

function main(): void {
  const at = process.argv.indexOf('--socket');
  const socketPath = at >= 0 ? process.argv[at + 1] : undefined;
  if (!socketPath) {
    process.stderr.write('usage: apiserver-standin --socket PATH\n');
    process.exit(2);
  }
  const server = createServer((req, res) => {
    const target = parseDial(req);
    if (!target) {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('GET /dial?host=H&port=P[&tls=1&path=/x&timeoutMs=N]\n');
      return;
    }
    void dial(target).then((result) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(result));
    });
  });
  server.listen(socketPath, () => process.stdout.write(`listening on ${socketPath}\n`));
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => server.close(() => process.exit(0)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();
