// The attacks of docs/security.md, tried against the real LinkServer and LinkClient over
// loopback TLS with in-memory TUNs. Each `describe` names the threat it covers.

import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import { encodeKey, keysEqual, privateKeyObject, readKeyFile } from '../../src/auth/index.js';
import {
  CloseCode,
  DEFAULT_MAX_HELLO_PAYLOAD,
  FrameType,
  HEADER_SIZE,
  encodeFrame,
  writeHeader,
} from '../../src/protocol/index.js';
import { createServerCertificate, loadServerCertificate } from '../../src/link-server/index.js';
import { Admission, MAX_TRACKED_SOURCES, sourceKey } from '../../src/link-server/admission.js';
import { readCaFile } from '../../src/link-client/trust.js';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  APISERVER,
  RawSession,
  Rigs,
  newPair,
  recordingLogger,
  registryOf,
  twoNodes,
  type ClientRig,
} from '../support/link-rig.js';
import { ipv4, malformedPackets } from '../support/packets.js';
import { waitFor } from '../support/wait.js';

const A_ROUTES = ['198.19.0.11/32', '198.19.1.0/24', 'fd00:19:1::/64'];
const B_ROUTES = ['198.19.0.12/32', '198.19.2.0/24'];
const C_ROUTES = ['198.19.0.13/32', '198.19.3.0/24'];

/** Opens a plain TCP connection and resolves once connected. */
function tcp(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(port, '127.0.0.1', () => resolve(socket));
    socket.on('error', reject);
  });
}

