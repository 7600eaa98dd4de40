// Nodes answer, never initiate: with the server's flow filter (the default), a node holding a
// valid key opens nothing toward the control plane: not to the server's tunnel address, not to
// another address of the control-plane host that the node routes into its TUN itself, and not
// to another node's pod through a control plane that forwards. Everything is counted where it
// would arrive (nftables counters in the control plane and on the other node, a listener's log)
// and, per node, as node_initiated in `status --json`. Meanwhile the control plane's own flows
// work as before: kubelets and pods over IPv4 and IPv6, 20 MB intact, path MTU discovery across
// a 1500-byte pod link, a stream that outlives a server restart. A node's forged "fragmentation
// needed" about another node's traffic is dropped; one about its own is not. Finally the same
// probes with --allow-node-initiated do arrive, so every "nothing arrived" above could fail.

import { expect } from 'chai';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expectedBytes, expectedSha256, url, type ManagedProcess } from '../../scripts/harness/index.js';
import { CLI, runCli } from '../../scripts/cluster.js';
import type { DaemonStatus } from '../../src/admin/index.js';
import { clusterRig, leavesNothingBehind } from '../support/cluster-rig.js';
import { waitFor } from '../support/wait.js';

const ATTACKER = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'attacker.js');
const TABLE = 'nodelink_nl0';
const TCP_PORT = 7070;
const UDP_PORT = 7071;
/** Another address of the control-plane host, on its loopback: no node has a route to it. */
const CP_OTHER = '198.18.7.1';
const CP_OTHER6 = 'fd00:18:7::1';
const MAX_FLOWS_PER_NODE = 4096;

/** Listens on TCP_PORT and UDP_PORT (both families) and logs one line per connection or datagram. */
const LISTENER = `
const net = require('node:net'), dgram = require('node:dgram');
net.createServer((s) => { console.log('tcp from ' + s.remoteAddress + ' to ' + s.localAddress); s.destroy(); }).listen(${TCP_PORT}, '::');
for (const type of ['udp4', 'udp6']) {
  const u = dgram.createSocket({ type, ipv6Only: type === 'udp6' });
  u.on('message', (m, r) => console.log('udp from ' + r.address));
  u.bind(${UDP_PORT}, type === 'udp4' ? '0.0.0.0' : '::');
}
setTimeout(() => process.exit(0), 600000).unref();
setInterval(() => undefined, 1000);
console.log('listener ready');
`;

/**
 * A long-lived stream the control plane opens, like \`kubectl exec\`: an HTTP upgrade to a pod's
 * stub, which echoes every byte. One numbered line every 100 ms for SECONDS; prints JSON.
 */
const STREAMER = `
const net = require('node:net');
const [host, port, seconds] = process.argv.slice(2);
const socket = net.connect(Number(port), host);
let upgraded = false, buffer = '', sent = 0, echoed = 0, outOfOrder = 0, last = Date.now(), maxGapMs = 0, gapAt = 0;
const started = Date.now();
socket.on('error', (err) => { console.log(JSON.stringify({ error: err.message, sent, echoed })); process.exit(1); });
socket.write('GET /stream HTTP/1.1\\r\\nHost: pod\\r\\nConnection: Upgrade\\r\\nUpgrade: echo\\r\\n\\r\\n');
socket.on('data', (chunk) => {
  buffer += chunk.toString();
  if (!upgraded) {
    const end = buffer.indexOf('\\r\\n\\r\\n');
    if (end < 0) return;
    if (!buffer.startsWith('HTTP/1.1 101')) { console.log(JSON.stringify({ error: buffer.split('\\r\\n')[0] })); process.exit(1); }
    upgraded = true;
    buffer = buffer.slice(end + 4);
    console.log('stream open');
    const timer = setInterval(() => {
      if (Date.now() - started > Number(seconds) * 1000) { clearInterval(timer); return; }
      socket.write(sent++ + '\\n');
    }, 100);
  }
  let nl;
  while ((nl = buffer.indexOf('\\n')) >= 0) {
    const n = Number(buffer.slice(0, nl));
    buffer = buffer.slice(nl + 1);
    if (n !== echoed) outOfOrder++;
    echoed++;
    const now = Date.now();
    if (now - last > maxGapMs) { maxGapMs = now - last; gapAt = now - started; }
    last = now;
  }
});
const deadline = setInterval(() => {
  const over = Date.now() - started > (Number(seconds) + 30) * 1000;
  if ((upgraded && sent > 0 && echoed === sent && Date.now() - started > Number(seconds) * 1000) || over) {
    console.log(JSON.stringify({ sent, echoed, outOfOrder, maxGapMs, gapAtMs: gapAt }));
    socket.destroy();
    process.exit(0);
  }
}, 200);
`;

