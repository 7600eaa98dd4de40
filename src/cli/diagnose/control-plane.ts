import type { DaemonStatus, PeerStatus } from '../../admin/index.js';
import { Prefix, formatEndpoint, nodeIp } from '../../routing/index.js';
import { flowFilterTable } from '../../link-server/flow-filter.js';
import { NFT_MISSING, TunError, deviceUp, nftJson, routeTableFor, serverRouteCommand } from '../../tun/index.js';
import {
  checkApiserverFlags,
  findApiserverProcesses,
  readAsProcess,
  type ApiserverProcess,
} from '../apiserver-flags.js';
import { parseEndpoint } from '../config.js';
import { fail, pass, skip, type CheckDefinition, type LocalDaemon, type Outcome } from './checks.js';
import { describeConnectError, ping, routeDevice, sampleAddress, tcpConnect, wrongWay } from './probes.js';

/**
 * The control-plane side of `nodelink diagnose`: the server runs, its port answers, its TUN is
 * up, its flow filter is in place (or deliberately off), and for each peer in its peers file:
 * connected, the kernel routes its allowedIPs into the TUN, and its node IP and pod CIDRs answer
 * through the link. The server's own status (asked on its admin socket) is the source of all of
 * it. Last, where a kube-apiserver in this network namespace is visible, the flags it needs for
 * nodelink (apiserver-flags.ts).
 */

export interface ControlPlaneContext {
  readonly daemon: LocalDaemon;
  readonly kubeletPort: number;
  readonly timeoutMs: number;
}

/** The server's status; only called by checks that run after `server` passed. */
const server = (ctx: ControlPlaneContext): DaemonStatus => ctx.daemon.status!;

function serverCheck(ctx: ControlPlaneContext): Outcome {
  const { socket, status, error } = ctx.daemon;
  if (!status)
    return fail(
      error ?? `no nodelink server answers on ${socket}`,
      'start nodelink server on the control plane (check its logs for why it exits), or pass --admin-socket',
    );
  if (status.role !== 'server')
    return fail(
      `${socket} belongs to a nodelink ${status.role}`,
      "use --side node, or pass the server's --admin-socket",
    );
  const connected = status.peers.filter((peer) => peer.connected).length;
  return pass(`listening on ${status.listen ?? '?'}, ${connected} of ${status.peers.length} peers connected`);
}

async function listeningCheck(ctx: ControlPlaneContext): Promise<Outcome> {
  const { listen } = server(ctx);
  if (!listen) return skip('the server reports no listen address');
  const endpoint = parseEndpoint(listen, 'listen');
  // A wildcard listener answers on loopback.
  const host = endpoint.host === '0.0.0.0' ? '127.0.0.1' : endpoint.host === '::' ? '::1' : endpoint.host;
  const target = formatEndpoint({ host, port: endpoint.port });
  const tcp = await tcpConnect(host, endpoint.port, ctx.timeoutMs);
  if (tcp.ok) return pass(`${target} accepts connections`);
  return fail(`${target}: ${describeConnectError(tcp.code, ctx.timeoutMs)}`, 'restart nodelink server; check --listen');
}

async function tunCheck(ctx: ControlPlaneContext): Promise<Outcome> {
  const { tun } = server(ctx);
  const device = await deviceUp(tun);
  if (device.ok) return pass(device.detail);
  return fail(device.detail, `restart nodelink server: it creates ${tun}`);
}

/**
 * Whether packets from nodes are held to flows the control plane opened: the server says so in
 * its status, and the kernel must have its table (an operator's `nft flush ruleset` removes it).
 */
async function flowFilterCheck(ctx: ControlPlaneContext): Promise<Outcome> {
  const { flowFilter, tun, peers } = server(ctx);
  if (!flowFilter) return skip('this server does not report a flow filter (an older nodelink)');
  if (!flowFilter.active)
    return pass(
      'OFF (--allow-node-initiated): nodes may open connections to the control plane and, through it, to other nodes',
    );
  const table = flowFilterTable(tun);
  try {
    const items = await nftJson(['list', 'chain', 'inet', table, 'from_nodes']);
    if (!items.some((item) => item.chain?.name === 'from_nodes')) throw new Error('no chain');
  } catch (err) {
    if (err instanceof TunError && err.code === NFT_MISSING) return skip('nft is not installed here');
    return fail(
      `the server filters, but the kernel has no chain from_nodes in table inet ${table}: flows nodes open reach the control plane`,
      `restart nodelink server: it installs the table at start (check: nft list table inet ${table})`,
    );
  }
  const dropped = peers.reduce((sum, peer) => sum + (peer.dropsByReason['node_initiated'] ?? 0), 0);
  return pass(
    `on: table inet ${table} drops what nodes open (${dropped} packets so far), at most ${flowFilter.maxFlowsPerNode} tracked flows per node`,
  );
}

