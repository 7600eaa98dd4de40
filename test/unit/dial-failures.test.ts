// A node names why its dial failed from the error itself (its errno, OpenSSL code or the
// DialError it raised), never from the message text: each cause is provoked for real here.

import { expect } from 'chai';
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import { type KeyPair } from '../../src/auth/index.js';
import { createServerCertificate } from '../../src/link-server/index.js';
import { LinkClient } from '../../src/link-client/index.js';
import { DialError, dialFailureOf } from '../../src/link-client/dial-error.js';
import { FrameDecoder, FrameType, encodeFrame } from '../../src/protocol/index.js';
import type { HandshakeFailure } from '../../src/reasons.js';
import { Prefix } from '../../src/routing/index.js';
import { FakeTun } from '../support/fake-tun.js';
import { silentLogger } from '../../src/log.js';
import { CONNECTION, Rigs, newPair, registryOf } from '../support/link-rig.js';
import { waitFor } from '../support/wait.js';

interface Failure {
  readonly reason: HandshakeFailure;
  readonly detail: string | undefined;
}

describe('dial failures, named by cause', function () {
  this.timeout(15_000);
  const serverPair = newPair();
  const nodePair = newPair();
  const cleanup: Array<() => unknown> = [];

  afterEach(async function () {
    for (const step of cleanup.splice(0).reverse()) await step();
  });

  /** Dials once (and on, with backoff) and resolves with the first failure the client reports. */
  async function firstFailure(
    host: string,
    port: number,
    trust: { serverKey?: Uint8Array; ca?: string } = { serverKey: serverPair.publicKey },
    keyPair: KeyPair = nodePair,
  ): Promise<Failure> {
    const failures: Failure[] = [];
    const client = new LinkClient({
      host,
      port,
      ...trust,
      keyPair,
      name: 'node-a',
      routes: [Prefix.parse('198.19.0.11/32')],
      tun: new FakeTun('node-a-tun'),
      connection: CONNECTION,
      handshakeTimeoutMs: 400,
      backoffBaseMs: 1000,
      backoffCapMs: 1000,
      installRoutes: async () => undefined,
      onRejected: () => undefined,
      log: silentLogger(),
      observer: { handshakeFailed: (reason, _peer, detail) => failures.push({ reason, detail }) },
    });
    client.start();
    cleanup.push(() => client.stop());
    await waitFor('a handshake failure', () => failures.length > 0, 5000);
    return failures[0]!;
  }

  /** A TCP listener that does `onSocket` to every connection. */
  async function tcpServer(onSocket: (socket: Socket) => void): Promise<number> {
    const sockets = new Set<Socket>();
    const server: Server = createNetServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
      onSocket(socket);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanup.push(() => {
      for (const socket of sockets) socket.destroy();
      server.close();
    });
    return (server.address() as { port: number }).port;
  }

  async function linkServer(): Promise<number> {
    const rigs = new Rigs();
    cleanup.push(() => rigs.stopAll());
    const registry = registryOf([{ name: 'node-a', pair: nodePair, allowedIPs: ['198.19.0.11/32'] }]);
    const { port } = await rigs.server({ registry, keyPair: serverPair });
    return port;
  }

  it('connection_refused: nothing listens on the port', async function () {
    const listener = createNetServer();
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    const { port } = listener.address() as { port: number };
    await new Promise<void>((resolve) => listener.close(() => resolve()));
    expect((await firstFailure('127.0.0.1', port)).reason).to.equal('connection_refused');
  });

  it('dns: the server name does not resolve', async function () {
    expect((await firstFailure('nodelink-test.invalid', 9)).reason).to.equal('dns');
  });

  it('handshake_timeout: the port accepts and never answers (waited for as a server holding it in line would)', async function () {
    const port = await tcpServer(() => undefined);
    const started = Date.now();
    const failure = await firstFailure('127.0.0.1', port);
    expect(failure.reason).to.equal('handshake_timeout');
    expect(failure.detail).to.include('no welcome within 1200 ms');
    expect(Date.now() - started).to.be.within(1150, 2500);
  });

  it('handshake_timeout: the port answers and then goes silent, at the deadline itself', async function () {
    const port = await tcpServer((socket) => socket.write(Buffer.from([0x16, 0x03, 0x03, 0x00, 0x40])));
    const started = Date.now();
    const failure = await firstFailure('127.0.0.1', port);
    expect(failure.reason).to.equal('handshake_timeout');
    expect(failure.detail).to.include('no welcome within 400 ms');
    expect(Date.now() - started).to.be.below(1100);
  });

  it('tls_handshake_failed: the port answers, but not with TLS', async function () {
    const port = await tcpServer((socket) => socket.end('HTTP/1.0 400 Bad Request\r\n\r\n'));
    expect((await firstFailure('127.0.0.1', port)).reason).to.equal('tls_handshake_failed');
  });

  it('connection_reset: the port accepts and resets the connection', async function () {
    const port = await tcpServer((socket) => socket.resetAndDestroy());
    expect((await firstFailure('127.0.0.1', port)).reason).to.equal('connection_reset');
  });

  it('server_key_mismatch: the server holds another key than --server-key', async function () {
    const port = await linkServer();
    const failure = await firstFailure('127.0.0.1', port, { serverKey: newPair().publicKey });
    expect(failure.reason).to.equal('server_key_mismatch');
    expect(failure.detail).to.include('does not match --server-key');
  });

  it("untrusted_certificate: the server's certificate does not verify against --ca", async function () {
    const port = await linkServer();
    const otherCa = (await createServerCertificate(newPair())).certPem;
    const failure = await firstFailure('127.0.0.1', port, { ca: otherCa });
    expect(failure.reason).to.equal('untrusted_certificate');
    expect(failure.detail).to.include('does not verify against --ca');
  });

  it('auth_failed: the server rejects the key (the close code it sent names it)', async function () {
    const port = await linkServer();
    expect((await firstFailure('127.0.0.1', port, undefined, newPair())).reason).to.equal('auth_failed');
  });

  it('protocol_error: a Welcome that does not decode closes the dial', async function () {
    const certificate = await createServerCertificate(serverPair);
    const server: TlsServer = createTlsServer(
      { cert: certificate.certPem, key: certificate.keyPem, minVersion: 'TLSv1.3' },
      (socket) => {
        socket.on('error', () => undefined);
        const decoder = new FrameDecoder((type) => {
          if (type === FrameType.Hello) {
            socket.write(encodeFrame(FrameType.Welcome, Buffer.from('{"tunnelCidrs":["not a cidr"]}')));
          }
        });
        socket.on('data', (chunk: Buffer) => decoder.push(chunk));
      },
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanup.push(() => server.close());
    const failure = await firstFailure('127.0.0.1', (server.address() as { port: number }).port);
    expect(failure.reason).to.equal('protocol_error');
    expect(failure.detail).to.match(/^malformed welcome: welcome tunnelCidrs holds "not a cidr"/);
  });

  it('maps errors by their code, never by their text', function () {
    const errno = (code: string, message = 'x'): NodeJS.ErrnoException => Object.assign(new Error(message), { code });
    expect(dialFailureOf(new DialError('handshake_timeout', 'no welcome'))).to.equal('handshake_timeout');
    expect(dialFailureOf(errno('ECONNREFUSED'))).to.equal('connection_refused');
    expect(dialFailureOf(errno('EAI_AGAIN'))).to.equal('dns');
    expect(dialFailureOf(errno('ENETUNREACH'))).to.equal('unreachable');
    expect(dialFailureOf(errno('EPIPE'))).to.equal('connection_reset');
    expect(dialFailureOf(errno('ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION'))).to.equal('tls_handshake_failed');
    // A message that reads like another cause does not change the verdict.
    expect(dialFailureOf(new Error('server key does not match; TLS handshake timed out'))).to.equal('connection_error');
    expect(dialFailureOf(errno('EWEIRD', 'ECONNREFUSED'))).to.equal('connection_error');
    expect(dialFailureOf(undefined)).to.equal('connection_error');
  });
});
