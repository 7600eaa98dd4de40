// `nodelink diagnose` through the real CLI in the namespace harness: all green on a healthy link,
// and for each fault an operator meets — server down, wrong server key, unauthorized key,
// ip_forward off, a missing route — the failing check names that cause and its fix. The side
// comes from the daemon on the admin socket; a server whose CA-signed certificate has a key
// that is not Ed25519 passes with the client's --ca and --server-name.

import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Harness } from '../../scripts/harness/index.js';
import { NodelinkCluster, runCli } from '../../scripts/cluster.js';
import type { Check, DiagnoseReport } from '../../src/cli/diagnose.js';
import { caSignedEcdsaCertificate } from '../support/certificates.js';
import { serverRouteCommand } from '../../src/tun/index.js';
import { clusterRig } from '../support/cluster-rig.js';
import { CONTROL_PLANE_CHECKS_WITH_NODE_1 } from '../support/diagnose.js';

const failed = (report: DiagnoseReport): Check[] => report.checks.filter((check) => check.status === 'fail');
const check = (report: DiagnoseReport, id: string): Check => report.checks.find((c) => c.id === id)!;

/** Runs `diagnose --json` in `ns` against the daemon on `socket`, `args` added; its exit code and report. */
async function diagnoseJson(
  ns: string,
  socket: string,
  args: readonly string[] = [],
): Promise<{ code: number; report: DiagnoseReport }> {
  const result = await runCli(['diagnose', '--admin-socket', socket, '--timeout-ms', '1500', '--json', ...args], {
    ns,
    timeoutMs: 30_000,
  });
  expect(result.stdout, `exit ${result.code}: ${result.stderr}`).to.match(/^\{/);
  return { code: result.code, report: JSON.parse(result.stdout) as DiagnoseReport };
}

/** Diagnose passed: no check failed, it exited 0, and its report holds at least the checks `ids`. */
function expectAllPassed(result: { code: number; report: DiagnoseReport }, ids?: readonly string[]): void {
  expect(failed(result.report), JSON.stringify(failed(result.report))).to.deep.equal([]);
  expect(result.code).to.equal(0);
  if (ids) expect(result.report.checks.map((c) => c.id)).to.include.members(ids);
}

describe('nodelink diagnose in namespaces (real CLI)', function () {
  this.timeout(60_000);
  const rig = clusterRig({ nodes: 1 }, { start: true });
  const H = (): Harness => rig.h;
  const C = (): NodelinkCluster => rig.cluster;

  /** Runs diagnose on node 1 with the client's flags, overridden as given; returns exit code and report. */
  async function onNode(
    overrides: { serverKey?: string; keyFile?: string } = {},
    json = true,
  ): Promise<{ code: number; report: DiagnoseReport; stdout: string }> {
    const t = H();
    const args = [
      'diagnose',
      '--side',
      'node',
      '--server',
      t.serverEndpoint,
      '--server-key',
      overrides.serverKey ?? C().serverKey.publicKey,
      '--key',
      overrides.keyFile ?? C().nodeKeys.get(1)!.keyFile,
      '--name',
      t.nodeName(1),
      ...t.nodeRoutes(1).flatMap((route) => ['--route', route]),
      '--admin-socket',
      C().clientSocket(1),
      '--timeout-ms',
      '1500',
      ...(json ? ['--json'] : []),
    ];
    const result = await runCli(args, { ns: t.ns.node(1), timeoutMs: 30_000 });
    return {
      code: result.code,
      stdout: result.stdout,
      report: json ? (JSON.parse(result.stdout) as DiagnoseReport) : { side: 'node', ok: false, failed: 0, checks: [] },
    };
  }

  async function onControlPlane(): Promise<{ code: number; report: DiagnoseReport }> {
    return diagnoseJson(H().ns.cp, C().serverSocket, ['--side', 'control-plane']);
  }

  it('passes every check on a healthy node and control plane', async function () {
    // Traffic the control plane opened, which is what the node side sees of the path.
    expect((await H().curl(H().ns.cp, H().kubeletURL(1), { timeoutS: 5 })).ok).to.equal(true);
    const node = await onNode();
    expectAllPassed(node, [
      'key_file',
      'dns',
      'tcp',
      'tls',
      'server_key',
      'authorized',
      'tun',
      'routes',
      'ip_forward',
      'ip_forward6',
      'rp_filter',
      'tunnel_ping',
      'kubelet',
      'client',
    ]);
    // The server drops what nodes open, ping to its tunnel address included: the node sees the
    // path in the control plane's packets instead.
    expect(check(node.report, 'tunnel_ping')).to.include({ status: 'pass' });
    expect(check(node.report, 'tunnel_ping').detail).to.match(/packets from the control plane arrived/);
    const cp = await onControlPlane();
    expectAllPassed(cp, CONTROL_PLANE_CHECKS_WITH_NODE_1);
    expect(check(cp.report, 'flow_filter').detail).to.match(/^on: table inet nodelink_nl0 drops what nodes open/);
    const text = await onNode({}, false);
    expect(text.stdout)
      .to.match(/✓ TLS 1\.3 handshake/)
      .and.match(/all \d+ checks passed/);
    // With no flags at all, diagnose asks the running client what to check.
    const bare = await runCli(['diagnose', '--admin-socket', C().clientSocket(1)], {
      ns: H().ns.node(1),
      timeoutMs: 30_000,
    });
    expect(bare.code, bare.stdout + bare.stderr).to.equal(0);
    expect(bare.stdout).to.match(/✓ this node is authorized .*the running client is authenticated as "node-1"/);
  });

  it('wrong server key: names the key mismatch and how to get the right one', async function () {
    const other = C().makeIdentity('other-server');
    const { code, report } = await onNode({ serverKey: other.publicKey });
    expect(code).to.equal(1);
    expect(failed(report).map((check) => check.id)).to.deep.equal(['server_key']);
    expect(failed(report)[0]!.detail).to.contain(C().serverKey.publicKey);
    expect(failed(report)[0]!.fix).to.match(/nodelink pubkey < server\.key/);
  });

  it('unauthorized key: names the peers file and the entry to add', async function () {
    const stranger = C().makeIdentity('stranger');
    const { code, report } = await onNode({ keyFile: stranger.keyFile });
    expect(code).to.equal(1);
    expect(failed(report).map((check) => check.id)).to.deep.equal(['authorized']);
    expect(failed(report)[0]!.detail).to.match(/not in the server's peers file/);
    expect(failed(report)[0]!.fix).to.contain(stranger.publicKey);
    // The probe did not disturb the running client's session.
    expect((await C().status()).peers[0]!.connected).to.equal(true);
  });

  it('ip_forward off: names ip_forward and the sysctl that fixes it', async function () {
    const t = H();
    await t.exec(t.ns.node(1), ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=0']);
    try {
      const { code, report } = await onNode();
      expect(code).to.equal(1);
      expect(failed(report).map((check) => check.id)).to.deep.equal(['ip_forward']);
      expect(failed(report)[0]!.detail).to.match(/ip_forward is off/);
      expect(failed(report)[0]!.fix).to.match(/sysctl -w net\.ipv4\.ip_forward=1/);
    } finally {
      await t.exec(t.ns.node(1), ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    }
  });

  it('a missing route on the node: names the route and the command that restores it', async function () {
    const t = H();
    await t.exec(t.ns.node(1), ['ip', 'route', 'del', t.tunnelCIDR, 'dev', 'nl0']);
    try {
      const { code, report } = await onNode();
      expect(code).to.equal(1);
      expect(failed(report)[0]!.id).to.equal('routes');
      expect(failed(report)[0]!.detail).to.match(/MISSING route: 198\.18\.255\.0\/24/);
      expect(failed(report)[0]!.fix).to.contain(`ip route replace ${t.tunnelCIDR} dev nl0`);
    } finally {
      await t.exec(t.ns.node(1), ['ip', 'route', 'replace', t.tunnelCIDR, 'dev', 'nl0']);
    }
  });

  it('a missing route on the control plane: names the peer and the route', async function () {
    const t = H();
    const route = (verb: 'del' | 'replace'): string[] => [
      'ip',
      ...serverRouteCommand(verb, t.podCIDR(1), 'nl0', '198.18.255.1').split(' '),
    ];
    await t.exec(t.ns.cp, route('del'));
    try {
      const { code, report } = await onControlPlane();
      expect(code).to.equal(1);
      expect(failed(report)[0]!.id).to.equal('peer:node-1:routes');
      expect(failed(report)[0]!.detail).to.match(/MISSING route: 198\.19\.1\.0\/24/);
      expect(failed(report)[0]!.fix).to.contain('ip route replace 198.19.1.0/24 dev nl0 src 198.18.255.1');
    } finally {
      await t.exec(t.ns.cp, route('replace'));
    }
  });

  it("without --side, asks the daemon on --admin-socket for its role: the server's gets the control-plane checks", async function () {
    const result = await diagnoseJson(H().ns.cp, C().serverSocket);
    expect(result.report.side).to.equal('control-plane');
    expectAllPassed(result, ['server', 'listening', 'peer:node-1:connected']);

    const nobody = path.join(H().dir, 'nobody.sock');
    const none = await runCli(['diagnose', '--admin-socket', nobody], { ns: H().ns.cp, timeoutMs: 30_000 });
    expect(none.code).to.equal(1);
    expect(none.stdout).to.equal('');
    expect(none.stderr.trim().split('\n')).to.have.length(1);
    expect(none.stderr).to.contain(`no nodelink daemon answers on ${nobody}`);
    expect(none.stderr).to.match(/--side node .*--side control-plane/);
  });

  it("checks the flags of the kube-apiserver in the server's network namespace, and only that one", async function () {
    const t = H();
    const checks = async (): Promise<Array<[string, string]>> =>
      (await onControlPlane()).report.checks
        .filter((c) => c.id.startsWith('apiserver'))
        .map((c): [string, string] => [c.id, c.status]);
    expect((await checks())[0], 'no apiserver here yet').to.deep.equal(['apiserver', 'skip']);
    // One with the built-in defaults beside the server, and a well-set one in another namespace.
    const elsewhere = await t.startApiserver(t.ns.node(1));
    const defaults = await t.startApiserver(t.ns.cp, ['--secure-port=6443']);
    try {
      const { code, report } = await onControlPlane();
      expect(code).to.equal(1);
      expect(check(report, 'apiserver').detail).to.equal(`pid ${defaults.process.pid}`);
      expect(check(report, 'apiserver:kubelet-preferred-address-types').fix).to.equal(
        'set --kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname on kube-apiserver',
      );
      expect(check(report, 'apiserver:enable-aggregator-routing').fix).to.equal(
        'set --enable-aggregator-routing=true on kube-apiserver',
      );
      expect(check(report, 'apiserver:egress-selector-config-file').status).to.equal('pass');
      const text = await runCli(['diagnose', '--side', 'control-plane', '--admin-socket', C().serverSocket], {
        ns: t.ns.cp,
        timeoutMs: 30_000,
      });
      expect(text.stdout).to.match(/✗ kube-apiserver --enable-aggregator-routing +unset \(default false\)/);
    } finally {
      await defaults.process.stop();
    }
    const good = await t.startApiserver();
    try {
      expect(await checks()).to.deep.equal([
        ['apiserver', 'pass'],
        ['apiserver:kubelet-preferred-address-types', 'pass'],
        ['apiserver:enable-aggregator-routing', 'pass'],
        ['apiserver:egress-selector-config-file', 'pass'],
      ]);
    } finally {
      await good.process.stop();
      await elsewhere.process.stop();
    }
  });

  it('server down: the first failure is the server port, refused', async function () {
    await C().server!.stop();
    const { code, report } = await onNode();
    expect(code).to.equal(1);
    const first = failed(report)[0]!;
    expect(first.id).to.equal('tcp');
    expect(first.detail).to.match(/connection refused.*server is down/);
    expect(report.checks.find((check) => check.id === 'tls')!.status).to.equal('skip');
    const cp = await runCli(['diagnose', '--side', 'control-plane', '--admin-socket', C().serverSocket], {
      ns: H().ns.cp,
      timeoutMs: 30_000,
    });
    expect(cp.code).to.equal(1);
    expect(cp.stdout, cp.stderr).to.match(/✗ nodelink server running/);
  });
});

describe('nodelink diagnose against a CA-signed server certificate whose key is ECDSA', function () {
  this.timeout(60_000);
  const SERVER_NAME = 'nodelink.test';
  let pkiDir = '';
  const file = (name: string): string => path.join(pkiDir, name);
  before(async function () {
    pkiDir = mkdtempSync(path.join(tmpdir(), 'nodelink-diagnose-ca-'));
    const pki = await caSignedEcdsaCertificate({ dns: [SERVER_NAME] });
    writeFileSync(file('ca.pem'), pki.caPem);
    writeFileSync(file('server.pem'), pki.certPem);
    writeFileSync(file('server-key.pem'), pki.keyPem, { mode: 0o600 });
  });
  after(function () {
    if (pkiDir) rmSync(pkiDir, { recursive: true, force: true });
  });
  const rig = clusterRig(
    { nodes: 1 },
    { cluster: () => ({ extraServerArgs: ['--cert', file('server.pem'), '--cert-key', file('server-key.pem')] }) },
  );
  const caFlags = (): string[] => ['--ca', file('ca.pem'), '--server-name', SERVER_NAME];

  before(async function () {
    const { h, cluster } = rig;
    await cluster.startServer();
    const args = cluster.clientArgs(1);
    args.splice(args.indexOf('--server-key'), 2, ...caFlags());
    cluster.clients.set(1, h.spawn(h.ns.node(1), args, { name: 'nodelink-client-1-ca' }));
    await cluster.waitConnected([1]);
  });

  async function diagnose(args: string[]): Promise<{ code: number; report: DiagnoseReport }> {
    const { h, cluster } = rig;
    return diagnoseJson(h.ns.node(1), cluster.clientSocket(1), args);
  }

  it("with the client's --ca and --server-name, the TLS and trust checks pass", async function () {
    const result = await diagnose([...caFlags(), '--key', rig.cluster.nodeKeys.get(1)!.keyFile]);
    const { report } = result;
    expect(report.side).to.equal('node');
    expectAllPassed(result);
    expect(check(report, 'tls').status).to.equal('pass');
    expect(check(report, 'server_key')).to.deep.include({ status: 'pass' });
    expect(check(report, 'server_key').detail).to.match(
      /presents sha256:.* trusted by the CA in .*ca\.pem for the name nodelink\.test/,
    );
    expect(check(report, 'authorized').status).to.equal('pass');
  });

  it('without --ca, says the client trusts by a CA, and skips the network checks for that reason', async function () {
    const { code, report } = await diagnose([]);
    expect(code).to.equal(1);
    expect(failed(report).map((c) => c.id)).to.deep.equal(['config']);
    expect(check(report, 'config').detail).to.match(/trusts its server by a CA/);
    expect(check(report, 'config').fix).to.match(/--ca/);
    expect(check(report, 'tls').detail).to.equal('skipped: server and trust settings failed');
  });

  it('with the wrong --server-name, the trust check fails naming --server-name', async function () {
    const { code, report } = await diagnose(['--ca', file('ca.pem'), '--server-name', 'elsewhere.test']);
    expect(code).to.equal(1);
    expect(failed(report).map((c) => c.id)).to.deep.equal(['server_key']);
    expect(check(report, 'server_key').detail).to.match(/does not verify against --ca/);
    expect(check(report, 'server_key').fix).to.match(/--server-name/);
  });
});
