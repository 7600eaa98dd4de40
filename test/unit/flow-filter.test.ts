// The flow filter's pure parts: the ICMP error check the server applies to every packet from a
// node, the nftables table it renders, and how status learns the kernel's counts. The kernel side
// (what the table actually drops) is tested in namespaces: test/netns/node-initiated.test.ts.

import { expect } from 'chai';
import { encodeKey } from '../../src/auth/index.js';
import { LinkMetrics, type DaemonStatus, type PeerStatus } from '../../src/admin/index.js';
import { runChecks } from '../../src/cli/diagnose/checks.js';
import { controlPlaneChecks } from '../../src/cli/diagnose/control-plane.js';
import {
  DEFAULT_FLOW_FILTER_LIMITS,
  FlowFilter,
  droppedFlow,
  flowFilterTable,
  peerFilterId,
  renderFlowFilter,
  renderPeerUpdate,
} from '../../src/link-server/index.js';
import { FrameType, encodeFrame } from '../../src/protocol/index.js';
import { Prefix, PrefixTable, icmpErrorQuotesPeer, internetChecksum } from '../../src/routing/index.js';
import { APISERVER, Rigs, newPair, twoNodes } from '../support/link-rig.js';
import { ipv4, ipv6 } from '../support/packets.js';
import { waitFor } from '../support/wait.js';
import { idlePeerStatus, serverStatus } from '../support/status.js';

const A_ROUTES = ['198.19.0.11/32', '198.19.1.0/24', 'fd00:19::b/128', 'fd00:19:1::/64'];
const B_ROUTES = ['198.19.0.12/32', '198.19.2.0/24', 'fd00:19::c/128'];
const CP = '198.18.255.1';
const CP6 = 'fd00:18:ff::1';

/** An ICMPv4 error of `type`/`code` from `src` to the quoted packet's source, quoting `quoted` (header + 8 bytes). */
function icmp4Error(src: string, quoted: Buffer, type = 3, code = 4): Buffer {
  const quote = quoted.subarray(0, Math.min(quoted.length, 28));
  const body = Buffer.alloc(8 + quote.length);
  body[0] = type;
  body[1] = code;
  body.writeUInt16BE(1400, 6);
  body.set(quote, 8);
  body.writeUInt16BE(internetChecksum(body, 0, body.length), 2);
  const dst = `${quoted[12]}.${quoted[13]}.${quoted[14]}.${quoted[15]}`;
  return ipv4(src, dst, body, 1);
}

/** An ICMPv6 error (packet too big by default) from `src` to `dst`, quoting `quoted`. */
function icmp6Error(src: string, dst: string, quoted: Buffer, type = 2): Buffer {
  const body = Buffer.alloc(8 + quoted.length);
  body[0] = type;
  body.writeUInt32BE(1280, 4);
  body.set(quoted, 8);
  return ipv6(src, dst, body, 58);
}

function ownedBy(routes: readonly string[]) {
  const table = new PrefixTable<true>();
  for (const route of routes) table.insert(Prefix.parse(route), true);
  return (family: 4 | 6, bytes: Uint8Array, offset: number): boolean => table.lookup(family, bytes, offset) === true;
}

