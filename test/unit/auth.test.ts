import { expect } from 'chai';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  AuthError,
  EXPORTER_BYTES,
  PeerRegistry,
  decodeKey,
  encodeHello,
  encodeKey,
  generateSeed,
  keyPairFromSeed,
  parsePeers,
  readKeyFile,
  verifyHello,
  type Hello,
  type KeyPair,
} from '../../src/auth/index.js';
import { Prefix } from '../../src/routing/index.js';
import nacl from 'tweetnacl';

/** Runs `fn`, expects an AuthError with `code`, and returns its message for further checks. */
function authError(fn: () => unknown, code: string): string {
  try {
    fn();
  } catch (err) {
    expect(err, `expected an AuthError, got ${String(err)}`).to.be.instanceOf(AuthError);
    expect((err as AuthError).code, (err as Error).message).to.equal(code);
    return (err as AuthError).message;
  }
  return expect.fail(`expected AuthError '${code}', nothing was thrown`);
}

function newPair(): KeyPair {
  return keyPairFromSeed(generateSeed());
}

describe('auth', function () {
  describe('keys', function () {
    it('derives the same public key from a seed every time, and from its base64 text', function () {
      const seed = generateSeed();
      expect(seed).to.have.length(32);
      const pair = keyPairFromSeed(seed);
      expect(pair.publicKey).to.have.length(32);
      expect(pair.secretKey).to.have.length(64);
      // What `keygen` prints, read back as `pubkey` does (with the trailing newline of a file).
      const printed = encodeKey(seed);
      expect(printed).to.match(/^[A-Za-z0-9+/]{43}=$/);
      const again = keyPairFromSeed(decodeKey(`${printed}\n`, 'stdin'));
      expect(Buffer.from(again.publicKey).equals(Buffer.from(pair.publicKey))).to.equal(true);
      expect(Buffer.from(decodeKey(encodeKey(pair.publicKey), 'pub'))).to.deep.equal(Buffer.from(pair.publicKey));
    });

    it('gives different keys for different seeds', function () {
      expect(encodeKey(newPair().publicKey)).to.not.equal(encodeKey(newPair().publicKey));
    });

    it("rejects malformed keys with 'bad_key', naming what was read", function () {
      const cases = [
        '',
        '   ',
        'not a key',
        'not base64 at all!!',
        Buffer.alloc(31, 7).toString('base64'), // too short
        Buffer.alloc(33, 7).toString('base64'), // too long
        Buffer.alloc(64, 7).toString('base64'), // a tweetnacl secret key, not a seed
        Buffer.alloc(32, 0xfb).toString('base64url'), // the URL alphabet
        `${encodeKey(randomBytes(32)).slice(0, 20)} ${encodeKey(randomBytes(32)).slice(20)}`, // a space inside
      ];
      for (const text of cases) {
        const message = authError(() => decodeKey(text, '--server-key'), 'bad_key');
        expect(message, JSON.stringify(text)).to.include('--server-key');
        expect(message).to.include('nodelink keygen');
      }
    });
  });

  describe('readKeyFile', function () {
    let dir = '';

    beforeEach(function () {
      dir = mkdtempSync(join(tmpdir(), 'nodelink-auth-'));
    });

    afterEach(function () {
      rmSync(dir, { recursive: true, force: true });
    });

    function keyFile(name: string, text: string, mode: number): string {
      const path = join(dir, name);
      writeFileSync(path, text);
      chmodSync(path, mode); // explicit: the umask must not decide the test
      return path;
    }

    it('rejects a missing file, saying how to create it', function () {
      const path = join(dir, 'absent.key');
      const message = authError(() => readKeyFile(path), 'key_file');
      expect(message).to.include(path);
      expect(message).to.include('does not exist');
      expect(message).to.include('nodelink keygen');
    });

    it('rejects a file readable by group or others, saying "chmod 600"', function () {
      const seed = generateSeed();
      for (const mode of [0o644, 0o640, 0o604]) {
        const path = keyFile(`key-${mode.toString(8)}`, `${encodeKey(seed)}\n`, mode);
        const message = authError(() => readKeyFile(path), 'key_file');
        expect(message).to.include('chmod 600');
        expect(message).to.include(path);
        expect(message).to.include(mode.toString(8));
      }
    });

    it('accepts a 0600 (or 0400) file and yields the key pair of its seed', function () {
      const seed = generateSeed();
      const expected = keyPairFromSeed(seed);
      for (const mode of [0o600, 0o400]) {
        const path = keyFile(`key-${mode.toString(8)}`, `${encodeKey(seed)}\n`, mode);
        const pair = readKeyFile(path);
        expect(encodeKey(pair.publicKey)).to.equal(encodeKey(expected.publicKey));
        expect(encodeKey(pair.seed)).to.equal(encodeKey(seed));
      }
    });

    it("rejects a 0600 file that does not hold a key with 'bad_key'", function () {
      const path = keyFile('garbage.key', 'hello world\n', 0o600);
      expect(authError(() => readKeyFile(path), 'bad_key')).to.include(path);
    });
  });

  describe('hello', function () {
    const body = { name: 'node-a', routes: ['198.19.0.11/32', '198.19.1.0/24', 'fd00:19:1::/64'] };

    it('round-trips name, routes and public key under the same exporter', function () {
      const pair = newPair();
      const exporter = randomBytes(EXPORTER_BYTES);
      const hello = verifyHello(encodeHello(pair, exporter, body), exporter);
      expect(hello.name).to.equal('node-a');
      expect(hello.routes).to.deep.equal(body.routes);
      expect(Buffer.from(hello.publicKey).equals(Buffer.from(pair.publicKey))).to.equal(true);
    });

    it('signs the same Ed25519 bytes as tweetnacl, in both directions', function () {
      const pair = newPair();
      const exporter = randomBytes(EXPORTER_BYTES);
      const payload = encodeHello(pair, exporter, body);
      const signature = payload.subarray(32, 96);
      const message = Buffer.concat([Buffer.from('nodelink hello v1\0'), exporter, payload.subarray(96)]);
      expect(nacl.sign.detached.verify(message, signature, pair.publicKey)).to.equal(true);
      const naclSigned = Buffer.concat([
        pair.publicKey,
        nacl.sign.detached(message, pair.secretKey),
        payload.subarray(96),
      ]);
      expect(verifyHello(naclSigned, exporter).name).to.equal('node-a');
    });

    it("refuses a hello replayed into another TLS session (different exporter) with 'bad_signature'", function () {
      const pair = newPair();
      const payload = encodeHello(pair, randomBytes(EXPORTER_BYTES), body);
      const message = authError(() => verifyHello(payload, randomBytes(EXPORTER_BYTES)), 'bad_signature');
      expect(message).to.match(/replayed|forged/);
      // One differing bit of the exporter is enough.
      const exporter = randomBytes(EXPORTER_BYTES);
      const other = Buffer.from(exporter);
      other[31] ^= 1;
      authError(() => verifyHello(encodeHello(pair, exporter, body), other), 'bad_signature');
    });

    it("refuses a tampered body, key or signature with 'bad_signature'", function () {
      const pair = newPair();
      const exporter = randomBytes(EXPORTER_BYTES);
      const good = encodeHello(pair, exporter, body);

      // Announce a route of someone else's by editing the signed JSON.
      const text = good.subarray(96).toString('utf8').replace('198.19.1.0/24', '198.19.2.0/24');
      const tamperedBody = Buffer.concat([good.subarray(0, 96), Buffer.from(text)]);
      authError(() => verifyHello(tamperedBody, exporter), 'bad_signature');

      // Claim another (authorized) key while keeping the signature of ours.
      const swappedKey = Buffer.from(good);
      swappedKey.set(newPair().publicKey, 0);
      authError(() => verifyHello(swappedKey, exporter), 'bad_signature');

      const flippedSignature = Buffer.from(good);
      flippedSignature[40] ^= 0x80;
      authError(() => verifyHello(flippedSignature, exporter), 'bad_signature');

      const flippedLastByte = Buffer.from(good);
      flippedLastByte[flippedLastByte.length - 1] ^= 0x01;
      authError(() => verifyHello(flippedLastByte, exporter), 'bad_signature');
    });

    it("refuses a truncated hello with 'bad_hello'", function () {
      const exporter = randomBytes(EXPORTER_BYTES);
      const good = encodeHello(newPair(), exporter, body);
      for (const length of [0, 1, 31, 32, 95, 96]) {
        authError(() => verifyHello(good.subarray(0, length), exporter), 'bad_hello');
      }
      // Cut inside the body: the signature no longer covers what is left.
      authError(() => verifyHello(good.subarray(0, good.length - 3), exporter), 'bad_signature');
    });

    it("refuses a correctly signed body without a name or with too many routes ('bad_hello')", function () {
      const pair = newPair();
      const exporter = randomBytes(EXPORTER_BYTES);
      authError(() => verifyHello(encodeHello(pair, exporter, { name: '', routes: [] }), exporter), 'bad_hello');
      const many = Array.from({ length: 257 }, (_, i) => `198.19.${i >> 8}.${i & 0xff}/32`);
      authError(
        () => verifyHello(encodeHello(pair, exporter, { name: 'node-a', routes: many }), exporter),
        'bad_hello',
      );
      // An empty announcement is well-formed (authorization decides what it is worth).
      expect(verifyHello(encodeHello(pair, exporter, { name: 'node-a', routes: [] }), exporter).routes).to.deep.equal(
        [],
      );
    });

    it('carries the replicas a node holds, and leaves the body as before when it holds none', function () {
      const pair = newPair();
      const exporter = randomBytes(EXPORTER_BYTES);
      const held = ['cp-0-a1b2c3', 'cp-1-d4e5f6'];
      expect(verifyHello(encodeHello(pair, exporter, { ...body, held }), exporter).held).to.deep.equal(held);
      const none = encodeHello(pair, exporter, { ...body, held: [] });
      expect(JSON.parse(none.subarray(96).toString('utf8'))).to.deep.equal(body);
      expect(verifyHello(none, exporter).held).to.deep.equal([]);
      const tooMany = Array.from({ length: 17 }, (_, i) => `cp-${i}`);
      authError(() => verifyHello(encodeHello(pair, exporter, { ...body, held: tooMany }), exporter), 'bad_hello');
      authError(
        () => verifyHello(encodeHello(pair, exporter, { ...body, held: ['x'.repeat(64)] }), exporter),
        'bad_hello',
      );
    });
  });

  describe('parsePeers', function () {
    const a = newPair();
    const b = newPair();
    const keyA = encodeKey(a.publicKey);
    const keyB = encodeKey(b.publicKey);
    const tunnel = [Prefix.parse('198.18.255.0/24'), Prefix.parse('fd00:18:ff::/64')];

    type RawPeer = Record<string, unknown>;
    const peerA = (): RawPeer => ({
      name: 'node-a',
      publicKey: keyA,
      allowedIPs: ['198.19.0.11/32', '198.19.1.0/24', 'fd00:19:1::/64'],
    });
    const peerB = (): RawPeer => ({ name: 'node-b', publicKey: keyB, allowedIPs: ['198.19.0.12/32', '198.19.2.0/24'] });
    const file = (...peers: RawPeer[]): string => JSON.stringify({ peers });

    /** The file must be refused with 'peers_file'; the message names the source and every needle. */
    function refused(text: string, ...needles: string[]): string {
      const message = authError(() => parsePeers(text, '/etc/nodelink/peers.json', tunnel), 'peers_file');
      expect(message).to.include('/etc/nodelink/peers.json');
      for (const needle of needles) expect(message).to.include(needle);
      return message;
    }

    it('parses a valid file into peers with keys and canonical prefixes', function () {
      const registry = parsePeers(file(peerA(), peerB()), 'peers.json', tunnel);
      expect(registry.peers.map((p) => p.name)).to.deep.equal(['node-a', 'node-b']);
      const [pa, pb] = registry.peers;
      expect(pa!.publicKeyText).to.equal(keyA);
      expect(pa!.allowedIPs.map(String)).to.deep.equal(['198.19.0.11/32', '198.19.1.0/24', 'fd00:19:1::/64']);
      expect(pb!.allowedIPs.map(String)).to.deep.equal(['198.19.0.12/32', '198.19.2.0/24']);
      expect(registry.findByKey(b.publicKey)?.name).to.equal('node-b');
      expect(registry.findByKey(newPair().publicKey)).to.equal(undefined);
      // An empty list is a valid (if useless) file.
      expect(parsePeers('{"peers": []}', 'peers.json').peers).to.deep.equal([]);
    });

    it('rejects text that is not JSON, or JSON without a peers list', function () {
      refused('{"peers": [', 'not valid JSON');
      refused('', 'not valid JSON');
      refused('{}', '"peers"');
      refused('[]', '"peers"');
      refused('null', '"peers"');
      refused('{"peers": {"name": "node-a"}}', '"peers"');
    });

    it('rejects a peer with a missing or malformed field, naming the peer', function () {
      refused(file(peerA(), { publicKey: keyB, allowedIPs: ['198.19.2.0/24'] }), 'peer #2', '"name"');
      refused(file(peerA(), { ...peerB(), name: 'node b!' }), 'peer "node b!"', '"name"');
      refused(file(peerA(), { name: 'node-b', allowedIPs: ['198.19.2.0/24'] }), 'peer "node-b"', '"publicKey"');
      refused(file(peerA(), { name: 'node-b', publicKey: keyB }), 'peer "node-b"', '"allowedIPs"');
      refused(file(peerA(), { ...peerB(), allowedIPs: [] }), 'peer "node-b"', '"allowedIPs"');
      refused(file(peerA(), { ...peerB(), allowedIPs: '198.19.2.0/24' }), 'peer "node-b"', '"allowedIPs"');
      refused(file(peerA(), { ...peerB(), publicKey: 'AAAA' }), 'peer "node-b"', 'publicKey');
      refused(file({ ...peerA(), publicKey: 42 }, peerB()), 'peer "node-a"', '"publicKey"');
      refused(file(null as unknown as RawPeer), 'peer #1');
    });

    it('rejects a bad CIDR, naming the peer', function () {
      refused(file(peerA(), { ...peerB(), allowedIPs: ['198.19.2.0/33'] }), 'peer "node-b"', '198.19.2.0/33');
      refused(file(peerA(), { ...peerB(), allowedIPs: ['198.19.0.12'] }), 'peer "node-b"', '198.19.0.12');
      refused(file(peerA(), { ...peerB(), allowedIPs: ['node-b.example'] }), 'peer "node-b"', 'node-b.example');
      refused(
        file(peerA(), { ...peerB(), allowedIPs: ['198.19.2.0/24', 'fd00:19:2::/129'] }),
        'peer "node-b"',
        'fd00:19:2::/129',
      );
    });

    it('rejects a CIDR with host bits set, naming the peer and the intended prefix', function () {
      refused(
        file(peerA(), { ...peerB(), allowedIPs: ['198.19.2.7/24'] }),
        'peer "node-b"',
        'host bits',
        '198.19.2.0/24',
      );
      refused(
        file({ ...peerA(), allowedIPs: ['fd00:19:1::1/64'] }, peerB()),
        'peer "node-a"',
        'host bits',
        'fd00:19:1::/64',
      );
    });

    it('rejects two peers with overlapping allowedIPs, naming both', function () {
      // node-b claims a /25 inside node-a's pod /24: its pods would be unreachable or hijacked.
      refused(
        file(peerA(), { ...peerB(), allowedIPs: ['198.19.0.12/32', '198.19.1.128/25'] }),
        '"node-a"',
        '"node-b"',
        '198.19.1.0/24',
        '198.19.1.128/25',
        'overlap',
      );
      // The same node IP twice.
      refused(file(peerA(), { ...peerB(), allowedIPs: ['198.19.0.11/32'] }), '"node-a"', '"node-b"', 'overlap');
      // A short IPv6 prefix covering another's.
      refused(
        file(peerA(), { ...peerB(), allowedIPs: ['fd00:19::/32'] }),
        '"node-a"',
        '"node-b"',
        'fd00:19::/32',
        'overlap',
      );
    });

    it('rejects duplicate names and duplicate keys, naming the peers', function () {
      refused(file(peerA(), { ...peerB(), name: 'node-a' }), 'two peers are named "node-a"');
      refused(file(peerA(), { ...peerB(), publicKey: keyA }), '"node-a"', '"node-b"', 'share a public key');
    });

    it('rejects a peer that claims part of the tunnel CIDR, naming the peer', function () {
      refused(
        file(peerA(), { ...peerB(), allowedIPs: ['198.19.0.12/32', '198.18.255.7/32'] }),
        'peer "node-b"',
        '198.18.255.7/32',
        '198.18.255.0/24',
      );
      refused(
        file({ ...peerA(), allowedIPs: ['fd00:18::/32'] }, peerB()),
        'peer "node-a"',
        'fd00:18::/32',
        'tunnel CIDR',
      );
      // Without tunnel CIDRs (e.g. a client-side check) the same file is fine.
      expect(parsePeers(file({ ...peerA(), allowedIPs: ['198.18.255.7/32'] }), 'peers.json').peers).to.have.length(1);
    });
  });

  describe('PeerRegistry.authorize', function () {
    const a = newPair();
    const b = newPair();
    const registry: PeerRegistry = parsePeers(
      JSON.stringify({
        peers: [
          {
            name: 'node-a',
            publicKey: encodeKey(a.publicKey),
            allowedIPs: ['198.19.0.11/32', '198.19.1.0/24', 'fd00:19:1::/64'],
          },
          { name: 'node-b', publicKey: encodeKey(b.publicKey), allowedIPs: ['198.19.0.12/32', '198.19.2.0/24'] },
        ],
      }),
      'peers.json',
    );
    const hello = (pair: KeyPair, name: string, routes: string[]): Hello => ({
      publicKey: pair.publicKey,
      name,
      routes,
    });

    it("refuses an unknown key with 'unknown_key', pointing at the peers file", function () {
      const stranger = newPair();
      const message = authError(() => registry.authorize(hello(stranger, 'node-a', ['198.19.0.11/32'])), 'unknown_key');
      expect(message).to.include(encodeKey(stranger.publicKey));
      expect(message).to.include('peers file');
    });

    it("refuses a known key under another name with 'name_mismatch'", function () {
      const message = authError(() => registry.authorize(hello(a, 'node-b', ['198.19.0.12/32'])), 'name_mismatch');
      expect(message).to.include('"node-a"');
      expect(message).to.include('"node-b"');
    });

    it("refuses any route outside allowedIPs with 'route_not_allowed'", function () {
      const outside = [
        '198.19.3.0/24', //  nobody's
        '198.19.2.0/24', //  node-b's
        '198.19.0.0/16', //  contains the allowed ones, so is not inside them
        '198.19.0.12/32', // node-b's node IP
        'fd00:19:2::/64', // another v6 prefix
        'fd00:19::/48', //   a v6 supernet of the allowed one
        '0.0.0.0/0',
      ];
      for (const route of outside) {
        const message = authError(
          () => registry.authorize(hello(a, 'node-a', ['198.19.0.11/32', route])),
          'route_not_allowed',
        );
        expect(message, route).to.include(route);
        expect(message).to.include('allowedIPs');
        expect(message).to.include('"node-a"');
      }
    });

    it("refuses a route that is not a CIDR with 'bad_hello'", function () {
      authError(() => registry.authorize(hello(a, 'node-a', ['198.19.1.0'])), 'bad_hello');
      authError(() => registry.authorize(hello(a, 'node-a', ['198.19.1.5/24'])), 'bad_hello');
    });

    it('accepts routes equal to or inside allowedIPs, returning them parsed', function () {
      const equal = registry.authorize(hello(a, 'node-a', ['198.19.0.11/32', '198.19.1.0/24', 'fd00:19:1::/64']));
      expect(equal.peer.name).to.equal('node-a');
      expect(equal.routes.map(String)).to.deep.equal(['198.19.0.11/32', '198.19.1.0/24', 'fd00:19:1::/64']);

      const inside = registry.authorize(hello(a, 'node-a', ['198.19.1.128/25', '198.19.1.5/32', 'fd00:19:1:0:1::/80']));
      expect(inside.routes.map(String)).to.deep.equal(['198.19.1.128/25', '198.19.1.5/32', 'fd00:19:1:0:1::/80']);

      const nodeB = registry.authorize(hello(b, 'node-b', ['198.19.2.0/24']));
      expect(nodeB.peer.name).to.equal('node-b');
      expect(nodeB.routes.every((r) => r instanceof Prefix)).to.equal(true);

      expect(registry.authorize(hello(b, 'node-b', [])).routes).to.deep.equal([]);
    });
  });
});
