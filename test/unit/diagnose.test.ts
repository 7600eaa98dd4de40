// nodelink diagnose without root: the check runner (order, dependency skipping, messages) with
// fake checks, the node table's dependencies, and the handshake probe over loopback TLS, which
// must accept exactly the servers the client accepts (pinned key, or --ca with a CA-signed
// certificate whose key is not Ed25519).

import { expect } from 'chai';
import { createServer as createNetServer } from 'node:net';
import { encodeKey, type KeyPair, type PeerRegistry } from '../../src/auth/index.js';
import type { DaemonStatus } from '../../src/admin/index.js';
import { probeHandshake, type ProbeOptions } from '../../src/link-client/probe.js';
import {
  assertTable,
  fail,
  formatReport,
  pass,
  runChecks,
  skip,
  type CheckDefinition,
  type DiagnoseReport,
  type Outcome,
  type Side,
} from '../../src/cli/diagnose/checks.js';
import { NODE_CHECKS, nodeContext, type NodeInput } from '../../src/cli/diagnose/node.js';
import { controlPlaneChecks } from '../../src/cli/diagnose/control-plane.js';
import { Rigs, TUNNEL_CIDRS, newPair, registryOf } from '../support/link-rig.js';
import { waitFor } from '../support/wait.js';
import { caSignedEcdsaCertificate, type CaSignedCertificate } from '../support/certificates.js';
import { idlePeerStatus } from '../support/status.js';
import { CONTROL_PLANE_CHECKS_WITH_NODE_1 } from '../support/diagnose.js';

type FakeRow = { id: string; after?: string[]; outcome: Outcome | (() => never) };

/** A table of fake checks: each returns its scripted outcome and records that it ran. */
function fakeTable(rows: FakeRow[], ran: string[]): CheckDefinition<null>[] {
  return rows.map((row) => ({
    id: row.id,
    title: `title of ${row.id}`,
    after: row.after,
    run() {
      ran.push(row.id);
      return typeof row.outcome === 'function' ? row.outcome() : row.outcome;
    },
  }));
}

/** Runs a table of fake checks: the report, and the ids of the checks that ran, in order. */
async function runFakeTable(side: Side, rows: FakeRow[]): Promise<{ report: DiagnoseReport; ran: string[] }> {
  const ran: string[] = [];
  const report = await runChecks(side, fakeTable(rows, ran), null);
  return { report, ran };
}