describe('flow filter: ICMP errors from a node speak only about that node', function () {
  const isA = ownedBy(A_ROUTES);

  it('passes an error about a packet sent to the node itself, IPv4 and IPv6', function () {
    expect(icmpErrorQuotesPeer(icmp4Error('198.19.0.11', ipv4(CP, '198.19.1.5')), isA)).to.equal(true);
    expect(icmpErrorQuotesPeer(icmp4Error('198.19.0.11', ipv4(CP, '198.19.0.11'), 11, 0), isA)).to.equal(true);
    expect(icmpErrorQuotesPeer(icmp6Error('fd00:19::b', CP6, ipv6(CP6, 'fd00:19:1::5')), isA)).to.equal(true);
  });

  it('refuses an error about a packet sent to another node (path MTU, unreachable, time exceeded, redirect)', function () {
    for (const [type, code] of [
      [3, 4],
      [3, 3],
      [11, 0],
      [12, 0],
      [5, 1],
    ] as const)
      expect(
        icmpErrorQuotesPeer(icmp4Error('198.19.0.11', ipv4(CP, '198.19.0.12'), type, code), isA),
        `${type}/${code}`,
      ).to.equal(false);
    for (const type of [1, 2, 3, 4])
      expect(
        icmpErrorQuotesPeer(icmp6Error('fd00:19::b', CP6, ipv6(CP6, 'fd00:19::c'), type), isA),
        `v6 ${type}`,
      ).to.equal(false);
  });

  it('refuses an ICMPv6 error behind an extension header too', function () {
    const quoted = ipv6(CP6, 'fd00:19::c');
    const icmp = Buffer.alloc(8 + quoted.length);
    icmp[0] = 2;
    icmp.set(quoted, 8);
    const hopByHop = Buffer.alloc(8);
    hopByHop[0] = 58; // next header: ICMPv6; length 0 = 8 bytes
    const packet = ipv6('fd00:19::b', CP6, Buffer.concat([hopByHop, icmp]), 0);
    expect(icmpErrorQuotesPeer(packet, isA)).to.equal(false);
    icmp.set(ipv6(CP6, 'fd00:19:1::9'), 8);
    expect(icmpErrorQuotesPeer(ipv6('fd00:19::b', CP6, Buffer.concat([hopByHop, icmp]), 0), isA)).to.equal(true);
  });

  it('refuses an error whose quote is too short to name its destination', function () {
    const short = icmp4Error('198.19.0.11', ipv4(CP, '198.19.1.5')).subarray(0, 20 + 8 + 12);
    const packet = ipv4('198.19.0.11', CP, short.subarray(20), 1);
    expect(icmpErrorQuotesPeer(packet, isA)).to.equal(false);
    const short6 = icmp6Error('fd00:19::b', CP6, ipv6(CP6, 'fd00:19:1::5').subarray(0, 30));
    expect(icmpErrorQuotesPeer(short6, isA)).to.equal(false);
  });

  it('leaves everything that is not an ICMP error alone', function () {
    const echoReply = Buffer.alloc(8);
    expect(icmpErrorQuotesPeer(ipv4('198.19.0.11', CP, echoReply, 1), isA)).to.equal(true);
    expect(icmpErrorQuotesPeer(ipv4('198.19.0.11', CP), isA)).to.equal(true);
    const echoReply6 = Buffer.alloc(8);
    echoReply6[0] = 129;
    expect(icmpErrorQuotesPeer(ipv6('fd00:19::b', CP6, echoReply6, 58), isA)).to.equal(true);
    expect(icmpErrorQuotesPeer(ipv6('fd00:19::b', CP6), isA)).to.equal(true);
    // A non-first fragment carries no ICMP header to read.
    const fragment = icmp4Error('198.19.0.11', ipv4(CP, '198.19.0.12'));
    fragment.writeUInt16BE(0x0010, 6);
    expect(icmpErrorQuotesPeer(fragment, isA)).to.equal(true);
  });
});

describe('flow filter: the server drops a forged ICMP error about another node', function () {
  this.timeout(20_000);
  const rigs = new Rigs();
  const { serverPair, pairA, registry } = twoNodes(A_ROUTES, B_ROUTES);

  afterEach(() => rigs.stopAll());

  it('foreign_icmp_error for a "fragmentation needed" quoting the control plane → node-b; its own passes', async function () {
    const s = await rigs.server({ registry, keyPair: serverPair });
    const raw = await rigs.welcomed(s.port, pairA, { name: 'node-a', routes: A_ROUTES });
    const forged = icmp4Error('198.19.0.11', ipv4(APISERVER, '198.19.0.12'));
    const forged6 = icmp6Error('fd00:19::b', CP6, ipv6(CP6, 'fd00:19::c'));
    const own = icmp4Error('198.19.0.11', ipv4(APISERVER, '198.19.1.5'));
    for (const packet of [forged, forged6, own]) raw.socket.write(encodeFrame(FrameType.Data, packet));
    expect(await s.tun.waitForWritten(1)).to.deep.equal([own]);
    await waitFor('foreign_icmp_error', () => s.peer('node-a').dropsByReason['foreign_icmp_error'] === 2);
    expect(s.tun.written).to.have.length(1);
  });
});