/** Sends UDP from one source port to each target every 200 ms, for the given seconds. */
const UDP_SENDER = `
const dgram = require('node:dgram');
const [sport, seconds, ...targets] = process.argv.slice(2);
const s = dgram.createSocket('udp4');
s.on('error', () => undefined);
s.bind(Number(sport), () => {
  console.log('sending');
  const timer = setInterval(() => { for (const t of targets) s.send('x', 9, t, () => undefined); }, 200);
  setTimeout(() => { clearInterval(timer); s.close(); }, Number(seconds) * 1000);
});
`;

/** New UDP flows to one address, one per destination port; counts the ones the kernel refused. */
const FLOW_OPENER = `
const dgram = require('node:dgram');
const [target, count] = process.argv.slice(2);
const s = dgram.createSocket('udp4');
s.on('error', () => undefined);
s.bind(0, async () => {
  let refused = 0, other = 0;
  for (let i = 0; i < Number(count); i++) {
    const err = await new Promise((resolve) => s.send('x', 1024 + i, target, resolve));
    if (err && err.code === 'EPERM') refused++; else if (err) other++;
  }
  console.log(JSON.stringify({ opened: Number(count), refused, other }));
  s.close();
});
`;

describe('node-initiated flows are dropped; the control plane keeps its own (real kernel)', function () {
  this.timeout(120_000);
  /** Server flags, mutable so the last tests can restart it with --allow-node-initiated. */
  const serverArgs: string[] = ['--path-check-interval-ms', '0'];
  const rig = clusterRig({ nodes: 2 }, { cluster: () => ({ extraServerArgs: serverArgs }) });
  let listener: ManagedProcess | undefined;
  let tunnel4 = '';
  let tunnel6 = '';

  const script = (name: string, text: string): string => {
    const file = path.join(rig.h.dir, name);
    writeFileSync(file, text);
    return file;
  };

  async function counters(ns: string, table: string): Promise<Record<string, number>> {
    const r = await rig.h.exec(ns, ['nft', '-j', 'list', 'counters', 'table', 'inet', table]);
    const out: Record<string, number> = {};
    for (const item of (JSON.parse(r.stdout) as { nftables: Array<{ counter?: { name: string; packets: number } }> })
      .nftables) {
      if (item.counter) out[item.counter.name] = item.counter.packets;
    }
    return out;
  }

  const peer = (status: DaemonStatus, n: number) => status.peers.find((p) => p.name === rig.h.nodeName(n))!;
  const nodeInitiated = (status: DaemonStatus, n: number): number =>
    peer(status, n).dropsByReason['node_initiated'] ?? 0;

  /** Everything that arrived from nodes where it must never arrive, and what node 1 sent. */
  async function arrivals(): Promise<{ cpInput: number; cpForward: number; atNode2: number; sent: number }> {
    const { h } = rig;
    const cp = await counters(h.ns.cp, 'nlprobe');
    const node2 = await counters(h.ns.node(2), 'nlprobe');
    const node1 = await counters(h.ns.node(1), 'nlprobe');
    return { cpInput: cp['to_cp']!, cpForward: cp['through_cp']!, atNode2: node2['from_node1']!, sent: node1['sent']! };
  }

  /** A TCP connection, a UDP datagram and two pings from node 1 to `addr`. */
  async function probe(addr: string, tcpPort = TCP_PORT): Promise<{ tcp: boolean; ping: boolean }> {
    const { h } = rig;
    const target = url('http', addr, tcpPort, '/');
    const tcp = await h.exec(h.ns.node(1), ['curl', '-sS', '-g', '--connect-timeout', '2', '--max-time', '3', target], {
      allowFail: true,
    });
    await h.exec(h.ns.node(1), ['bash', '-c', `echo probe > /dev/udp/${addr}/${UDP_PORT}`], { allowFail: true });
    const ping = await h.ping(h.ns.node(1), addr, { count: 2, timeoutS: 2 });
    return { tcp: tcp.code === 0 || /Empty reply|reset/i.test(tcp.stderr), ping };
  }

  /** Node 1 routes the other control-plane address and node 2's pod into its TUN itself (after each client start). */
  async function routeProbesIntoTun(): Promise<void> {
    const { h } = rig;
    for (const [dst, src] of [
      [`${CP_OTHER}/32`, h.nodeIP(1)],
      [`${CP_OTHER6}/128`, h.nodeIP6(1)],
      [`${h.podIP(2, 1)}/32`, h.nodeIP(1)],
      [`${h.podIP6(2, 1)}/128`, h.nodeIP6(1)],
    ] as const)
      await h.exec(h.ns.node(1), ['ip', 'route', 'replace', dst, 'dev', 'nl0', 'src', src]);
  }

  before(async function () {
    const { h } = rig;
    // A control plane that forwards, as Kubernetes control planes usually do.
    await h.exec(h.ns.cp, ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
    await h.exec(h.ns.cp, ['ip', 'addr', 'add', `${CP_OTHER}/32`, 'dev', 'lo']);
    await h.exec(h.ns.cp, ['ip', 'addr', 'add', `${CP_OTHER6}/128`, 'dev', 'lo', 'nodad']);
    // Where node-opened packets would land: the control plane's own stack (input) and its
    // forwarding path, node 2's TUN; and what node 1 sent into its TUN on flows it opened.
    await h.exec(h.ns.cp, ['nft', '-f', '-'], {
      input: `table inet nlprobe {
        counter to_cp {}
        counter through_cp {}
        chain input {
          type filter hook input priority 10; policy accept;
          iifname "nl0" ct direction original counter name to_cp
        }
        chain forward {
          type filter hook forward priority 10; policy accept;
          iifname "nl0" counter name through_cp
        }
      }`,
    });
    const node1 = h.nodeRoutes(1).map((route) => (route.includes(':') ? `ip6 saddr ${route}` : `ip saddr ${route}`));
    await h.exec(h.ns.node(2), ['nft', '-f', '-'], {
      input: `table inet nlprobe {
        counter from_node1 {}
        chain prerouting {
          type filter hook prerouting priority -300; policy accept;
          ${node1.map((match) => `iifname "nl0" ${match} counter name from_node1`).join('\n          ')}
        }
      }`,
    });
    await h.exec(h.ns.node(1), ['nft', '-f', '-'], {
      input: `table inet nlprobe {
        counter sent {}
        chain postrouting {
          type filter hook postrouting priority 10; policy accept;
          oifname "nl0" ct direction original counter name sent
        }
      }`,
    });
    listener = h.spawn(h.ns.cp, [process.execPath, script('listener.cjs', LISTENER)], { name: 'cp-listener' });
    await listener.waitForOutput('listener ready', 10_000);
    await rig.cluster.up();
    const status = await rig.cluster.status();
    tunnel4 = status.tunnelAddresses.find((a) => !a.includes(':'))!;
    tunnel6 = status.tunnelAddresses.find((a) => a.includes(':'))!;
    await routeProbesIntoTun();
  });

  /** `nodelink diagnose` on the control plane: its flow_filter check. */
  async function diagnoseFlowFilter(): Promise<{ status: string; detail: string }> {
    const r = await runCli(
      ['diagnose', '--side', 'control-plane', '--admin-socket', rig.cluster.serverSocket, '--json'],
      {
        ns: rig.h.ns.cp,
        timeoutMs: 30_000,
      },
    );
    const report = JSON.parse(r.stdout) as { checks: Array<{ id: string; status: string; detail: string }> };
    return report.checks.find((check) => check.id === 'flow_filter')!;
  }

  it('the server owns an nftables table for its TUN; status and diagnose say the filter is on', async function () {
    const { h } = rig;
    const table = await h.exec(h.ns.cp, ['nft', 'list', 'table', 'inet', TABLE]);
    expect(table.stdout).to.contain('ct direction reply ct state established,related accept');
    const status = await rig.cluster.status();
    expect(status.flowFilter).to.deep.equal({
      active: true,
      table: `inet ${TABLE}`,
      maxFlowsPerNode: MAX_FLOWS_PER_NODE,
    });
    const diagnosed = await diagnoseFlowFilter();
    expect(diagnosed.status).to.equal('pass');
    expect(diagnosed.detail).to.match(/^on: table inet nodelink_nl0 drops what nodes open/);
    // The listener works: the control plane's own connection to the other address is logged.
    const own = await h.exec(h.ns.cp, ['curl', '-sS', '--max-time', '2', `http://${CP_OTHER}:${TCP_PORT}/`], {
      allowFail: true,
    });
    expect(own.code).to.not.equal(0); // the listener hangs up at once
    await waitFor('the listener to log', () => listener!.output().includes(CP_OTHER), 3000);
  });

  it('without nft the server refuses to start, in one line naming the package and the flag', async function () {
    const { h } = rig;
    // A PATH with iproute2 but no nft.
    const bin = path.join(h.dir, 'bin-without-nft');
    mkdirSync(bin);
    symlinkSync((await h.exec(h.ns.cp, ['sh', '-c', 'command -v ip'])).stdout.trim(), path.join(bin, 'ip'));
    // No peers: their routes belong to the running server.
    const peers = path.join(h.dir, 'no-peers.json');
    writeFileSync(peers, '{"peers": []}\n');
    const args = ['--listen', `${h.cpAddress}:8444`, '--key', rig.cluster.serverKey.keyFile, '--peers', peers];
    const r = await h.exec(
      h.ns.cp,
      [
        'env',
        `PATH=${bin}`,
        process.execPath,
        CLI,
        'server',
        ...args,
        '--tunnel-cidr',
        '198.18.253.0/24',
        '--tun',
        'nlz',
        '--admin-socket',
        path.join(h.dir, 'no-nft.sock'),
      ],
      { allowFail: true },
    );
    expect(r.code).to.not.equal(0);
    expect(r.stderr.trim().split('\n'), r.stderr).to.have.length(1);
    expect(r.stderr).to.match(/nft is not installed.*install the nftables package, or run with --allow-node-initiated/);
    const link = await h.exec(h.ns.cp, ['ip', 'link', 'show', 'dev', 'nlz'], { allowFail: true });
    expect(link.code, 'its TUN is gone again').to.not.equal(0);
  });

  it('TCP, UDP and ping from a node to the tunnel address, another control-plane address and another node’s pod: none arrives, each counted', async function () {
    const { h } = rig;
    const before = await arrivals();
    const statusBefore = await rig.cluster.status();
    const targets: Array<[string, string, number]> = [
      ['server tunnel address', tunnel4, TCP_PORT],
      ['server tunnel address (v6)', tunnel6, TCP_PORT],
      ['another control-plane address', CP_OTHER, TCP_PORT],
      ['another control-plane address (v6)', CP_OTHER6, TCP_PORT],
      ["node 2's pod, forwarded", h.podIP(2, 1), 8080],
      ["node 2's pod, forwarded (v6)", h.podIP6(2, 1), 8080],
    ];
    for (const [what, addr, port] of targets) {
      const result = await probe(addr, port);
      expect(result, `${what} ${addr}`).to.deep.equal({ tcp: false, ping: false });
    }
    const after = await arrivals();
    const status = await rig.cluster.status();
    const counted = nodeInitiated(status, 1) - nodeInitiated(statusBefore, 1);
    const sent = after.sent - before.sent;
    console.log(
      `      node 1 sent ${sent} packets on flows it opened (TCP SYNs, UDP, echo requests, 6 targets); ` +
        `server counted ${counted} node_initiated; arrived: cp input ${after.cpInput - before.cpInput}, ` +
        `cp forward ${after.cpForward - before.cpForward}, node 2 ${after.atNode2 - before.atNode2}`,
    );
    expect(after.cpInput - before.cpInput, 'reached the control plane stack').to.equal(0);
    expect(after.cpForward - before.cpForward, 'forwarded by the control plane').to.equal(0);
    expect(after.atNode2 - before.atNode2, "arrived at node 2's TUN").to.equal(0);
    expect(sent, 'at least a SYN, a datagram and an echo request per target').to.be.at.least(3 * targets.length);
    expect(counted).to.equal(sent);
    expect(listener!.output()).to.not.match(/from (::ffff:)?(198\.19\.|fd00:19:)/);
    // Nodes 2's own count is untouched, and so is the table view of status.
    expect(nodeInitiated(status, 2)).to.equal(nodeInitiated(statusBefore, 2));
    const table = await runCli(['status', '--admin-socket', rig.cluster.serverSocket]);
    expect(table.stdout).to.match(/node-initiated flows: dropped \(nft table inet nodelink_nl0/);
    expect(table.stdout).to.match(new RegExp(`drops: .*${counted} node_initiated`));
  });

  it('logs the dropped flows, naming node, protocol, destination and port, a few per interval', async function () {
    const { h } = rig;
    await waitFor(
      'the server to log a dropped flow',
      () => /dropped a flow a node tried to open/.test(rig.cluster.server!.output()),
      12_000,
    );
    const lines = rig.cluster
      .server!.output()
      .split('\n')
      .filter((line) => line.includes('dropped a flow a node tried to open'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines.length).to.be.at.most(10 * 3); // at most 10 per 5 s poll, and the probes took < 15 s
    const tcp = lines.find((l) => l['destination'] === CP_OTHER && l['protocol'] === 'tcp');
    expect(tcp, JSON.stringify(lines)).to.include({ peer: 'node-1', source: h.nodeIP(1), port: TCP_PORT });
    const icmp = lines.find((l) => l['destination'] === tunnel4 && l['protocol'] === 'icmp');
    expect(icmp, JSON.stringify(lines)).to.include({ peer: 'node-1', port: null });
    const status = await rig.cluster.status();
    expect(nodeInitiated(status, 1)).to.be.greaterThan(0);
  });

  it('the control plane reaches kubelets and pods over IPv4 and IPv6, and 20 MB arrive intact', async function () {
    const { h } = rig;
    for (const n of [1, 2]) {
      for (const v6 of [false, true]) {
        const kubelet = await h.curl(h.ns.cp, h.kubeletURL(n, '/healthz', v6), { timeoutS: 5 });
        expect(kubelet.ok, `kubelet ${n} v6=${v6}: ${kubelet.error}`).to.equal(true);
        const pod = await h.curl(h.ns.cp, h.podURL(n, 1, '/', v6), { timeoutS: 5 });
        expect(pod.ok, `pod ${n} v6=${v6}: ${pod.error}`).to.equal(true);
        expect(await h.ping(h.ns.cp, v6 ? h.podIP6(n, 1) : h.podIP(n, 1))).to.equal(true);
      }
    }
    const size = 20 * 1024 * 1024;
    const down = await h.curl(h.ns.cp, h.podURL(1, 1, `/bytes/${size}`), { timeoutS: 40 });
    expect(down.ok, down.error).to.equal(true);
    expect(down.sha256).to.equal(expectedSha256(size));
    const body = path.join(h.dir, 'upload.bin');
    writeFileSync(body, expectedBytes(size));
    const up = await h.curl(h.ns.cp, h.podURL(2, 1, '/echo', true), {
      timeoutS: 40,
      args: ['-X', 'POST', '--data-binary', `@${body}`, '-H', 'Content-Type: application/octet-stream'],
    });
    expect(up.ok, up.error).to.equal(true);
    expect(up.sha256, 'the 20 MB echoed back over IPv6').to.equal(expectedSha256(size));
  });

  it('path MTU discovery works across a 1500-byte pod link (the node’s ICMP errors pass)', async function () {
    const { h } = rig;
    for (const [addr, headers, pattern] of [
      [h.podIP(1, 1), 28, /Frag needed and DF set \(mtu = 1500\)|message too long, mtu[= ]+1500/i],
      [h.podIP6(1, 1), 48, /Packet too big: mtu=1500|message too long, mtu[= ]+1500/i],
    ] as const) {
      const args = ['ping', '-n', '-c', '2', '-i', '0.3', '-W', '2', '-M', 'do', '-s', String(1500 - headers + 100)];
      const r = await h.exec(h.ns.cp, [...args, addr], { allowFail: true });
      expect(r.code).to.not.equal(0);
      expect(r.stdout + r.stderr, `${addr}`).to.match(pattern);
      const route = await h.exec(h.ns.cp, ['ip', 'route', 'get', addr]);
      expect(route.stdout, 'the control plane learned the path MTU').to.match(/mtu 1500/);
      const fits = await h.exec(h.ns.cp, [...args.slice(0, -1), String(1500 - headers), addr], { allowFail: true });
      expect(fits.code, `${addr} at 1500 bytes: ${fits.stdout}`).to.equal(0);
    }
  });

  it("a node's forged 'fragmentation needed' about another node's traffic is dropped; about its own it is not", async function () {
    const { h } = rig;
    // A UDP flow from the control plane to each node (the sender's socket must exist: the
    // kernel applies a UDP path MTU through it), tracked by conntrack.
    const sender = h.spawn(
      h.ns.cp,
      [process.execPath, script('udp-sender.cjs', UDP_SENDER), '40000', '10', h.nodeIP(1), h.nodeIP(2)],
      { name: 'cp-udp-sender' },
    );
    await sender.waitForOutput('sending', 5000);
    await h.exec(h.ns.cp, ['ip', 'route', 'flush', 'cache']);
    const before = peer(await rig.cluster.status(), 1).dropsByReason['foreign_icmp_error'] ?? 0;
    await rig.cluster.clients.get(1)!.stop(); // the attacker takes node 1's key and place
    try {
      const r = await h.exec(
        h.ns.node(1),
        [
          process.execPath,
          ATTACKER,
          'ptb',
          '--target',
          h.serverEndpoint,
          '--server-key',
          rig.cluster.serverKey.publicKey,
          '--key',
          rig.cluster.nodeKeys.get(1)!.keyFile,
          '--name',
          h.nodeName(1),
          '--routes',
          h.nodeRoutes(1).join(','),
          '--own',
          h.nodeIP(1),
          '--quote',
          `${tunnel4}:40000>${h.nodeIP(2)}:9;${tunnel4}:40000>${h.nodeIP(1)}:9`,
          '--count',
          '3',
        ],
        { timeoutMs: 30_000 },
      );
      expect(JSON.parse(r.stdout.trim())).to.include({ ptbSent: 6 });
      const foreign = (peer(await rig.cluster.status(), 1).dropsByReason['foreign_icmp_error'] ?? 0) - before;
      const toB = await h.exec(h.ns.cp, ['ip', 'route', 'get', h.nodeIP(2)]);
      const toA = await h.exec(h.ns.cp, ['ip', 'route', 'get', h.nodeIP(1)]);
      console.log(`      foreign_icmp_error ${foreign}; cp → node 2: ${toB.stdout.trim().replace(/\s+/g, ' ')}`);
      expect(foreign).to.equal(3);
      expect(toB.stdout, "node 2's path MTU is untouched").to.not.match(/mtu 552/);
      expect(toA.stdout, "node 1's own error was applied (the kernel would have acted)").to.match(/mtu 552/);
    } finally {
      await sender.stop();
      await h.exec(h.ns.cp, ['ip', 'route', 'flush', 'cache']);
      rig.cluster.startClient(1);
      await rig.cluster.waitConnected([1]);
    }
  });

  it('a stream the control plane opened before a server restart goes on after it', async function () {
    const { h } = rig;
    const seconds = 16;
    const stream = h.spawn(
      h.ns.cp,
      [process.execPath, script('streamer.cjs', STREAMER), h.podIP(1, 1), '8080', String(seconds)],
      { name: 'cp-stream' },
    );
    await stream.waitForOutput('stream open', 5000);
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const tracked = await h.exec(h.ns.cp, ['conntrack', '-L', '-p', 'tcp', '--dst', h.podIP(1, 1), '--dport', '8080']);
    expect(tracked.stdout).to.match(/ESTABLISHED/);
    const down = Date.now();
    await rig.cluster.server!.stop('SIGTERM', 5000);
    const gone = await h.exec(h.ns.cp, ['nft', 'list', 'table', 'inet', TABLE], { allowFail: true });
    expect(gone.code, 'the table is deleted at stop').to.not.equal(0);
    const still = await h.exec(h.ns.cp, ['conntrack', '-L', '-p', 'tcp', '--dst', h.podIP(1, 1), '--dport', '8080']);
    expect(still.stdout, 'conntrack keeps the flow while no server runs').to.match(/ESTABLISHED/);
    await rig.cluster.startServer();
    await rig.cluster.waitConnected([1, 2]);
    const backMs = Date.now() - down;
    const exit = await stream.exited;
    const result = JSON.parse(stream.output().trim().split('\n').pop()!) as Record<string, number>;
    console.log(`      stream across a restart: ${JSON.stringify(result)}; server down → all nodes back ${backMs} ms`);
    expect(exit.code, stream.output()).to.equal(0);
    expect(result['sent']).to.be.greaterThan(100);
    expect(result['echoed']).to.equal(result['sent']);
    expect(result['outOfOrder']).to.equal(0);
    expect(result['maxGapMs'], 'it stalled during the restart, then resumed').to.be.below(seconds * 1000);
  });

  it("one node's flows are capped; the other node still gets new ones", async function () {
    const { h } = rig;
    const opened = MAX_FLOWS_PER_NODE + 200;
    const r = await h.exec(
      h.ns.cp,
      [process.execPath, script('flows.cjs', FLOW_OPENER), h.podIP(2, 1), String(opened)],
      {
        timeoutMs: 60_000,
      },
    );
    const result = JSON.parse(r.stdout.trim()) as { refused: number; other: number };
    const tracked = await h.exec(h.ns.cp, ['conntrack', '-C']);
    console.log(
      `      ${opened} new UDP flows to node 2: ${result.refused} refused (EPERM); ${tracked.stdout.trim()} tracked in cp`,
    );
    expect(result.other).to.equal(0);
    expect(result.refused, 'every flow beyond the cap').to.be.within(
      opened - MAX_FLOWS_PER_NODE,
      opened - MAX_FLOWS_PER_NODE + 50,
    );
    const kubelet = await h.curl(h.ns.cp, h.kubeletURL(1), { timeoutS: 5 });
    expect(kubelet.ok, `node 1 still reachable: ${kubelet.error}`).to.equal(true);
  });

  it('with --allow-node-initiated the same probes do arrive (the filter is what stopped them)', async function () {
    const { h } = rig;
    await rig.cluster.server!.stop('SIGTERM', 5000);
    serverArgs.push('--allow-node-initiated');
    await rig.cluster.startServer();
    await rig.cluster.waitConnected([1, 2]);
    const gone = await h.exec(h.ns.cp, ['nft', 'list', 'table', 'inet', TABLE], { allowFail: true });
    expect(gone.code, 'no table under --allow-node-initiated').to.not.equal(0);
    expect((await rig.cluster.status()).flowFilter).to.include({ active: false });
    expect((await diagnoseFlowFilter()).detail).to.match(/^OFF \(--allow-node-initiated\)/);
    await routeProbesIntoTun();
    const before = await arrivals();
    const result = await probe(CP_OTHER);
    expect(result).to.deep.equal({ tcp: true, ping: true });
    expect((await probe(tunnel4)).ping).to.equal(true);
    await probe(h.podIP(2, 1), 8080);
    const after = await arrivals();
    expect(after.cpInput - before.cpInput).to.be.greaterThan(0);
    expect(
      after.atNode2 - before.atNode2,
      'node 1 reached node 2 through the forwarding control plane',
    ).to.be.greaterThan(0);
    expect(listener!.output()).to.match(new RegExp(`tcp from (::ffff:)?${h.nodeIP(1)} `));
  });

  leavesNothingBehind(rig);
});