describe('diagnose', function () {
  describe('check runner', function () {
    it('runs checks in table order and counts failures', async function () {
      const { report, ran } = await runFakeTable('node', [
        { id: 'a', outcome: pass('fine') },
        { id: 'b', outcome: fail('broken', 'mend it') },
        { id: 'c', outcome: skip('not here') },
      ]);
      expect(ran).to.deep.equal(['a', 'b', 'c']);
      expect(report).to.deep.equal({
        side: 'node',
        ok: false,
        failed: 1,
        checks: [
          { id: 'a', title: 'title of a', status: 'pass', detail: 'fine' },
          { id: 'b', title: 'title of b', status: 'fail', detail: 'broken', fix: 'mend it' },
          { id: 'c', title: 'title of c', status: 'skip', detail: 'skipped: not here' },
        ],
      });
    });

    it('skips, without running, every check after a failed one, naming the failed check', async function () {
      const { report, ran } = await runFakeTable('node', [
        { id: 'tcp', outcome: pass('port answered') },
        { id: 'tls', after: ['tcp'], outcome: fail('no handshake', 'fix TLS') },
        { id: 'trust', after: ['tls'], outcome: pass('should not run') },
        { id: 'hello', after: ['trust', 'tcp'], outcome: pass('should not run') },
        { id: 'tun', outcome: pass('up') },
      ]);
      expect(ran).to.deep.equal(['tcp', 'tls', 'tun']);
      const detail = (id: string): string => report.checks.find((check) => check.id === id)!.detail;
      expect(detail('trust')).to.equal('skipped: title of tls failed');
      // The root cause travels down the chain; the check that passed is never blamed.
      expect(detail('hello')).to.equal('skipped: title of tls failed');
      expect(report.failed).to.equal(1);
    });

    it("passes a skipped check's own reason on to the checks after it", async function () {
      const { report, ran } = await runFakeTable('control-plane', [
        { id: 'routes', outcome: skip('tunnel CIDRs unknown') },
        { id: 'ping', after: ['routes'], outcome: fail('no reply', 'x') },
      ]);
      expect(ran).to.deep.equal(['routes']);
      expect(report.checks[1]).to.deep.include({ status: 'skip', detail: 'skipped: tunnel CIDRs unknown' });
      expect(report.ok).to.equal(true);
    });

    it('turns a check that throws into a failure and skips its dependents', async function () {
      const { report } = await runFakeTable('node', [
        {
          id: 'broken',
          outcome: () => {
            throw new Error('boom');
          },
        },
        { id: 'next', after: ['broken'], outcome: pass('never') },
      ]);
      expect(report.checks[0]).to.deep.include({
        status: 'fail',
        detail: 'the check itself failed: unexpected error: boom',
      });
      expect(report.checks[0]!.fix).to.match(/bug in nodelink diagnose/);
      expect(report.checks[1]!.detail).to.equal('skipped: title of broken failed');
    });

    it('refuses a table with a repeated id or a dependency that does not run before', function () {
      const table = (rows: Array<{ id: string; after?: string[] }>): CheckDefinition<null>[] =>
        fakeTable(
          rows.map((row) => ({ ...row, outcome: pass('') })),
          [],
        );
      expect(() => assertTable(table([{ id: 'a' }, { id: 'a' }]))).to.throw(/"a" is defined twice/);
      expect(() => assertTable(table([{ id: 'a', after: ['b'] }, { id: 'b' }]))).to.throw(/"a" comes after "b"/);
      expect(() => assertTable(table([{ id: 'a', after: ['nowhere'] }]))).to.throw(/"nowhere"/);
      expect(() => assertTable(table([{ id: 'a' }, { id: 'b', after: ['a'] }]))).to.not.throw();
    });

    it('prints one line per check, the fix under a failure, and the first failure last', async function () {
      const { report } = await runFakeTable('node', [
        { id: 'a', outcome: pass('fine') },
        { id: 'b', outcome: fail('broken', 'mend it') },
        { id: 'c', after: ['b'], outcome: pass('never') },
      ]);
      expect(formatReport(report, 'heading').split('\n')).to.deep.equal([
        'heading',
        '',
        '  ✓ title of a  fine',
        '  ✗ title of b  broken',
        '      fix: mend it',
        '  - title of c  skipped: title of b failed',
        '',
        '1 check failed; first: title of b — broken',
        '',
      ]);
    });
  });

  describe('the tables', function () {
    const status: DaemonStatus = {
      role: 'server',
      tun: 'nl0',
      tunnelAddress: '198.18.255.1',
      tunnelAddresses: ['198.18.255.1'],
      startedAt: new Date().toISOString(),
      dropsByReason: {},
      peers: [
        idlePeerStatus({
          connected: true,
          routes: ['198.19.0.11/32', '198.19.1.0/24'],
          allowedIPs: ['198.19.0.11/32', '198.19.1.0/24'],
        }),
      ],
    };

    it('are well formed: unique ids, each dependency earlier', function () {
      expect(() => assertTable(NODE_CHECKS)).to.not.throw();
      const cp = controlPlaneChecks({ daemon: { socket: 's', status }, kubeletPort: 1, timeoutMs: 1 });
      expect(() => assertTable(cp)).to.not.throw();
      expect(cp.map((check) => check.id)).to.deep.equal([
        ...CONTROL_PLANE_CHECKS_WITH_NODE_1,
        'apiserver',
        'apiserver:kubelet-preferred-address-types',
        'apiserver:enable-aggregator-routing',
        'apiserver:egress-selector-config-file',
      ]);
    });

    it('node side: a failed TLS handshake skips trust and authorization, and nothing local', async function () {
      const outcomes: Record<string, Outcome> = { tls: fail('no TLS', 'fix') };
      const table = NODE_CHECKS.map((check): CheckDefinition<null> => ({
        ...check,
        run: () => outcomes[check.id] ?? pass('ok'),
      }));
      const report = await runChecks('node', table, null);
      const byId = new Map(report.checks.map((check) => [check.id, check]));
      expect(byId.get('tcp')!.status).to.equal('pass');
      expect(byId.get('server_key')!.detail).to.equal('skipped: TLS 1.3 handshake failed');
      expect(byId.get('authorized')!.detail).to.equal('skipped: TLS 1.3 handshake failed');
      expect(report.checks.filter((check) => check.status === 'skip').map((check) => check.id)).to.deep.equal([
        'server_key',
        'authorized',
      ]);
    });

    it('node side: a running client that trusts its server by a CA asks for --ca, not a key', async function () {
      const input: NodeInput = { routes: [], tun: 'nl0', kubeletPort: 1, timeoutMs: 1 };
      const client: DaemonStatus = {
        ...status,
        role: 'client',
        name: 'node-1',
        server: '198.18.0.2:8443',
        peers: [{ ...status.peers[0]!, name: 'server', publicKey: 'sha256:AB:CD' }],
      };
      const ctx = nodeContext(input, { socket: 's', status: client });
      const config = NODE_CHECKS.find((check) => check.id === 'config')!;
      const outcome = await config.run(ctx);
      expect(outcome.status).to.equal('fail');
      expect(outcome.detail).to.match(/trusts its server by a CA \(the server presents sha256:AB:CD\)/);
      expect(outcome).to.have.property('fix').that.matches(/--ca/);
      const withCa = nodeContext({ ...input, caFile: '/nonexistent/ca.pem' }, { socket: 's', status: client });
      expect((await config.run(withCa)).detail).to.match(/\/nonexistent\/ca\.pem/);
    });
  });

  describe('handshake probe over loopback TLS', function () {
    this.timeout(20_000);
    const rigs = new Rigs();
    const serverPair = newPair();
    const nodePair = newPair();
    const ROUTES = ['198.19.0.11/32'];
    const registry: PeerRegistry = registryOf([{ name: 'node-a', pair: nodePair, allowedIPs: ROUTES }]);
    const hello = (keyPair: KeyPair = nodePair, name = 'node-a'): ProbeOptions['hello'] => ({
      keyPair,
      name,
      routes: ROUTES,
    });

    afterEach(async function () {
      await rigs.stopAll();
    });

    it('tells welcome, rejection, an untrusted key, trust without a hello and a TLS failure apart', async function () {
      const { port, peer } = await rigs.server({ registry, keyPair: serverPair });
      const base = { host: '127.0.0.1', port, timeoutMs: 2000 };
      const pinned = { serverKey: serverPair.publicKey };

      const welcome = await probeHandshake({ ...base, trust: pinned, hello: hello() });
      expect(welcome).to.deep.include({ stage: 'welcome', presented: encodeKey(serverPair.publicKey) });
      expect(welcome.stage === 'welcome' && welcome.welcome.tunnelCidrs).to.deep.equal(TUNNEL_CIDRS.map(String));
      await waitFor('the probe session to end at once', () => !peer('node-a').connected);

      const rejected = await probeHandshake({ ...base, trust: pinned, hello: hello(newPair(), 'x') });
      expect(rejected).to.deep.include({ stage: 'rejected', code: 'auth_failed' });

      const wrongKey = await probeHandshake({ ...base, trust: { serverKey: newPair().publicKey }, hello: hello() });
      expect(wrongKey.stage).to.equal('untrusted');
      expect(wrongKey.stage === 'untrusted' && wrongKey.untrusted.failure).to.equal('server_key_mismatch');

      const trusted = await probeHandshake({ ...base, trust: pinned });
      expect(trusted).to.deep.equal({ stage: 'trusted', presented: encodeKey(serverPair.publicKey) });

      // Read what the probe sends, so that its close reaches this end and nothing stays open.
      const plain = createNetServer((socket) => socket.resume().end('HTTP/1.0 400 nope\r\n\r\n'));
      await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve));
      const plainPort = (plain.address() as { port: number }).port;
      const tls = await probeHandshake({ ...base, port: plainPort, trust: pinned, hello: hello() });
      plain.close();
      expect(tls).to.deep.equal({ stage: 'tls', error: 'ERR_SSL_WRONG_VERSION_NUMBER' });
    });

    describe('with a CA-signed ECDSA certificate (--cert with its own --cert-key)', function () {
      let pki: CaSignedCertificate;
      let otherCa: CaSignedCertificate;

      before(async function () {
        pki = await caSignedEcdsaCertificate({ ips: ['127.0.0.1'], dns: ['nodelink.test'] });
        otherCa = await caSignedEcdsaCertificate({ ips: ['127.0.0.1'] });
      });

      it('the probe trusts it by --ca and gets a welcome, as the client does', async function () {
        const { port } = await rigs.server({
          registry,
          keyPair: serverPair,
          certificate: { certPem: pki.certPem, keyPem: pki.keyPem },
        });
        const trust = { ca: pki.caPem };
        const probe = await probeHandshake({ host: '127.0.0.1', port, timeoutMs: 2000, trust, hello: hello() });
        expect(probe.stage, JSON.stringify(probe)).to.equal('welcome');
        expect(probe.stage === 'welcome' && probe.presented).to.match(/^sha256:/);
        const byName = await probeHandshake({
          host: '127.0.0.1',
          port,
          timeoutMs: 2000,
          trust: { ca: pki.caPem, serverName: 'nodelink.test' },
        });
        expect(byName.stage, JSON.stringify(byName)).to.equal('trusted');
        // The running client, given the same trust, accepts the same server.
        const { client } = rigs.client({ port, name: 'node-a', keyPair: nodePair, routes: ROUTES, ...trust });
        await waitFor('the client to authenticate by --ca', () => client.isAuthenticated);
      });

      it('the probe refuses it as the client does: by a pinned key, another CA, or a name not in it', async function () {
        const { port } = await rigs.server({
          registry,
          keyPair: serverPair,
          certificate: { certPem: pki.certPem, keyPem: pki.keyPem },
        });
        const probe = (trust: ProbeOptions['trust']): ReturnType<typeof probeHandshake> =>
          probeHandshake({ host: '127.0.0.1', port, timeoutMs: 2000, trust, hello: hello() });
        const pinned = await probe({ serverKey: serverPair.publicKey });
        expect(pinned.stage === 'untrusted' && pinned.untrusted.failure).to.equal('server_key_mismatch');
        expect(pinned.stage === 'untrusted' && pinned.presented).to.match(/^sha256:/);
        const foreign = await probe({ ca: otherCa.caPem });
        expect(foreign.stage === 'untrusted' && foreign.untrusted.failure).to.equal('untrusted_certificate');
        const wrongName = await probe({ ca: pki.caPem, serverName: 'elsewhere.test' });
        expect(wrongName.stage === 'untrusted' && wrongName.untrusted.message).to.match(/does not verify against --ca/);
      });
    });
  });
});