describe('flow filter: the nftables table', function () {
  const peer = (name: string, key: string, routes: string[]) => ({
    name,
    publicKeyText: key,
    allowedIPs: routes.map((r) => Prefix.parse(r)),
  });
  const a = peer('node-a', encodeKey(newPair().publicKey), [...A_ROUTES, '198.19.1.128/25']);
  const b = peer('node-b', encodeKey(newPair().publicKey), B_ROUTES);

  it('is named after the TUN, and two TUN names never share a table', function () {
    expect(flowFilterTable('nl0')).to.equal('nodelink_nl0');
    const names = ['nl-0', 'nl_0', 'nl.0', 'nl_2d0', 'nl__0'].map(flowFilterTable);
    expect(new Set(names).size).to.equal(names.length);
    for (const name of names) expect(name).to.match(/^[A-Za-z_][A-Za-z0-9_]*$/);
  });

  it('replaces the whole table in one transaction: replies pass, the rest is counted per peer and dropped', function () {
    const text = renderFlowFilter('nl0', [a, b], DEFAULT_FLOW_FILTER_LIMITS);
    const lines = text.split('\n').map((line) => line.trim());
    expect(lines.slice(0, 3)).to.deep.equal([
      'add table inet nodelink_nl0',
      'delete table inet nodelink_nl0',
      'table inet nodelink_nl0 {',
    ]);
    // Replies leave the prerouting chain first; whatever else came from the TUN is dropped.
    const prerouting = lines.slice(lines.indexOf('chain prerouting {') + 1, lines.indexOf('chain from_nodes {'));
    expect(prerouting).to.deep.equal([
      'type filter hook prerouting priority filter; policy accept;',
      'ct direction reply ct state established,related accept',
      'iifname "nl0" jump from_nodes',
      '}',
    ]);
    const chain = lines.slice(lines.indexOf('chain from_nodes {') + 1, lines.indexOf('counter drop') + 1);
    expect(chain.filter((line) => line.includes('accept'))).to.deep.equal([]);
    expect(chain.at(-1)).to.equal('counter drop');
    expect(chain.filter((line) => line.startsWith('counter name'))).to.deep.equal([
      'counter name ip saddr map @peer_counters_v4',
      'counter name ip6 saddr map @peer_counters_v6',
    ]);
    expect(lines).to.include('ct state new oifname "nl0" jump to_nodes');
    const idA = peerFilterId(a.publicKeyText);
    // A prefix inside another of the same peer is left out: interval maps refuse overlaps.
    expect(text).to.contain(
      `add element inet nodelink_nl0 peer_counters_v4 { 198.19.0.11/32 : "peer_${idA}", 198.19.1.0/24 : "peer_${idA}", `,
    );
    expect(text).to.not.contain('198.19.1.128/25');
    expect(text).to.contain(
      `add rule inet nodelink_nl0 cap_${idA} add @node_flows { "${idA}" ct count over ${DEFAULT_FLOW_FILTER_LIMITS.maxFlowsPerNode} } counter drop`,
    );
    // Counters are declared before the maps that name them.
    expect(text.indexOf(`counter peer_${idA} {}`)).to.be.below(text.indexOf('map peer_counters_v4'));
  });

  it('a reload rewrites the maps and removes what a removed peer had', function () {
    const idB = peerFilterId(b.publicKeyText);
    const text = renderPeerUpdate('nl0', [a], new Set([idB]), DEFAULT_FLOW_FILTER_LIMITS);
    expect(text).to.not.contain('delete table');
    expect(text).to.contain('flush map inet nodelink_nl0 peer_counters_v4');
    expect(text).to.contain(`delete counter inet nodelink_nl0 peer_${idB}`);
    expect(text).to.contain(`delete chain inet nodelink_nl0 cap_${idB}`);
    expect(text).to.not.contain('198.19.2.0/24');
  });

  it('peer ids are stable, short and distinct', function () {
    expect(peerFilterId(a.publicKeyText)).to.match(/^[0-9a-f]{12}$/);
    expect(peerFilterId(a.publicKeyText)).to.equal(peerFilterId(a.publicKeyText));
    expect(peerFilterId(a.publicKeyText)).to.not.equal(peerFilterId(b.publicKeyText));
  });

  it('reads dropped flows from the set: ports for TCP and UDP, none for ICMP', function () {
    expect(droppedFlow({ concat: ['198.19.0.11', 'tcp', '198.18.7.1', 7070] })).to.deep.equal({
      source: '198.19.0.11',
      protocol: 'tcp',
      destination: '198.18.7.1',
      port: 7070,
    });
    expect(droppedFlow({ concat: ['198.19.0.11', 'icmp', '198.18.255.1', 0] })).to.include({ port: null });
    expect(droppedFlow({ concat: ['fd00:19::b', 47, 'fd00:18::2', 0] })).to.include({
      protocol: 'proto 47',
      port: null,
    });
    expect(droppedFlow('198.19.0.11')).to.equal(undefined);
  });
});