/** One peer's checks: ids `peer:NAME:…`, titles `NAME: …`. */
function peerChecks(peer: PeerStatus, tun: string, listen: string | undefined): CheckDefinition<ControlPlaneContext>[] {
  const id = (what: string): string => `peer:${peer.name}:${what}`;
  const announced = peer.routes.map((text) => Prefix.parse(text));
  const pods = announced.filter((route) => route.length < route.bits);
  const reachable = [id('connected'), id('routes')];
  return [
    {
      id: id('connected'),
      title: `${peer.name}: connected`,
      after: ['server'],
      run() {
        if (!peer.connected)
          return fail(
            `not connected${peer.lastError ? ` (last: ${peer.lastError})` : ''}`,
            `run \`nodelink diagnose\` on ${peer.name}: is its nodelink client running, and can it reach ${listen ?? 'the server'}?`,
          );
        const rtt = peer.lastPongMs !== null ? `, rtt ${peer.lastPongMs.toFixed(1)} ms` : '';
        const path =
          peer.path && peer.path.state !== 'unknown'
            ? `; path check ${peer.path.state}${peer.path.error ? ` (${peer.path.error})` : ''}`
            : '';
        return pass(`from ${peer.endpoint ?? '?'} since ${peer.connectedSince ?? '?'}${rtt}${path}`);
      },
    },
    {
      id: id('routes'),
      title: `${peer.name}: kernel routes into ${tun}`,
      after: ['tun'],
      async run(ctx) {
        const wrong: Array<{ cidr: string; how: string }> = [];
        for (const text of peer.allowedIPs ?? []) {
          const route = await routeDevice(sampleAddress(Prefix.parse(text)));
          if (route.dev !== tun) wrong.push({ cidr: text, how: wrongWay(route) });
        }
        if (wrong.length === 0) return pass(`${(peer.allowedIPs ?? []).join(', ')} → ${tun}`);
        const source = (cidr: string): string | undefined => {
          const family = Prefix.parse(cidr).family;
          return server(ctx).tunnelAddresses.find((address) => address.includes(':') === (family === 6));
        };
        return fail(
          `MISSING route: ${wrong.map((w) => `${w.cidr} goes ${w.how}`).join('; ')}, not ${tun} — the apiserver's packets for it never reach the link`,
          `${wrong.map((w) => `ip ${serverRouteCommand('replace', w.cidr, tun, source(w.cidr), { table: routeTableFor(server(ctx).tun) })}`).join(' && ')} (nodelink server installs these at start: restarting it also fixes it)`,
        );
      },
    },
    {
      id: id('node_ip'),
      title: `${peer.name}: node IP reachable through the link`,
      after: reachable,
      async run(ctx) {
        const node = nodeIp(announced);
        if (!node) return skip('the node announced no /32 or /128');
        const target = formatEndpoint({ host: node.address, port: ctx.kubeletPort });
        const tcp = await tcpConnect(node.address, ctx.kubeletPort, ctx.timeoutMs);
        // A refusal is an answer from the node's kernel: the path works, kubelet is not there.
        if (tcp.ok) return pass(`${target} answered in ${tcp.ms.toFixed(1)} ms`);
        if (tcp.code === 'ECONNREFUSED') return pass(`${target} refused (the node answered; kubelet is not listening)`);
        return fail(
          `${target}: ${describeConnectError(tcp.code, ctx.timeoutMs)}`,
          `the session is up but the node does not answer through it: run \`nodelink diagnose\` on ${peer.name} (routes, rp_filter, firewall)`,
        );
      },
    },
    ...pods.map((pod): CheckDefinition<ControlPlaneContext> => ({
      id: id(`pod:${pod}`),
      title: `${peer.name}: pod CIDR ${pod} reachable`,
      after: reachable,
      async run(ctx) {
        const target = pod.firstHost();
        const echo = await ping(target, ctx.timeoutMs);
        if (echo.missing) return skip('ping is not installed');
        if (echo.ok) return pass(`ping ${target}: ${echo.detail}`);
        return fail(
          `ping ${target} (first address of the pod CIDR): ${echo.detail}`,
          `run \`nodelink diagnose\` on ${peer.name} (ip_forward, rp_filter, the pod bridge)`,
        );
      },
    })),
  ];
}

const APISERVER_FLAGS = ['kubelet-preferred-address-types', 'enable-aggregator-routing', 'egress-selector-config-file'];

/** kube-apiserver's checks: found (or skipped, saying where to run diagnose), then one per flag. */
function apiserverChecks(procRoot: string): CheckDefinition<ControlPlaneContext>[] {
  let found: ApiserverProcess | undefined;
  return [
    {
      id: 'apiserver',
      title: 'kube-apiserver visible',
      run() {
        found = findApiserverProcesses(procRoot)[0];
        if (!found)
          return skip(
            'no kube-apiserver process in this network namespace is visible here: run diagnose on its host, or in its pod with shareProcessNamespace',
          );
        return pass(`pid ${found.pid}`);
      },
    },
    ...APISERVER_FLAGS.map((flag): CheckDefinition<ControlPlaneContext> => ({
      id: `apiserver:${flag}`,
      title: `kube-apiserver --${flag}`,
      after: ['apiserver'],
      run() {
        const process = found!;
        const check = checkApiserverFlags(process.argv, (path) => readAsProcess(process.pid, path, procRoot)).find(
          (c) => c.flag === flag,
        )!;
        return check.ok ? pass(check.detail) : fail(check.detail, check.fix!);
      },
    })),
  ];
}

/**
 * The control plane's checks, in the order they run and print: the server's, each peer's, then
 * kube-apiserver's flags (`procRoot` is /proc but in tests).
 */
export function controlPlaneChecks(
  ctx: ControlPlaneContext,
  procRoot = '/proc',
): CheckDefinition<ControlPlaneContext>[] {
  const status = ctx.daemon.status?.role === 'server' ? ctx.daemon.status : undefined;
  return [
    { id: 'server', title: 'nodelink server running', run: serverCheck },
    { id: 'listening', title: 'server port answers', after: ['server'], run: listeningCheck },
    { id: 'tun', title: 'TUN device up', after: ['server'], run: tunCheck },
    { id: 'flow_filter', title: 'node-initiated flows dropped', after: ['server'], run: flowFilterCheck },
    // With --workers, a node's routes go into the TUN of the worker holding its session.
    ...(status?.peers ?? []).flatMap((peer) =>
      peerChecks(peer, status!.workers?.find((w) => w.index === peer.worker)?.tun ?? status!.tun, status!.listen),
    ),
    ...apiserverChecks(procRoot),
  ];
}
