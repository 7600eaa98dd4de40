import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  checkApiserverFlags,
  clusterEgress,
  findApiserverProcesses,
  parseFlags,
  readAsProcess,
} from '../../src/cli/apiserver-flags.js';
import { runChecks } from '../../src/cli/diagnose/checks.js';
import { controlPlaneChecks } from '../../src/cli/diagnose/control-plane.js';

/** kubeadm's kube-apiserver command, trimmed, with nodelink's two flags right. */
const GOOD = [
  'kube-apiserver',
  '--advertise-address=198.18.0.2',
  '--allow-privileged=true',
  '--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname',
  '--enable-aggregator-routing=true',
  '--secure-port=6443',
];

const failing = (argv: string[], readFile?: (p: string) => string | undefined): string[] =>
  checkApiserverFlags(argv, readFile)
    .filter((check) => !check.ok)
    .map((check) => check.flag);

describe('kube-apiserver flags nodelink needs', function () {
  it('reads pflag forms: --a=b, --a b, a bare boolean; the last one wins', function () {
    const flags = parseFlags([
      'kube-apiserver',
      '--kubelet-preferred-address-types',
      'Hostname',
      '--enable-aggregator-routing',
      '--secure-port=6443',
      '--kubelet-preferred-address-types=InternalIP',
    ]);
    expect(flags.get('kubelet-preferred-address-types')).to.equal('InternalIP');
    expect(flags.get('enable-aggregator-routing')).to.equal('true');
    expect(flags.get('secure-port')).to.equal('6443');
    // A boolean flag never takes the next word as its value.
    expect(parseFlags(['--enable-aggregator-routing', 'stray']).get('enable-aggregator-routing')).to.equal('true');
  });

  it('passes a command line with InternalIP first, aggregator routing on and no egress selector', function () {
    const checks = checkApiserverFlags(GOOD);
    expect(checks.map((check) => [check.flag, check.ok])).to.deep.equal([
      ['kubelet-preferred-address-types', true],
      ['enable-aggregator-routing', true],
      ['egress-selector-config-file', true],
    ]);
  });

  it('fails the defaults (Hostname first, aggregator routing off) and says what to set', function () {
    const checks = checkApiserverFlags(['kube-apiserver', '--secure-port=6443']);
    expect(checks.filter((check) => !check.ok).map((check) => check.fix)).to.deep.equal([
      'set --kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname on kube-apiserver',
      'set --enable-aggregator-routing=true on kube-apiserver',
    ]);
    expect(checks[0]!.detail).to.match(/^unset \(default Hostname,InternalDNS,InternalIP,ExternalDNS,ExternalIP\)/);
    expect(failing([...GOOD, '--kubelet-preferred-address-types=Hostname,InternalIP'])).to.deep.equal([
      'kubelet-preferred-address-types',
    ]);
    expect(failing([...GOOD, '--enable-aggregator-routing=false'])).to.deep.equal(['enable-aggregator-routing']);
  });

  it('an egress selector: fails when "cluster" goes to a proxy or the file cannot be read; Direct passes', function () {
    const konnectivity = `apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: GRPC
    transport:
      uds:
        udsName: /etc/kubernetes/konnectivity-server/konnectivity-server.socket
`;
    expect(clusterEgress(konnectivity)).to.equal('proxied');
    expect(clusterEgress(konnectivity.replace('GRPC', 'Direct'))).to.equal('direct');
    expect(clusterEgress('egressSelections:\n- name: etcd\n  connection:\n    proxyProtocol: Direct\n')).to.equal(
      'direct',
    );
    expect(clusterEgress('{not yaml')).to.equal('unknown');
    const argv = [...GOOD, '--egress-selector-config-file=/etc/kubernetes/egress.yaml'];
    const files: Record<string, string> = { '/etc/kubernetes/egress.yaml': konnectivity };
    const check = checkApiserverFlags(argv, (p) => files[p]).find((c) => c.flag === 'egress-selector-config-file')!;
    expect(check.ok).to.equal(false);
    expect(check.detail).to.match(/sends "cluster" traffic to a proxy \(Konnectivity\)/);
    expect(check.fix).to.match(/^remove --egress-selector-config-file/);
    expect(failing(argv)).to.deep.equal(['egress-selector-config-file']);
    files['/etc/kubernetes/egress.yaml'] = konnectivity.replace('GRPC', 'Direct');
    expect(failing(argv, (p) => files[p])).to.deep.equal([]);
  });

  it('finds kube-apiserver processes in a /proc tree and reads files as they see them', function () {
    const root = mkdtempSync(path.join(os.tmpdir(), 'nodelink-proc-'));
    try {
      const proc = (pid: number, argv: string[], netns?: string): void => {
        mkdirSync(path.join(root, String(pid), 'root', 'etc'), { recursive: true });
        writeFileSync(path.join(root, String(pid), 'cmdline'), `${argv.join('\0')}\0`);
        if (netns) {
          mkdirSync(path.join(root, String(pid), 'ns'));
          symlinkSync(netns, path.join(root, String(pid), 'ns', 'net'));
        }
      };
      proc(40, ['/usr/local/bin/kube-apiserver', '--secure-port=6443'], 'net:[4026531840]');
      proc(7, ['kube-apiserver', ...GOOD.slice(1)]);
      proc(9, ['/usr/bin/nodelink', 'server']);
      proc(11, ['kube-apiserver-proxy']);
      // Another network namespace's apiserver does not dial through this server's routes.
      proc(13, ['kube-apiserver', '--secure-port=6443'], 'net:[4026532999]');
      mkdirSync(path.join(root, 'self', 'ns'), { recursive: true });
      symlinkSync('net:[4026531840]', path.join(root, 'self', 'ns', 'net'));
      writeFileSync(path.join(root, '40', 'root', 'etc', 'egress.yaml'), 'egressSelections: []\n');
      const found = findApiserverProcesses(root);
      expect(found.map((p) => p.pid)).to.deep.equal([7, 40]);
      expect(found[1]!.argv).to.deep.equal(['/usr/local/bin/kube-apiserver', '--secure-port=6443']);
      expect(readAsProcess(40, '/etc/egress.yaml', root)).to.equal('egressSelections: []\n');
      expect(readAsProcess(40, '/etc/missing.yaml', root)).to.equal(undefined);
      expect(findApiserverProcesses(path.join(root, 'nothing-here'))).to.deep.equal([]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('diagnose on the control plane: one check per flag with its fix, skipped when no apiserver is visible', async function () {
    const root = mkdtempSync(path.join(os.tmpdir(), 'nodelink-proc-'));
    try {
      // No nodelink server here: its checks fail or skip; only the apiserver's are looked at.
      const ctx = { daemon: { socket: 'none' }, kubeletPort: 1, timeoutMs: 1 };
      const apiserver = async (): Promise<Array<[string, string, string | undefined]>> =>
        (await runChecks('control-plane', controlPlaneChecks(ctx, root), ctx)).checks
          .filter((check) => check.id.startsWith('apiserver'))
          .map((check) => [check.id, check.status, check.fix]);
      expect(await apiserver()).to.deep.equal([
        ['apiserver', 'skip', undefined],
        ['apiserver:kubelet-preferred-address-types', 'skip', undefined],
        ['apiserver:enable-aggregator-routing', 'skip', undefined],
        ['apiserver:egress-selector-config-file', 'skip', undefined],
      ]);
      mkdirSync(path.join(root, '321'));
      writeFileSync(path.join(root, '321', 'cmdline'), 'kube-apiserver\0--secure-port=6443\0');
      expect(await apiserver()).to.deep.equal([
        ['apiserver', 'pass', undefined],
        [
          'apiserver:kubelet-preferred-address-types',
          'fail',
          'set --kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname on kube-apiserver',
        ],
        ['apiserver:enable-aggregator-routing', 'fail', 'set --enable-aggregator-routing=true on kube-apiserver'],
        ['apiserver:egress-selector-config-file', 'pass', undefined],
      ]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
