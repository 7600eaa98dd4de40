#!/usr/bin/env node
// Stub servers for the namespace test harness (scripts/harness/). Plain JS, no dependencies.
//
//   node scripts/stub-server.mjs kubelet --name node-1 --port 10250 --cert C --key K [--host ::]
//   node scripts/stub-server.mjs pod --name node-1/pod-1 --port 8080 [--host ::]
//
// kubelet mode is HTTPS, pod mode is plain HTTP. Both listen dual-stack on `::` by default and
// answer (bodies have no trailing newline):
//
//   GET  /healthz      ok                                   (kubelet mode only)
//   GET  /whoami       the client's address as the stub sees it (IPv4-mapped prefix stripped)
//   GET  /bytes/N      N bytes of deterministic pseudo-random data (see below), N <= 4 GiB
//   GET  /sha256/N     hex sha256 of what /bytes/N returns
//   POST /echo         the request body, streamed back
//   any other request  kubelet mode: `kubelet NAME PATH`; pod mode: `pod NAME`
//   Upgrade requests   answered with 101, then every byte is echoed back (like `kubectl exec`)
//
// Every response carries `x-stub-name` and `x-remote-address` headers.
//
// Deterministic bytes: AES-128-CTR keystream, key = first 16 bytes of
// sha256("nodelink stub bytes v1"), IV = 16 zero bytes. scripts/harness/payload.ts reproduces it
// (expectedBytes / expectedSha256); keep the two in sync.
//
// Logs one line to stderr when listening; exits 0 on SIGTERM or SIGINT.

import { createCipheriv, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';

const BYTES_KEY = createHash('sha256').update('nodelink stub bytes v1').digest().subarray(0, 16);
const BYTES_IV = Buffer.alloc(16);
const CHUNK = 64 * 1024;
const MAX_BYTES = 4 * 1024 * 1024 * 1024;
const ZERO = Buffer.alloc(CHUNK);

function usage(message) {
  process.stderr.write(
    `stub-server: ${message}\n` +
      'usage: stub-server.mjs kubelet --name NODE --port 10250 --cert FILE --key FILE [--host ::]\n' +
      '       stub-server.mjs pod --name NODE/POD --port 8080 [--host ::]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const [mode, ...rest] = argv;
  if (mode !== 'kubelet' && mode !== 'pod') usage(`unknown mode ${JSON.stringify(mode)}`);
  const flags = { host: '::' };
  for (let i = 0; i < rest.length; i += 2) {
    const flag = rest[i];
    const value = rest[i + 1];
    if (!flag.startsWith('--') || value === undefined) usage(`bad argument ${JSON.stringify(flag)}`);
    flags[flag.slice(2)] = value;
  }
  if (!flags.name) usage('--name is required');
  const port = Number(flags.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) usage('--port must be 1..65535');
  if (mode === 'kubelet' && (!flags.cert || !flags.key)) usage('kubelet mode needs --cert and --key');
  return { mode, name: flags.name, port, host: flags.host, cert: flags.cert, key: flags.key };
}

function remoteAddress(socket) {
  const addr = socket.remoteAddress ?? '';
  return addr.startsWith('::ffff:') ? addr.slice('::ffff:'.length) : addr;
}

function parseCount(text) {
  if (!/^\d{1,10}$/.test(text)) return undefined;
  const n = Number(text);
  return n <= MAX_BYTES ? n : undefined;
}

function sendBytes(res, n) {
  const cipher = createCipheriv('aes-128-ctr', BYTES_KEY, BYTES_IV);
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(n) });
  let left = n;
  const pump = () => {
    while (left > 0) {
      const len = Math.min(left, CHUNK);
      left -= len;
      if (!res.write(cipher.update(len === CHUNK ? ZERO : ZERO.subarray(0, len)))) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  res.on('close', () => {
    left = 0;
  });
  pump();
}

function sha256Of(n) {
  const cipher = createCipheriv('aes-128-ctr', BYTES_KEY, BYTES_IV);
  const hash = createHash('sha256');
  for (let left = n; left > 0; left -= CHUNK) {
    const len = Math.min(left, CHUNK);
    hash.update(cipher.update(len === CHUNK ? ZERO : ZERO.subarray(0, len)));
  }
  return hash.digest('hex');
}

function text(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function handler(opts) {
  return (req, res) => {
    res.setHeader('x-stub-name', opts.name);
    res.setHeader('x-remote-address', remoteAddress(req.socket));
    const path = req.url ?? '/';
    const pathname = path.split('?')[0];
    let m;
    if (req.method === 'POST' && pathname === '/echo') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      req.pipe(res);
      return;
    }
    req.resume();
    if (opts.mode === 'kubelet' && pathname === '/healthz') return text(res, 200, 'ok');
    if (pathname === '/whoami') return text(res, 200, remoteAddress(req.socket));
    if ((m = /^\/bytes\/(\d+)$/.exec(pathname))) {
      const n = parseCount(m[1]);
      return n === undefined ? text(res, 400, `bad byte count (max ${MAX_BYTES})`) : sendBytes(res, n);
    }
    if ((m = /^\/sha256\/(\d+)$/.exec(pathname))) {
      const n = parseCount(m[1]);
      return n === undefined ? text(res, 400, `bad byte count (max ${MAX_BYTES})`) : text(res, 200, sha256Of(n));
    }
    return text(res, 200, opts.mode === 'kubelet' ? `kubelet ${opts.name} ${path}` : `pod ${opts.name}`);
  };
}

function onUpgrade(req, socket, head) {
  socket.on('error', () => socket.destroy());
  socket.write(
    `HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${req.headers.upgrade ?? 'echo'}\r\n` + 'Connection: Upgrade\r\n\r\n',
  );
  if (head.length > 0) socket.write(head);
  socket.pipe(socket);
}

const opts = parseArgs(process.argv.slice(2));
const server =
  opts.mode === 'kubelet'
    ? https.createServer({ cert: readFileSync(opts.cert), key: readFileSync(opts.key) }, handler(opts))
    : http.createServer(handler(opts));
server.on('upgrade', onUpgrade);
server.on('clientError', (_err, socket) => socket.destroy());
server.on('error', (err) => {
  process.stderr.write(`stub-server: ${opts.mode} ${opts.name}: ${err.message}\n`);
  process.exit(1);
});
server.listen({ host: opts.host, port: opts.port, ipv6Only: false }, () => {
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  process.stderr.write(
    `stub-server: ${opts.mode} ${opts.name} listening on ${host}:${opts.port} (pid ${process.pid})\n`,
  );
});

function shutdown() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
