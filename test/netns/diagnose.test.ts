// `nodelink diagnose` through the real CLI in the namespace harness: all green on a healthy link,
// and for each fault an operator meets — server down, wrong server key, unauthorized key,
// ip_forward off, a missing route — the failing check names that cause and its fix.

import { expect } from 'chai';
import { Harness } from '../../scripts/harness.js';
import { NodelinkCluster, runCli } from '../../scripts/cluster.js';
import type { Check, DiagnoseReport } from '../../src/cli/diagnose.js';
import { clusterRig } from './root.js';

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
    const result = await runCli(
      ['diagnose', '--side', 'control-plane', '--admin-socket', C().serverSocket, '--timeout-ms', '1500', '--json'],
      { ns: H().ns.cp, timeoutMs: 30_000 },
    );
    expect(result.stdout, `exit ${result.code}: ${result.stderr}`).to.match(/^\{/);
    return { code: result.code, report: JSON.parse(result.stdout) as DiagnoseReport };
  }

  const failed = (report: DiagnoseReport): Check[] => report.checks.filter((check) => check.status === 'fail');

  it('passes every check on a healthy node and control plane', async function () {
    const node = await onNode();
    expect(failed(node.report), JSON.stringify(failed(node.report))).to.deep.equal([]);
    expect(node.code).to.equal(0);
    expect(node.report.checks.map((check) => check.id)).to.include.members([
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
    const cp = await onControlPlane();
    expect(failed(cp.report), JSON.stringify(failed(cp.report))).to.deep.equal([]);
    expect(cp.code).to.equal(0);
    expect(cp.report.checks.map((check) => check.id)).to.include.members([
      'server',
      'listening',
      'tun',
      'peer:node-1:connected',
      'peer:node-1:routes',
      'peer:node-1:node_ip',
      'peer:node-1:pod:198.19.1.0/24',
    ]);
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
    await t.exec(t.ns.cp, ['ip', 'route', 'del', t.podCIDR(1), 'dev', 'nl0']);
    try {
      const { code, report } = await onControlPlane();
      expect(code).to.equal(1);
      expect(failed(report)[0]!.id).to.equal('peer:node-1:routes');
      expect(failed(report)[0]!.detail).to.match(/MISSING route: 198\.19\.1\.0\/24/);
      expect(failed(report)[0]!.fix).to.contain('ip route replace 198.19.1.0/24 dev nl0 src 198.18.255.1');
    } finally {
      await t.exec(t.ns.cp, ['ip', 'route', 'replace', t.podCIDR(1), 'dev', 'nl0', 'src', '198.18.255.1']);
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
