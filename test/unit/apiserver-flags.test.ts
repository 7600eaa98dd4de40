import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  checkApiserverFlags,
  clusterEgress,
  findApiserverProcesses,
  parseFlags,
  readAsProcess,
} from '../../src/cli/apiserver-flags.js';

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
      const proc = (pid: number, argv: string[]): void => {
        mkdirSync(path.join(root, String(pid), 'root', 'etc'), { recursive: true });
        writeFileSync(path.join(root, String(pid), 'cmdline'), `${argv.join('\0')}\0`);
      };
      proc(40, ['/usr/local/bin/kube-apiserver', '--secure-port=6443']);
      proc(7, ['kube-apiserver', ...GOOD.slice(1)]);
      proc(9, ['/usr/bin/nodelink', 'server']);
      proc(11, ['kube-apiserver-proxy']);
      mkdirSync(path.join(root, 'self'));
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
});