describe('flow filter: status', function () {
  it('adds node_initiated to the drops of the peers the kernel counted', function () {
    const filter = Object.create(FlowFilter.prototype) as FlowFilter;
    const key = encodeKey(newPair().publicKey);
    (filter as unknown as { counts: Map<string, number> }).counts = new Map([[peerFilterId(key), 7]]);
    const peer = (publicKey: string): PeerStatus =>
      ({
        name: publicKey.slice(0, 4),
        publicKey,
        drops: 1,
        dropsByReason: { spoofed_source: 1 },
      }) as unknown as PeerStatus;
    const status = { peers: [peer(key), peer(encodeKey(newPair().publicKey))] } as DaemonStatus;
    filter.annotate(status);
    expect(status.peers[0]).to.include({ drops: 8 });
    expect(status.peers[0]!.dropsByReason).to.deep.equal({ spoofed_source: 1, node_initiated: 7 });
    expect(status.peers[1]).to.include({ drops: 1 });
    expect(status.peers[1]!.dropsByReason).to.deep.equal({ spoofed_source: 1 });
  });
});

describe('flow filter: metrics', function () {
  it('read the kernel counters before each scrape, and show node_initiated per peer', async function () {
    const peer = idlePeerStatus({ publicKey: 'K' });
    const status = serverStatus({ peers: [peer] });
    let reads = 0;
    const metrics = new LinkMetrics({
      role: 'server',
      version: 'test',
      processMetrics: false,
      status: () => status,
      refresh: async () => {
        reads++;
        peer.dropsByReason = { node_initiated: 5 * reads };
      },
    });
    expect(await metrics.text()).to.contain('nodelink_dropped_packets_total{peer="node-1",reason="node_initiated"} 5');
    expect(await metrics.text()).to.contain('nodelink_dropped_packets_total{peer="node-1",reason="node_initiated"} 10');
  });
});

describe('flow filter: diagnose on the control plane', function () {
  const base = {
    role: 'server',
    tun: 'nl0',
    tunnelAddress: '198.18.255.1',
    tunnelAddresses: ['198.18.255.1'],
    listen: '198.18.0.2:8443',
    startedAt: new Date().toISOString(),
    dropsByReason: {},
    peers: [],
  } satisfies DaemonStatus;

  async function flowFilterCheck(status: DaemonStatus) {
    const ctx = { daemon: { socket: 's', status }, kubeletPort: 1, timeoutMs: 1 };
    const table = controlPlaneChecks(ctx).filter((check) => ['server', 'flow_filter'].includes(check.id));
    return (await runChecks('control-plane', table, ctx)).checks.find((check) => check.id === 'flow_filter')!;
  }

  it('says so when the filter is deliberately off', async function () {
    const check = await flowFilterCheck({ ...base, flowFilter: { active: false, table: null, maxFlowsPerNode: null } });
    expect(check.status).to.equal('pass');
    expect(check.detail).to.match(/^OFF \(--allow-node-initiated\): nodes may open connections/);
  });

  it('skips a server that does not report a filter', async function () {
    expect(await flowFilterCheck(base)).to.include({ status: 'skip' });
  });
});