function closedWithin(socket: Socket, ms: number): Promise<boolean> {
  socket.resume(); // unread bytes would hold back 'end', and so 'close'
  if (socket.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

describe('security: the attacks of docs/security.md against server and client', function () {
  this.timeout(10_000);
  const rigs = new Rigs();
  const { serverPair, pairA, pairB, registry: registryAB } = twoNodes(A_ROUTES, B_ROUTES);
  const pairC = newPair();

  const NODES = {
    'node-a': { pair: pairA, routes: A_ROUTES },
    'node-b': { pair: pairB, routes: B_ROUTES },
    'node-c': { pair: pairC, routes: C_ROUTES },
  };
  /** node-a, node-b or node-c dialing `port`, pinning the server's key unless `extra` says otherwise. */
  function node(port: number, name: keyof typeof NODES, extra: Partial<Parameters<Rigs['client']>[0]> = {}): ClientRig {
    const { pair, routes } = NODES[name];
    return rigs.client({ port, name, keyPair: pair, routes, serverKey: serverPair.publicKey, ...extra });
  }

  afterEach(async function () {
    await rigs.stopAll();
  });

  describe('transport: TLS 1.3 only', function () {
    it('refuses a TLS 1.2 client before any frame, and counts it', async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const socket = tlsConnect({ host: '127.0.0.1', port: s.port, rejectUnauthorized: false, maxVersion: 'TLSv1.2' });
      rigs.adopt(socket);
      const err = await new Promise<NodeJS.ErrnoException>((resolve) => {
        socket.once('error', resolve);
        socket.once('secureConnect', () => resolve(new Error('TLS 1.2 was accepted')));
      });
      expect(err.code).to.match(/PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL/);
      await waitFor(
        'the refusal to be counted',
        () => (s.status().refusedConnections?.['tls_handshake_failed'] ?? 0) === 1,
      );
    });

    it('a client never talks TLS 1.2 to a server that offers only that', async function () {
      const certificate = await createServerCertificate(serverPair);
      const old = createTlsServer({ cert: certificate.certPem, key: certificate.keyPem, maxVersion: 'TLSv1.2' });
      let handshakes = 0;
      old.on('secureConnection', () => {
        handshakes++;
      });
      old.on('tlsClientError', () => undefined);
      await new Promise<void>((resolve) => old.listen(0, '127.0.0.1', resolve));
      try {
        const port = (old.address() as { port: number }).port;
        const c = node(port, 'node-a');
        await sleep(400);
        expect(handshakes).to.equal(0);
        expect(c.client.isAuthenticated).to.equal(false);
      } finally {
        await rigs.stopAll();
        await new Promise<void>((resolve) => old.close(() => resolve()));
      }
    });
  });

  describe('transport: CA mode (--ca, --cert, --cert-key)', function () {
    let dir = '';
    let caPem = '';
    let roguePem = '';
    let certForKey = ''; // CA-signed, for the server's own Ed25519 key (pin and CA both work)
    let rogueCertForKey = ''; // same key, signed by another CA
    let pkiCert = ''; // CA-signed ECDSA certificate with a key of its own (--cert-key)
    let pkiKey = '';

    before(function () {
      dir = mkdtempSync(path.join(tmpdir(), 'nodelink-ca-'));
      writeFileSync(path.join(dir, 'server.key'), `${encodeKey(serverPair.seed)}\n`, { mode: 0o600 });
      // The recipe of docs/security.md: a throwaway CA, the nodelink key as PEM, a CSR, a signature.
      const script = `
        set -e
        cd "$1"
        for ca in ca rogue; do
          openssl req -x509 -newkey ed25519 -nodes -keyout $ca.key -out $ca.pem -subj "/CN=nodelink test $ca" -days 2 2>/dev/null
        done
        (printf '\\x30\\x2e\\x02\\x01\\x00\\x30\\x05\\x06\\x03\\x2b\\x65\\x70\\x04\\x22\\x04\\x20'; base64 -d < server.key) \\
          | openssl pkey -inform DER -out server-key.pem
        printf 'subjectAltName=IP:127.0.0.1,DNS:nodelink.test\\n' > san.ext
        openssl req -new -key server-key.pem -subj /CN=nodelink-server -out server.csr
        for ca in ca rogue; do
          openssl x509 -req -in server.csr -CA $ca.pem -CAkey $ca.key -CAcreateserial -days 2 -extfile san.ext -out server-$ca.pem 2>/dev/null
        done
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout pki.key -subj /CN=pki -out pki.csr 2>/dev/null
        openssl x509 -req -in pki.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out pki.pem 2>/dev/null
        chmod 600 pki.key server-key.pem`;
      execFileSync('bash', ['-c', script, 'ca', dir], { stdio: 'pipe' });
      caPem = readCaFile(path.join(dir, 'ca.pem'));
      roguePem = readCaFile(path.join(dir, 'rogue.pem'));
      certForKey = path.join(dir, 'server-ca.pem');
      rogueCertForKey = path.join(dir, 'server-rogue.pem');
      pkiCert = path.join(dir, 'pki.pem');
      pkiKey = path.join(dir, 'pki.key');
    });

    after(function () {
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    async function caServer(cert: string, certKey?: string) {
      return rigs.server({
        registry: registryAB,
        keyPair: serverPair,
        certificate: loadServerCertificate(cert, certKey, serverPair),
      });
    }

    it('the docs recipe turns the nodelink key into the PEM key openssl certifies', function () {
      const pem = readFileSync(path.join(dir, 'server-key.pem'), 'utf8');
      expect(pem).to.equal(privateKeyObject(serverPair).export({ format: 'pem', type: 'pkcs8' }).toString());
    });

    it('a client with only --ca accepts a server whose chain and IP verify, and authenticates', async function () {
      const s = await caServer(certForKey);
      const c = node(s.port, 'node-a', { serverKey: undefined, ca: caPem });
      await waitFor('node-a to authenticate', () => c.client.isAuthenticated);
      expect(c.client.status().peers[0]!.publicKey).to.equal(encodeKey(serverPair.publicKey));
    });

    it('with --ca and --server-key both must hold', async function () {
      const s = await caServer(certForKey);
      const both = node(s.port, 'node-a', { ca: caPem });
      await waitFor('node-a to authenticate', () => both.client.isAuthenticated);
      const { log, lines } = recordingLogger();
      const wrongPin = node(s.port, 'node-b', { ca: caPem, serverKey: newPair().publicKey, log });
      await waitFor('the pin mismatch to be logged', () =>
        lines.some((l) => l.includes('does not match --server-key')),
      );
      expect(wrongPin.client.isAuthenticated).to.equal(false);
      expect(s.peer('node-b').connected).to.equal(false);
    });

    it('refuses a certificate from another CA, even for the right key; a pinning client still accepts it', async function () {
      const s = await caServer(rogueCertForKey);
      const { log, lines } = recordingLogger();
      const viaCa = node(s.port, 'node-a', { serverKey: undefined, ca: caPem, log });
      await waitFor('the refusal to be logged', () => lines.some((l) => l.includes('does not verify against --ca')));
      expect(viaCa.client.isAuthenticated).to.equal(false);
      expect(s.peer('node-a').connected, 'no hello was sent to an unverified server').to.equal(false);
      const pinned = node(s.port, 'node-b');
      await waitFor('node-b to authenticate by pin', () => pinned.client.isAuthenticated);
      // and a client trusting the rogue CA accepts it: the CA is what decides
      const viaRogue = node(s.port, 'node-a', { serverKey: undefined, ca: roguePem });
      await waitFor('node-a to authenticate via the rogue CA', () => viaRogue.client.isAuthenticated);
    });

    it('checks the name: --server-name must be in the certificate', async function () {
      const s = await caServer(certForKey);
      const good = node(s.port, 'node-a', { serverKey: undefined, ca: caPem, serverName: 'nodelink.test' });
      await waitFor('node-a to authenticate by name', () => good.client.isAuthenticated);
      const { log, lines } = recordingLogger();
      const bad = node(s.port, 'node-b', { serverKey: undefined, ca: caPem, serverName: 'other.test', log });
      await waitFor('the name mismatch to be logged', () =>
        lines.some((l) => l.includes('ERR_TLS_CERT_ALTNAME_INVALID')),
      );
      expect(bad.client.isAuthenticated).to.equal(false);
    });

    it('serves a PKI certificate with its own key (--cert-key): --ca clients accept it, pinning clients cannot', async function () {
      const s = await caServer(pkiCert, pkiKey);
      const viaCa = node(s.port, 'node-a', { serverKey: undefined, ca: caPem });
      await waitFor('node-a to authenticate', () => viaCa.client.isAuthenticated);
      expect(viaCa.client.status().peers[0]!.publicKey).to.match(/^sha256:/);
      const { log, lines } = recordingLogger();
      const pinned = node(s.port, 'node-b', { log });
      await waitFor('the refusal to be logged', () =>
        lines.some((l) => l.includes('(not Ed25519) does not match --server-key')),
      );
      expect(pinned.client.isAuthenticated).to.equal(false);
    });

    it('refuses at start a certificate for another key, an open --cert-key, an expired certificate or a missing file', function () {
      expect(() => loadServerCertificate(pkiCert, undefined, serverPair)).to.throw(
        /not issued for the server key \(--key\).*--cert-key/,
      );
      expect(() => loadServerCertificate(certForKey, pkiKey, serverPair)).to.throw(
        /not issued for the key in --cert-key/,
      );
      chmodSync(pkiKey, 0o644);
      try {
        expect(() => loadServerCertificate(pkiCert, pkiKey, serverPair)).to.throw(
          /readable by group or others.*chmod 600/,
        );
      } finally {
        chmodSync(pkiKey, 0o600);
      }
      expect(() => loadServerCertificate(certForKey, undefined, serverPair, Date.now() + 5 * 86400_000)).to.throw(
        /expired on .*renew it/,
      );
      expect(() => loadServerCertificate(path.join(dir, 'nope.pem'), undefined, serverPair)).to.throw(
        /--cert file .* does not exist/,
      );
      expect(() => loadServerCertificate(path.join(dir, 'san.ext'), undefined, serverPair)).to.throw(
        /holds no PEM certificate/,
      );
      expect(() => readCaFile(path.join(dir, 'san.ext'))).to.throw(/--ca file .* holds no PEM certificate/);
      expect(() => readCaFile(path.join(dir, 'nope.pem'))).to.throw(/--ca file .* does not exist/);
    });

    it('a renewed certificate (SIGHUP) is presented to new connections; sessions keep going', async function () {
      const s = await caServer(rogueCertForKey);
      const pinned = node(s.port, 'node-b');
      await waitFor('node-b to authenticate', () => pinned.client.isAuthenticated);
      const since = s.peer('node-b').connectedSince;
      s.server.setCertificate(loadServerCertificate(certForKey, undefined, serverPair));
      const viaCa = node(s.port, 'node-a', { serverKey: undefined, ca: caPem });
      await waitFor('node-a to authenticate against the new certificate', () => viaCa.client.isAuthenticated);
      expect(s.peer('node-b').connectedSince).to.equal(since);
      // still TLS 1.3 only after the swap
      const old = tlsConnect({ host: '127.0.0.1', port: s.port, rejectUnauthorized: false, maxVersion: 'TLSv1.2' });
      rigs.adopt(old);
      const refused = await new Promise<boolean>((resolve) => {
        old.once('error', () => resolve(true));
        old.once('secureConnect', () => resolve(false));
      });
      expect(refused).to.equal(true);
    });
  });

  describe('transport: session resumption (TLS 1.3 tickets)', function () {
    /** The JSON log lines of a recording logger with this message. */
    function logged(lines: string[], msg: string): Array<Record<string, unknown>> {
      return lines.map((line) => JSON.parse(line) as Record<string, unknown>).filter((entry) => entry.msg === msg);
    }

    it('a node resumes its TLS session when it reconnects, also to a server restarted with the same key', async function () {
      const { log, lines } = recordingLogger();
      const first = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const a = node(first.port, 'node-a', { log });
      await waitFor('node-a to authenticate', () => a.client.isAuthenticated);
      await sleep(50); // the tickets follow the handshake
      await first.server.stop();
      await waitFor('node-a to notice', () => !a.client.isAuthenticated);
      const second = await rigs.server({ registry: registryAB, keyPair: serverPair, port: first.port });
      await waitFor('node-a back', () => a.client.isAuthenticated && second.peer('node-a').connected, 5000);
      const connects = logged(lines, 'connected to server');
      expect(connects.map((entry) => entry.resumed)).to.deep.equal([false, true]);
    });

    it('every resumed connection has an exporter of its own: a hello from one is refused in another', async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const full = await rigs.raw(s.port);
      await waitFor('a ticket', () => full.tickets.length > 0);
      const one = await rigs.raw(s.port, { session: full.tickets[0] });
      const two = await rigs.raw(s.port, { session: full.tickets[0] });
      expect(one.socket.isSessionReused() && two.socket.isSessionReused(), 'both resumed').to.equal(true);
      // a fresh key exchange every time: a stolen ticket key opens no recorded traffic
      expect(one.socket.getEphemeralKeyInfo()).to.include({ name: 'X25519' });
      expect(one.exporter.equals(two.exporter)).to.equal(false);
      expect(one.exporter.equals(full.exporter)).to.equal(false);
      two.hello(pairA, { name: 'node-a', routes: A_ROUTES }, one.exporter);
      await two.closedPromise;
      const { code, reason } = two.codeOf(FrameType.Reject);
      expect(code).to.equal(CloseCode.AuthFailed);
      expect(reason).to.match(/replayed or forged/);
      one.hello(pairA, { name: 'node-a', routes: A_ROUTES });
      await waitFor('node-a over the resumed session', () => s.peer('node-a').connected);
    });

    it('a ticket does not open a server with another key: the node checks the certificate and refuses it', async function () {
      const { log, lines } = recordingLogger();
      const real = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const a = node(real.port, 'node-a', { log });
      await waitFor('node-a to authenticate', () => a.client.isAuthenticated);
      await sleep(50);
      await real.server.stop();
      const impostor = await rigs.server({ registry: registryAB, keyPair: newPair(), port: real.port });
      await waitFor('node-a to refuse the impostor', () =>
        lines.some((line) => line.includes('does not match --server-key')),
      );
      expect(a.client.isAuthenticated).to.equal(false);
      expect(impostor.peer('node-a').connected).to.equal(false);
    });
  });

  describe('handshake limits', function () {
    describe('Admission (pure)', function () {
      it('caps connections pending authentication, and frees a slot when one settles', function () {
        const admission = new Admission(
          { maxUnauthenticated: 2, maxNewPerSourcePerSecond: 100, maxQueued: 0 },
          () => 0,
        );
        expect(admission.admit('10.0.0.1:1', '10.0.0.1')).to.equal('admitted');
        expect(admission.admit('10.0.0.2:1', '10.0.0.2')).to.equal('admitted');
        expect(admission.admit('10.0.0.3:1', '10.0.0.3')).to.equal('unauthenticated_limit');
        admission.settle('10.0.0.1:1');
        admission.settle('10.0.0.1:1');
        expect(admission.unauthenticated).to.equal(1);
        expect(admission.admit('10.0.0.3:1', '10.0.0.3')).to.equal('admitted');
      });

      it('limits new connections per source per second; the next second starts afresh', function () {
        let now = 1000;
        const admission = new Admission(
          { maxUnauthenticated: 1000, maxNewPerSourcePerSecond: 3, maxQueued: 0 },
          () => now,
        );
        const results = Array.from({ length: 5 }, (_, i) => admission.admit(`198.18.0.1:${i}`, '198.18.0.1'));
        expect(results).to.deep.equal(['admitted', 'admitted', 'admitted', 'rate_limited', 'rate_limited']);
        expect(admission.admit('198.18.0.2:1', '198.18.0.2'), 'another source is not affected').to.equal('admitted');
        now += 999;
        expect(admission.admit('198.18.0.1:9', '198.18.0.1')).to.equal('rate_limited');
        now += 1;
        expect(admission.admit('198.18.0.1:10', '198.18.0.1')).to.equal('admitted');
      });

      it('counts an IPv6 source per /64 and an IPv4-mapped address as IPv4', function () {
        expect(sourceKey('fd00:19::1')).to.equal(sourceKey('fd00:19::ffff:1'));
        expect(sourceKey('fd00:19::1')).to.not.equal(sourceKey('fd00:19:0:1::1'));
        expect(sourceKey('::ffff:198.18.0.1')).to.equal('198.18.0.1');
        const admission = new Admission(
          { maxUnauthenticated: 1000, maxNewPerSourcePerSecond: 2, maxQueued: 0 },
          () => 0,
        );
        expect(admission.admit('[fd00::1]:1', 'fd00::1')).to.equal('admitted');
        expect(admission.admit('[fd00::2]:1', 'fd00::2')).to.equal('admitted');
        expect(admission.admit('[fd00::3]:1', 'fd00::3')).to.equal('rate_limited');
      });

      it('remembers a bounded number of sources per window', function () {
        const admission = new Admission({ maxUnauthenticated: 1, maxNewPerSourcePerSecond: 5, maxQueued: 0 }, () => 0);
        for (let i = 0; i < MAX_TRACKED_SOURCES; i++) admission.admit(`e${i}`, `s${i}`);
        expect(admission.admit('x:1', 'one-more-source')).to.equal('rate_limited');
      });

      it('holds connections beyond the slots in line, up to maxQueued, and hands freed slots on in order', function () {
        const admission = new Admission<string>(
          { maxUnauthenticated: 1, maxNewPerSourcePerSecond: 100, maxQueued: 2 },
          () => 0,
        );
        expect(admission.admit('a:1', '10.0.0.1', 'a')).to.equal('admitted');
        expect(admission.admit('b:1', '10.0.0.2', 'b')).to.equal('queued');
        expect(admission.admit('c:1', '10.0.0.3', 'c')).to.equal('queued');
        expect(admission.admit('d:1', '10.0.0.4', 'd'), 'the line is full').to.equal('unauthenticated_limit');
        expect(admission.queued).to.equal(2);
        expect(admission.settle('a:1')).to.deep.equal({ start: ['b'], expired: [] });
        expect(admission.unauthenticated).to.equal(1);
        expect(admission.settle('a:1'), 'settling twice frees nothing more').to.deep.equal({ start: [], expired: [] });
        expect(admission.admit('e:1', '10.0.0.5', 'e'), 'a newcomer queues behind c').to.equal('queued');
        expect(admission.settle('b:1').start).to.deep.equal(['c']);
        expect(admission.settle('c:1').start).to.deep.equal(['e']);
        expect(admission.drain()).to.deep.equal([]);
      });

      it('while the server sets up, holds every connection, slots free or not, and lets them in at open', function () {
        let now = 0;
        const admission = new Admission<string>(
          { maxUnauthenticated: 2, maxNewPerSourcePerSecond: 100, maxQueued: 3 },
          () => now,
          500,
        );
        admission.hold();
        expect(['a', 'b', 'c', 'd'].map((name, i) => admission.admit(`${name}:1`, `10.0.0.${i}`, name))).to.deep.equal([
          'queued',
          'queued',
          'queued',
          'unauthenticated_limit',
        ]);
        expect(admission.unauthenticated, 'no handshake starts while held').to.equal(0);
        expect(admission.settle('x:1'), 'a close frees nothing while held').to.deep.equal({ start: [], expired: [] });
        now = 200;
        expect(admission.open(), 'the slots go to the first in line').to.deep.equal({ start: ['a', 'b'], expired: [] });
        expect(admission.remaining('a:1', 1000), 'the deadline counts from open').to.equal(1000);
        expect(admission.settle('a:1').start).to.deep.equal(['c']);
        expect(admission.settle('b:1').start).to.deep.equal([]);
        expect(admission.admit('e:1', '10.0.0.9', 'e'), 'open: a free slot is taken at once').to.equal('admitted');
      });

      it('a held connection whose turn comes after maxQueueWaitMs is expired, not started; its deadline counts from its turn', function () {
        let now = 0;
        const admission = new Admission<string>(
          { maxUnauthenticated: 1, maxNewPerSourcePerSecond: 100, maxQueued: 10 },
          () => now,
          500,
        );
        admission.admit('a:1', '10.0.0.1', 'a');
        admission.admit('old:1', '10.0.0.2', 'old');
        now = 400;
        admission.admit('young:1', '10.0.0.3', 'young');
        now = 600;
        expect(admission.settle('a:1')).to.deep.equal({ start: ['young'], expired: ['old'] });
        expect(admission.remaining('young:1', 1000), 'accepted at 400, its turn at 600').to.equal(1000);
        now = 900;
        expect(admission.remaining('young:1', 1000)).to.equal(700);
        admission.admit('x:1', '10.0.0.4', 'x');
        expect(admission.drain(), 'stop: the rest of the line').to.deep.equal(['x']);
        expect(admission.queued).to.equal(0);
      });

      it('gives what is left of the deadline since accept', function () {
        let now = 0;
        const admission = new Admission(undefined, () => now);
        admission.admit('a:1', '10.0.0.1');
        now = 300;
        expect(admission.remaining('a:1', 1000)).to.equal(700);
        now = 5000;
        expect(admission.remaining('a:1', 1000)).to.equal(0);
        expect(admission.remaining('unknown:1', 1000)).to.equal(1000);
      });
    });

    it('closes connections beyond --max-unauthenticated at once; the held ones expire; nodes then get in', async function () {
      const s = await rigs.server({
        registry: registryAB,
        keyPair: serverPair,
        handshakeTimeoutMs: 700,
        limits: { maxUnauthenticated: 3, maxNewPerSourcePerSecond: 100, maxQueued: 0 },
      });
      const sockets = await Promise.all(Array.from({ length: 6 }, () => tcp(s.port)));
      for (const socket of sockets) socket.on('error', () => undefined);
      const quick = await Promise.all(sockets.map((socket) => closedWithin(socket, 300)));
      expect(quick.filter(Boolean)).to.have.length(3);
      expect(s.status().refusedConnections).to.include({ unauthenticated_limit: 3 });
      const late = await Promise.all(sockets.map((socket) => closedWithin(socket, 1500)));
      expect(late.every(Boolean), 'held half-open connections expire at the deadline').to.equal(true);
      expect(s.status().refusedConnections?.['handshake_timeout']).to.equal(3);
      expect(s.status().refusedConnections?.['tls_handshake_failed'], 'each refusal counted once').to.equal(undefined);
      const a = node(s.port, 'node-a');
      await waitFor('node-a to authenticate', () => a.client.isAuthenticated);
    });

    it('holds connections beyond --max-unauthenticated in line, unread; a node in line gets in once a slot frees; beyond the line, refused at once', async function () {
      const s = await rigs.server({
        registry: registryAB,
        keyPair: serverPair,
        handshakeTimeoutMs: 3000,
        limits: { maxUnauthenticated: 2, maxNewPerSourcePerSecond: 100, maxQueued: 1 },
      });
      const holders = await Promise.all([tcp(s.port), tcp(s.port)]); // silent: they keep both slots
      for (const socket of holders) socket.on('error', () => undefined);
      await sleep(100); // accepted: both slots taken
      const a = node(s.port, 'node-a');
      await waitFor('node-a in line', () => s.server.connectionCounts().queued === 1);
      const extra = await tcp(s.port);
      extra.on('error', () => undefined);
      expect(await closedWithin(extra, 300), 'beyond the line: refused at once').to.equal(true);
      expect(s.status().refusedConnections).to.deep.equal({ unauthenticated_limit: 1 });
      await sleep(300);
      expect(a.client.isAuthenticated, 'held: no handshake while both slots are busy').to.equal(false);
      const freed = Date.now();
      holders[0]!.destroy();
      await waitFor('node-a to authenticate', () => a.client.isAuthenticated, 1500);
      expect(Date.now() - freed, 'in as soon as a slot frees').to.be.below(1000);
      expect(s.server.connectionCounts().queued).to.equal(0);
      holders[1]!.destroy();
    });

    it('a node held in line past its own handshake deadline keeps waiting, and gets in when a slot frees', async function () {
      const s = await rigs.server({
        registry: registryAB,
        keyPair: serverPair,
        handshakeTimeoutMs: 3000,
        limits: { maxUnauthenticated: 1, maxNewPerSourcePerSecond: 100, maxQueued: 4 },
      });
      const holder = await tcp(s.port); // silent: it keeps the only slot
      holder.on('error', () => undefined);
      await sleep(100);
      const failures: string[] = [];
      const a = node(s.port, 'node-a', { observer: { handshakeFailed: (reason) => failures.push(reason) } });
      await waitFor('node-a in line', () => s.server.connectionCounts().queued === 1);
      await sleep(2500); // past the node's handshake deadline (2000 ms), within the server's line wait
      expect(a.client.isAuthenticated).to.equal(false);
      holder.destroy();
      await waitFor('node-a to authenticate', () => a.client.isAuthenticated, 1500);
      expect(failures, 'the held dial was not given up').to.deep.equal([]);
    });

    it('refuses new connections from one source beyond --max-new-conns-per-source per second', async function () {
      const s = await rigs.server({
        registry: registryAB,
        keyPair: serverPair,
        limits: { maxUnauthenticated: 100, maxNewPerSourcePerSecond: 4, maxQueued: 0 },
      });
      const sockets = await Promise.all(Array.from({ length: 10 }, () => tcp(s.port)));
      for (const socket of sockets) socket.on('error', () => undefined);
      const closed = await Promise.all(sockets.map((socket) => closedWithin(socket, 300)));
      expect(closed.filter(Boolean)).to.have.length(6);
      expect(s.status().refusedConnections).to.include({ rate_limited: 6 });
      for (const socket of sockets) socket.destroy();
    });

    it('one deadline covers TLS and hello together, counted from the TCP accept', async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair, handshakeTimeoutMs: 800 });
      const started = Date.now();
      const socket = await tcp(s.port);
      await sleep(400); // a slow TLS handshake: ClientHello only after 400 ms
      const session = await RawSession.over(tlsConnect({ socket, rejectUnauthorized: false }));
      rigs.adopt(session.socket);
      await session.closedPromise;
      const elapsed = Date.now() - started;
      expect(elapsed, 'closed at the deadline, not 400 ms after it').to.be.within(700, 1100);
      expect(session.codeOf(FrameType.Close).code).to.equal(CloseCode.Timeout);
    });

    it('a half-open TLS handshake (a few bytes of ClientHello, then silence) is cut at the deadline', async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair, handshakeTimeoutMs: 500 });
      const socket = await tcp(s.port);
      socket.on('error', () => undefined);
      socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]));
      expect(await closedWithin(socket, 1500)).to.equal(true);
      await waitFor('the timeout to be counted', () => s.status().refusedConnections?.['handshake_timeout'] === 1);
    });

    it('caps the first frame at DEFAULT_MAX_HELLO_PAYLOAD: that much is read (and rejected as a bad hello), one more byte closes at the header', async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const exact = await rigs.raw(s.port);
      exact.socket.write(encodeFrame(FrameType.Hello, Buffer.alloc(DEFAULT_MAX_HELLO_PAYLOAD, 1)));
      await exact.closedPromise;
      expect(exact.codeOf(FrameType.Reject).code).to.equal(CloseCode.AuthFailed);
      const over = await rigs.raw(s.port);
      const header = Buffer.alloc(HEADER_SIZE);
      writeHeader(header, 0, FrameType.Hello, DEFAULT_MAX_HELLO_PAYLOAD + 1);
      over.socket.write(header); // no body: refused on the header alone
      await over.closedPromise;
      const { code, reason } = over.codeOf(FrameType.Close);
      expect(code).to.equal(CloseCode.ProtocolError);
      expect(reason)
        .to.include(String(DEFAULT_MAX_HELLO_PAYLOAD + 1))
        .and.include(String(DEFAULT_MAX_HELLO_PAYLOAD));
    });

    it('forwards nothing before authentication, not even from an authorized source; a frame of another type closes', async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const session = await rigs.raw(s.port);
      for (let i = 0; i < 50; i++) session.socket.write(encodeFrame(FrameType.Data, ipv4('198.19.1.5', APISERVER)));
      await sleep(150);
      expect(s.tun.written).to.deep.equal([]);
      const other = await rigs.raw(s.port);
      other.socket.write(encodeFrame(FrameType.Welcome, Buffer.from('{}')));
      await other.closedPromise;
      expect(other.codeOf(FrameType.Close).code).to.equal(CloseCode.ProtocolError);
      expect(s.tun.written).to.deep.equal([]);
    });

    it('rejects a hello captured in one TLS session and replayed in another', async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const first = await rigs.raw(s.port);
      const second = await rigs.raw(s.port);
      second.hello(pairA, { name: 'node-a', routes: A_ROUTES }, first.exporter);
      await second.closedPromise;
      const { code, reason } = second.codeOf(FrameType.Reject);
      expect(code).to.equal(CloseCode.AuthFailed);
      expect(reason).to.match(/replayed or forged/);
      expect(s.peer('node-a').connected).to.equal(false);
    });
  });

  describe('sessions: a second connection with the same key', function () {
    it('replaces the first with a close reason; no packet meets a missing route; kernel routes untouched', async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const a = node(s.port, 'node-a');
      await waitFor('node-a to authenticate', () => a.client.isAuthenticated);
      let injected = 0;
      let pumping = true;
      const pump = (async () => {
        while (pumping && injected < 5000) {
          s.tun.inject(ipv4(APISERVER, '198.19.1.7'));
          injected++;
          await new Promise((resolve) => setImmediate(resolve));
        }
      })();
      await sleep(30);
      const second = await rigs.raw(s.port);
      second.hello(pairA, { name: 'node-a', routes: A_ROUTES });
      // the LinkClient is replaced, redials after its backoff and replaces the hand-made one
      await second.closedPromise;
      await waitFor('node-a back', () => a.client.isAuthenticated && s.peer('node-a').connected);
      await sleep(30);
      pumping = false;
      await pump;
      const { code, reason } = second.codeOf(FrameType.Close);
      expect(code).to.equal(CloseCode.Replaced);
      expect(reason).to.match(/replaced by a new connection from 127\.0\.0\.1:\d+/);
      expect(
        second.frames.filter((f) => f.type === FrameType.Data).length,
        'the second session carried traffic',
      ).to.be.greaterThan(0);
      const drops = s.peer('node-a').dropsByReason;
      expect(drops['peer_offline'] ?? 0, `of ${injected} packets`).to.equal(0);
      expect(drops['no_route'] ?? 0).to.equal(0);
      expect(s.status().dropsByReason['no_route'] ?? 0).to.equal(0);
      expect(s.installed, 'kernel routes installed once, at start').to.have.length(1);
      expect(s.removed).to.deep.equal([]);
    });
  });

  describe('live changes: peers-file reload (SIGHUP)', function () {
    it('connects new peers, cuts off removed ones and their routes, leaves the others alone', async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const a = node(s.port, 'node-a');
      const b = node(s.port, 'node-b');
      await waitFor('a and b', () => a.client.isAuthenticated && b.client.isAuthenticated);
      const before = s.peer('node-a');
      const c0 = node(s.port, 'node-c');
      await waitFor('node-c to be rejected', () => c0.rejected.length === 1);
      expect(c0.rejected[0]).to.match(/not in the server's peers file/);

      const summary = await s.server.reload(
        registryOf([
          { name: 'node-a', pair: pairA, allowedIPs: A_ROUTES },
          { name: 'node-c', pair: pairC, allowedIPs: C_ROUTES },
        ]),
      );
      expect(summary).to.deep.include({
        added: ['node-c'],
        removed: ['node-b'],
        changed: [],
        disconnected: ['node-b'],
      });
      expect(s.installed.at(-1)).to.include.members(C_ROUTES);
      expect(s.removed).to.deep.equal([B_ROUTES]);

      await waitFor('node-b to be told', () => b.rejected.length === 1);
      expect(b.rejected[0]).to.match(/node-b.*removed from the server's peers file/);
      expect(
        s
          .status()
          .peers.map((p) => p.name)
          .sort(),
      ).to.deep.equal(['node-a', 'node-c']);
      // node-a's session is the same one
      const after = s.peer('node-a');
      expect(after).to.include({ connected: true, connectedSince: before.connectedSince, endpoint: before.endpoint });

      const c = node(s.port, 'node-c');
      await waitFor('node-c to authenticate', () => c.client.isAuthenticated);
      s.tun.written.length = 0;
      const toC = ipv4(APISERVER, '198.19.3.9');
      s.tun.inject(toC);
      expect(await c.tun.waitForWritten(1)).to.deep.equal([toC]);
      s.tun.inject(ipv4(APISERVER, '198.19.2.9')); // node-b's old pod CIDR: nobody's now
      await waitFor('no_route', () => (s.status().dropsByReason['no_route'] ?? 0) === 1);
      const toA = ipv4(APISERVER, '198.19.1.9');
      s.tun.inject(toA);
      expect(await a.tun.waitForWritten(1)).to.deep.equal([toA]);
    });

    it('disconnects a peer whose new allowedIPs no longer hold its routes; keeps one whose allowedIPs grew', async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const a = node(s.port, 'node-a');
      const b = node(s.port, 'node-b');
      await waitFor('a and b', () => a.client.isAuthenticated && b.client.isAuthenticated);
      const sinceB = s.peer('node-b').connectedSince;
      const summary = await s.server.reload(
        registryOf([
          { name: 'node-a', pair: pairA, allowedIPs: ['198.19.0.11/32'] },
          { name: 'node-b', pair: pairB, allowedIPs: [...B_ROUTES, '198.19.20.0/24'] },
        ]),
      );
      expect(summary.changed.sort()).to.deep.equal(['node-a', 'node-b']);
      expect(summary.disconnected).to.deep.equal(['node-a']);
      expect(s.removed).to.deep.equal([['198.19.1.0/24', 'fd00:19:1::/64']]);
      await waitFor('node-a to be told', () => a.rejected.length === 1);
      expect(a.rejected[0]).to.match(/no longer allows .*fix --route/);
      expect(s.peer('node-b')).to.include({ connected: true, connectedSince: sinceB });
      expect(s.peer('node-b').allowedIPs).to.include('198.19.20.0/24');
    });
  });

  describe('anti-spoofing and malformed packets', function () {
    it('drops malformed packets from the server TUN, from a node, from the node TUN and from the server, each counted', async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const a = node(s.port, 'node-a');
      await waitFor('node-a to authenticate', () => a.client.isAuthenticated);
      const bad = malformedPackets('198.19.1.5', APISERVER);

      for (const [, packet] of bad) s.tun.inject(packet); // server TUN
      await waitFor('server TUN malformed', () => s.status().dropsByReason['malformed'] === bad.length);

      for (const [, packet] of bad) a.tun.inject(packet); // node TUN
      await waitFor('node TUN malformed', () => a.client.status().peers[0]!.dropsByReason['malformed'] === bad.length);

      // a compromised node-a sends them itself (its client stopped, so it does not take the key back)
      await a.client.stop();
      await waitFor('node-a gone', () => !s.peer('node-a').connected);
      const evil = await rigs.welcomed(s.port, pairA, { name: 'node-a', routes: A_ROUTES });
      for (const [, packet] of bad) evil.socket.write(encodeFrame(FrameType.Data, packet));
      await waitFor('node malformed', () => s.peer('node-a').dropsByReason['malformed'] === bad.length);
      expect(s.tun.written).to.deep.equal([]);
      expect(a.tun.written).to.deep.equal([]);
    });

    it('a client drops malformed packets from a hostile server and writes only sound ones to its TUN', async function () {
      const certificate = await createServerCertificate(serverPair);
      const hostile = createTlsServer({ cert: certificate.certPem, key: certificate.keyPem, minVersion: 'TLSv1.3' });
      const good = ipv4(APISERVER, '198.19.1.5');
      hostile.on('secureConnection', (socket) => {
        socket.on('error', () => undefined);
        socket.once('data', () => {
          socket.write(
            encodeFrame(FrameType.Welcome, Buffer.from(JSON.stringify({ tunnelCidrs: [], serverAddresses: [] }))),
          );
          for (const [, packet] of malformedPackets(APISERVER, '198.19.1.5'))
            socket.write(encodeFrame(FrameType.Data, packet));
          socket.write(encodeFrame(FrameType.Data, good));
        });
      });
      await new Promise<void>((resolve) => hostile.listen(0, '127.0.0.1', resolve));
      try {
        const port = (hostile.address() as { port: number }).port;
        const a = node(port, 'node-a');
        expect(await a.tun.waitForWritten(1)).to.deep.equal([good]);
        expect(a.client.status().peers[0]!.dropsByReason['malformed']).to.equal(
          malformedPackets(APISERVER, '198.19.1.5').length,
        );
      } finally {
        await rigs.stopAll();
        hostile.close();
      }
    });

    it("a node sending from another node's pod IP is dropped as spoofed_source; the server never sends a node what is not its", async function () {
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair });
      const a = node(s.port, 'node-a');
      const b = node(s.port, 'node-b');
      await waitFor('a and b', () => a.client.isAuthenticated && b.client.isAuthenticated);
      // node-a's own client refuses to send it (unannounced_source) ...
      a.tun.inject(ipv4('198.19.2.7', APISERVER));
      await waitFor('unannounced_source', () => a.client.status().peers[0]!.dropsByReason['unannounced_source'] === 1);
      // ... and a compromised node-a that sends it anyway is stopped by the server
      await a.client.stop();
      await waitFor('node-a gone', () => !s.peer('node-a').connected);
      const evil = await rigs.welcomed(s.port, pairA, { name: 'node-a', routes: A_ROUTES });
      const spoofed = [
        ipv4('198.19.2.7', APISERVER),
        ipv4('198.19.0.12', APISERVER),
        ipv4('10.1.2.3', APISERVER),
        ipv4('198.18.255.1', APISERVER),
      ];
      for (const packet of spoofed) evil.socket.write(encodeFrame(FrameType.Data, packet));
      const own = ipv4('198.19.1.7', APISERVER);
      evil.socket.write(encodeFrame(FrameType.Data, own));
      expect(await s.tun.waitForWritten(1)).to.deep.equal([own]);
      await waitFor('spoofed_source', () => s.peer('node-a').dropsByReason['spoofed_source'] === spoofed.length);
      await sleep(50);
      expect(s.tun.written).to.deep.equal([own]);
      // packets for node-b's addresses go to node-b only
      s.tun.inject(ipv4(APISERVER, '198.19.2.7'));
      await b.tun.waitForWritten(1);
      expect(evil.frames.filter((f) => f.type === FrameType.Data)).to.deep.equal([]);
    });
  });

  describe('secrets', function () {
    it('no private key in logs, errors or status, through connects, rejects and failures', async function () {
      const { log, lines } = recordingLogger();
      const s = await rigs.server({ registry: registryAB, keyPair: serverPair, log });
      const a = node(s.port, 'node-a', { log });
      const stranger = newPair();
      const x = rigs.client({
        port: s.port,
        name: 'node-x',
        keyPair: stranger,
        routes: A_ROUTES,
        serverKey: serverPair.publicKey,
        log,
      });
      const wrongPin = node(s.port, 'node-b', { serverKey: newPair().publicKey, log });
      await waitFor('a in, x rejected', () => a.client.isAuthenticated && x.rejected.length === 1);
      await waitFor('the pin mismatch logged', () => lines.some((l) => l.includes('does not match --server-key')));
      a.tun.inject(ipv4('198.19.2.1', APISERVER));
      const dir = mkdtempSync(path.join(tmpdir(), 'nodelink-secret-'));
      const errors: string[] = [];
      try {
        const open = path.join(dir, 'open.key');
        writeFileSync(open, `${encodeKey(pairA.seed)}\n`, { mode: 0o644 });
        chmodSync(open, 0o644);
        const garbled = path.join(dir, 'garbled.key');
        writeFileSync(garbled, `${encodeKey(pairB.seed)}xyz\n`, { mode: 0o600 });
        for (const file of [open, garbled]) {
          try {
            readKeyFile(file);
          } catch (err) {
            errors.push((err as Error).message);
          }
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      expect(errors).to.have.length(2);
      const texts = [
        ...lines,
        ...x.rejected,
        ...errors,
        JSON.stringify(s.server.status()),
        JSON.stringify(a.client.status()),
        JSON.stringify(wrongPin.client.status()),
      ].join('\n');
      expect(lines.length).to.be.greaterThan(5);
      for (const pair of [serverPair, pairA, pairB, stranger]) {
        for (const form of [
          encodeKey(pair.seed),
          Buffer.from(pair.seed).toString('hex'),
          encodeKey(pair.secretKey),
          Buffer.from(pair.seed).toString('base64url'),
        ]) {
          expect(texts.includes(form), `a private key (${form.slice(0, 6)}…) leaked`).to.equal(false);
        }
      }
      expect(texts).to.not.match(/BEGIN PRIVATE KEY/);
    });

    it('keysEqual compares with timingSafeEqual semantics: equal, one bit off, other length', function () {
      const key = newPair().publicKey;
      const flipped = new Uint8Array(key);
      flipped[31] = flipped[31]! ^ 1;
      expect(keysEqual(key, new Uint8Array(key))).to.equal(true);
      expect(keysEqual(key, flipped)).to.equal(false);
      expect(keysEqual(key, key.subarray(0, 31))).to.equal(false);
    });
  });
});
