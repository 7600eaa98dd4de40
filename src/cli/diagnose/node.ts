import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { DaemonStatus, PeerStatus } from '../../admin/index.js';
import { decodeKey, encodeKey, readKeyFile, type KeyPair } from '../../auth/index.js';
import { userMessage } from '../../errors.js';
import { probeHandshake, type ProbeResult } from '../../link-client/probe.js';
import { readCaFile, type ServerTrust } from '../../link-client/trust.js';
import { Prefix, formatEndpoint, nodeIp } from '../../routing/index.js';
import { deviceUp, nodeRouteCommand } from '../../tun/index.js';
import { parseEndpoint, type Endpoint } from '../config.js';
import { FORWARDING_SYSCTL } from '../run-client.js';
import { fail, pass, skip, type CheckDefinition, type LocalDaemon, type Outcome } from './checks.js';
import { describeConnectError, ping, readSysctl, routeDevice, sampleAddress, tcpConnect, wrongWay } from './probes.js';

/**
 * The node side of `nodelink diagnose`: from this node's own settings through the server's
 * port, TLS and trust (decided by the client's own trust code, so it accepts exactly what the
 * client accepts), this node's authorization, then the local plumbing the control plane's
 * packets cross (TUN, routes, forwarding, rp_filter), a ping through the tunnel, kubelet, and
 * last the running client, whose failure is a symptom the checks above name the cause of.
 */

/** What the flags (or config file) say; anything missing is asked of the running client. */
export interface NodeInput {
  readonly server?: Endpoint;
  readonly serverKey?: string;
  readonly caFile?: string;
  readonly serverName?: string;
  readonly keyFile?: string;
  readonly name?: string;
  readonly routes: readonly Prefix[];
  readonly tun: string;
  readonly kubeletPort: number;
  readonly timeoutMs: number;
}

/** What the node checks work from, and what they learn on the way (key pair, trust, probe). */
export interface NodeContext {
  readonly input: NodeInput;
  readonly daemon: LocalDaemon;
  /** The running client's status, when the socket belongs to a client. */
  readonly client: DaemonStatus | undefined;
  readonly serverPeer: PeerStatus | undefined;
  readonly server: Endpoint | undefined;
  /** The pinned key to check against: --server-key, else what the running client pins. */
  readonly serverKeyText: string | undefined;
  /** The running client's server presents a certificate without an Ed25519 key: it trusts it by --ca. */
  readonly clientTrustsByCa: string | undefined;
  readonly name: string | undefined;
  readonly routes: readonly Prefix[];
  readonly tun: string;
  keyPair?: KeyPair;
  trust?: ServerTrust;
  probe?: ProbeResult;
}

export function nodeContext(input: NodeInput, daemon: LocalDaemon): NodeContext {
  const client = daemon.status?.role === 'client' ? daemon.status : undefined;
  const serverPeer = client?.peers[0];
  const trustFromFlags = input.serverKey !== undefined || input.caFile !== undefined;
  const presented = trustFromFlags ? undefined : serverPeer?.publicKey || undefined;
  const byCa = presented?.startsWith('sha256:') ? presented : undefined;
  return {
    input,
    daemon,
    client,
    serverPeer,
    server: input.server ?? (client?.server ? parseEndpoint(client.server, 'server') : undefined),
    serverKeyText: input.serverKey ?? (byCa ? undefined : presented),
    clientTrustsByCa: byCa,
    name: input.name ?? client?.name,
    routes: input.routes.length > 0 ? input.routes : (client?.announcedRoutes ?? []).map((text) => Prefix.parse(text)),
    tun: client?.tun ?? input.tun,
  };
}

const clientConnected = (ctx: NodeContext): boolean => ctx.serverPeer?.connected === true;

/** Whether our key and name are the running client's: a hello with them would replace its session. */
function sameIdentity(ctx: NodeContext): boolean {
  return (
    clientConnected(ctx) &&
    ctx.keyPair !== undefined &&
    ctx.client?.publicKey === encodeKey(ctx.keyPair.publicKey) &&
    ctx.client?.name === ctx.name
  );
}

/** The server's tunnel CIDRs: from the running client, else from the probe's welcome. */
function tunnelCidrs(ctx: NodeContext): string[] {
  const known = ctx.serverPeer?.routes ?? [];
  return known.length > 0 ? known : ctx.probe?.stage === 'welcome' ? ctx.probe.welcome.tunnelCidrs : [];
}

function serverAddresses(ctx: NodeContext): string[] {
  const known = ctx.client?.serverTunnelAddresses ?? [];
  return known.length > 0 ? known : ctx.probe?.stage === 'welcome' ? ctx.probe.welcome.serverAddresses : [];
}

const where = (ctx: NodeContext): string => formatEndpoint(ctx.server!);

function describeTrust(ctx: NodeContext): string {
  const { input } = ctx;
  const ca = input.caFile
    ? `the CA in ${input.caFile}${input.serverName ? ` for the name ${input.serverName}` : ''}`
    : undefined;
  const key = ctx.serverKeyText ? `the pinned key ${ctx.serverKeyText}` : undefined;
  return [key, ca].filter(Boolean).join(' and ');
}

function identityCheck(ctx: NodeContext): Outcome {
  const { keyFile } = ctx.input;
  if (!keyFile) {
    if (clientConnected(ctx))
      return pass(`no --key: the running client is authenticated as "${ctx.client?.name ?? '?'}"`);
    return fail(
      'no --key, and no connected client to vouch for this node',
      'pass --key and --name, the same as for nodelink client (or run diagnose where the client runs)',
    );
  }
  try {
    ctx.keyPair = readKeyFile(keyFile);
  } catch (err) {
    return fail(userMessage(err), 'fix --key: a file with one base64 private key (nodelink keygen), mode 0600');
  }
  if (!ctx.name)
    return fail('no --name, no NODE_NAME, and no running client to ask', "pass --name as in the server's peers file");
  return pass(`${keyFile} is valid; this node is "${ctx.name}" with public key ${encodeKey(ctx.keyPair.publicKey)}`);
}

function configCheck(ctx: NodeContext): Outcome {
  const { input } = ctx;
  if (ctx.clientTrustsByCa && !input.caFile) {
    return fail(
      `the running client trusts its server by a CA (the server presents ${ctx.clientTrustsByCa}), and diagnose has no --ca`,
      "pass the client's --ca (and --server-name), or its --config",
    );
  }
  const missing = [!ctx.server && '--server', !ctx.serverKeyText && !input.caFile && '--server-key or --ca'];
  if (missing.some(Boolean)) {
    return fail(
      `missing ${missing.filter(Boolean).join(', ')} (not given, and no running client to ask)`,
      'pass them as flags, NODELINK_* env or --config, the same as for nodelink client',
    );
  }
  let serverKey: Uint8Array | undefined;
  let ca: string | undefined;
  try {
    if (ctx.serverKeyText) serverKey = decodeKey(ctx.serverKeyText, '--server-key');
  } catch (err) {
    return fail(userMessage(err), 'pass the output of `nodelink pubkey < server.key` from the control plane');
  }
  try {
    if (input.caFile) ca = readCaFile(input.caFile);
  } catch (err) {
    return fail(userMessage(err), "pass the PEM certificate of the CA that signed the server's certificate");
  }
  ctx.trust = { serverKey, ca, serverName: input.serverName };
  const asked = input.server && (input.serverKey || input.caFile) ? '' : ' (asked the running client)';
  return pass(`server ${where(ctx)}, trusted by ${describeTrust(ctx)}${asked}`);
}

async function dnsCheck(ctx: NodeContext): Promise<Outcome> {
  const { host } = ctx.server!;
  if (isIP(host)) return pass(`${host} is an IP address`);
  try {
    const addresses = await lookup(host, { all: true });
    return pass(`${host} → ${addresses.map((a) => a.address).join(', ')}`);
  } catch (err) {
    return fail(
      `${host} does not resolve (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
      `fix DNS on this node (cat /etc/resolv.conf) or put the server's IP in --server`,
    );
  }
}

async function tcpCheck(ctx: NodeContext): Promise<Outcome> {
  const { host, port } = ctx.server!;
  const tcp = await tcpConnect(host, port, ctx.input.timeoutMs);
  if (tcp.ok) return pass(`${where(ctx)} accepted a TCP connection in ${tcp.ms.toFixed(1)} ms`);
  if (tcp.code === 'ECONNREFUSED')
    return fail(
      `${where(ctx)}: connection refused — the server is down or listens elsewhere`,
      `start nodelink server on the control plane (check its logs), or fix --server; nothing listens on ${where(ctx)}`,
    );
  return fail(
    `${where(ctx)}: ${describeConnectError(tcp.code, ctx.input.timeoutMs)}`,
    `a firewall, security group or NAT between this node and the control plane drops TCP ${port}: allow outbound TCP to ${where(ctx)}`,
  );
}

async function tlsCheck(ctx: NodeContext): Promise<Outcome> {
  const { host, port } = ctx.server!;
  // A hello with the key of a connected client would replace its session: then only check
  // trust, and take the running session as proof of authorization.
  const hello =
    ctx.keyPair && ctx.name && !sameIdentity(ctx)
      ? { keyPair: ctx.keyPair, name: ctx.name, routes: ctx.routes.map(String) }
      : undefined;
  ctx.probe = await probeHandshake({ host, port, trust: ctx.trust!, hello, timeoutMs: ctx.input.timeoutMs });
  if (ctx.probe.stage === 'tls')
    return fail(
      `${where(ctx)}: ${ctx.probe.error}`,
      `is ${where(ctx)} really a nodelink server? It must speak TLS 1.3 directly; a TLS-intercepting proxy or a load balancer terminating TLS in between breaks it`,
    );
  return pass(`${where(ctx)} completed a TLS 1.3 handshake`);
}

function trustCheck(ctx: NodeContext): Outcome {
  const probe = ctx.probe!;
  if (probe.stage === 'tls') throw new Error('the trust check ran after a failed TLS handshake');
  const presented = probe.presented ?? '(nothing)';
  if (probe.stage !== 'untrusted') return pass(`${where(ctx)} presents ${presented}, trusted by ${describeTrust(ctx)}`);
  const { untrusted } = probe;
  if (untrusted.failure === 'server_key_mismatch') {
    return fail(
      `${where(ctx)} presents ${presented}, but --server-key is ${ctx.serverKeyText}`,
      presented.startsWith('sha256:')
        ? 'the server presents a CA-signed certificate whose key is not Ed25519: trust it with --ca (and --server-name) instead of --server-key'
        : 'run `nodelink pubkey < server.key` on the control plane and pass that as --server-key — or --server points at the wrong server',
    );
  }
  return fail(
    `${where(ctx)} presents ${presented}: ${untrusted.message}`,
    `pass the CA that signed the server's certificate as --ca; if the certificate names the server by a DNS name rather than ${ctx.server!.host}, pass that name as --server-name`,
  );
}

function authorizedCheck(ctx: NodeContext): Outcome {
  const probe = ctx.probe!;
  const { keyPair, name } = ctx;
  const running = `the running client is authenticated as "${ctx.client?.name ?? '?'}"`;
  // The identity check passed without a key pair only because the running client is connected.
  if (!keyPair || !name) return pass(running);
  const routes = ctx.routes.map(String);
  switch (probe.stage) {
    case 'trusted':
      return pass(running);
    case 'welcome':
      return pass(`the server accepted "${name}" with routes ${routes.join(', ') || '(none)'}`);
    case 'rejected': {
      const entry = JSON.stringify({ name, publicKey: encodeKey(keyPair.publicKey), allowedIPs: routes });
      const fix =
        probe.code === 'route_not_allowed'
          ? "announce only routes inside this node's allowedIPs (fix --route), or widen allowedIPs in the server's peers file"
          : /not in the server's peers file/.test(probe.reason)
            ? `add this node to the server's peers file: ${entry}`
            : "fix --name or the server's peers file so that they agree";
      return fail(`the server rejected this node (${probe.code}): ${probe.reason}`, fix);
    }
    case 'no_answer':
      return fail(`no answer to our hello: ${probe.error}`, "check the server's logs for this node's connection");
    default:
      throw new Error(`the authorization check ran after the probe stopped at ${probe.stage}`);
  }
}

async function tunCheck(ctx: NodeContext): Promise<Outcome> {
  const device = await deviceUp(ctx.tun);
  if (device.ok) return pass(device.detail);
  return fail(
    device.detail,
    `nodelink client creates ${ctx.tun} when it starts: start it, or check its logs for why it exits`,
  );
}

async function routesCheck(ctx: NodeContext): Promise<Outcome> {
  const cidrs = tunnelCidrs(ctx);
  if (cidrs.length === 0) return skip('tunnel CIDRs unknown (no running, connected client and no accepted hello)');
  const addresses = serverAddresses(ctx);
  const wrong: string[] = [];
  for (const text of cidrs) {
    const cidr = Prefix.parse(text);
    const sample = addresses.find((address) => (address.includes(':') ? 6 : 4) === cidr.family) ?? sampleAddress(cidr);
    const route = await routeDevice(sample);
    if (route.dev !== ctx.tun) wrong.push(`${text} goes ${wrongWay(route)}, not ${ctx.tun}`);
  }
  if (wrong.length === 0) return pass(`${cidrs.join(', ')} → ${ctx.tun}`);
  return fail(
    `MISSING route: ${wrong.join('; ')} — replies to the control plane take the wrong way`,
    `${cidrs.map((cidr) => `ip ${nodeRouteCommand('replace', cidr, ctx.tun)}`).join(' && ')} (nodelink client installs these when it connects: restarting it also fixes it)`,
  );
}

/** The families this node forwards for: those it announces, IPv4 when it announces nothing yet. */
function announces(ctx: NodeContext, family: 4 | 6): boolean {
  return ctx.routes.some((route) => route.family === family) || (family === 4 && ctx.routes.length === 0);
}

function forwardingCheck(family: 4 | 6): CheckDefinition<NodeContext> {
  const path = FORWARDING_SYSCTL[family];
  const knob = path.slice('/proc/sys/'.length).replaceAll('/', '.');
  return {
    id: family === 4 ? 'ip_forward' : 'ip_forward6',
    title: `IPv${family} forwarding on`,
    run(ctx) {
      if (!announces(ctx, family)) return skip(`this node announces no IPv${family} route`);
      const value = readSysctl(path);
      if (value === '1') return pass(`${knob} = 1`);
      if (value === undefined) return skip(`cannot read ${path}`);
      return fail(
        `${knob} = ${value}: ip_forward is off, so this node does not forward the control plane's packets to pods`,
        `sysctl -w ${knob}=1 (persist it in /etc/sysctl.d/); nodelink client turns it on at start unless --no-forwarding`,
      );
    },
  };
}

const RP_FILTER_MODES = ['off', 'strict', 'loose'];

function rpFilterCheck(ctx: NodeContext): Outcome {
  if (!announces(ctx, 4)) return skip('this node announces no IPv4 route');
  const all = Number(readSysctl('/proc/sys/net/ipv4/conf/all/rp_filter') ?? 0);
  const dev = Number(readSysctl(`/proc/sys/net/ipv4/conf/${ctx.tun}/rp_filter`) ?? 0);
  const mode = Math.max(all, dev); // the kernel applies the larger of the two
  // Strict is fine here: the routes check passed, so the route back to the tunnel is via the TUN.
  return pass(
    mode === 1
      ? `rp_filter = 1 (strict), compatible: the route back to the tunnel CIDR is via ${ctx.tun}`
      : `rp_filter = ${mode} (${RP_FILTER_MODES[mode] ?? '?'})`,
  );
}

/**
 * A ping to the server's tunnel address proves the path only where the server lets nodes open
 * flows (--allow-node-initiated). By default it drops them, ping included: then the control
 * plane's own packets having arrived through the tunnel, and this node's having gone back, is
 * what this side can see of the path.
 */
async function tunnelPingCheck(ctx: NodeContext): Promise<Outcome> {
  const serverAddress = serverAddresses(ctx)[0];
  if (!serverAddress) return skip("the server's tunnel address is unknown");
  const node = nodeIp(ctx.routes);
  const source = node && (node.family === 4) === !serverAddress.includes(':') ? node.address : undefined;
  const echo = await ping(serverAddress, ctx.input.timeoutMs, source);
  const what = `ping ${serverAddress}${source ? ` from ${source}` : ''}`;
  if (echo.missing) return skip('ping is not installed');
  if (echo.ok) return pass(`${what}: ${echo.detail} (the server lets nodes open flows: --allow-node-initiated)`);
  const received = ctx.serverPeer?.rxPackets ?? 0;
  const sent = ctx.serverPeer?.txPackets ?? 0;
  if (received > 0 && sent > 0)
    return pass(
      `${received} packets from the control plane arrived through the tunnel and ${sent} went back; ${what} gets no reply, as the server drops flows nodes open (its default)`,
    );
  return skip(
    `${what} gets no reply, as the server drops flows nodes open (its default), and no packet from the control plane has arrived yet to show the path: run \`nodelink diagnose\` on the control plane`,
  );
}

async function kubeletCheck(ctx: NodeContext): Promise<Outcome> {
  const node = nodeIp(ctx.routes);
  const host = node ? node.address : '127.0.0.1';
  const { kubeletPort: port, timeoutMs } = ctx.input;
  const kubelet = await tcpConnect(host, port, timeoutMs);
  if (kubelet.ok) return pass(`${formatEndpoint({ host, port })} accepts connections`);
  return fail(
    `${formatEndpoint({ host, port })}: ${describeConnectError(kubelet.code, timeoutMs)}`,
    `kubelet is not listening on :${port} here (systemctl status kubelet): kubectl logs/exec will fail with "error dialing backend" even with the link up`,
  );
}

function clientCheck(ctx: NodeContext): Outcome {
  const { daemon, serverPeer } = ctx;
  if (!daemon.status)
    return fail(
      daemon.error ?? `no nodelink client answers on ${daemon.socket}`,
      'start nodelink client on this node (DaemonSet pod running? its logs say why it exits), or pass --admin-socket',
    );
  if (!ctx.client)
    return fail(
      `${daemon.socket} belongs to a nodelink ${daemon.status.role}`,
      "pass the client's --admin-socket, or use --side control-plane",
    );
  if (serverPeer?.connected) {
    const rtt = serverPeer.lastPongMs !== null ? `, rtt ${serverPeer.lastPongMs.toFixed(1)} ms` : '';
    return pass(`connected to ${serverPeer.endpoint ?? '?'} since ${serverPeer.connectedSince ?? '?'}${rtt}`);
  }
  return fail(
    `running but NOT connected${serverPeer?.lastError ? ` (last error: ${serverPeer.lastError})` : ''}`,
    'the checks above name the cause; the client keeps redialing with backoff',
  );
}

/** The node side's checks, in the order they run and print. */
export const NODE_CHECKS: readonly CheckDefinition<NodeContext>[] = [
  { id: 'key_file', title: "this node's key and name", run: identityCheck },
  { id: 'config', title: 'server and trust settings', run: configCheck },
  { id: 'dns', title: 'server name resolves', after: ['config'], run: dnsCheck },
  { id: 'tcp', title: 'server port answers', after: ['dns'], run: tcpCheck },
  { id: 'tls', title: 'TLS 1.3 handshake', after: ['tcp'], run: tlsCheck },
  { id: 'server_key', title: 'server trusted', after: ['tls'], run: trustCheck },
  { id: 'authorized', title: 'this node is authorized', after: ['server_key', 'key_file'], run: authorizedCheck },
  { id: 'tun', title: 'TUN device up', run: tunCheck },
  { id: 'routes', title: 'routes to the control plane', after: ['tun'], run: routesCheck },
  forwardingCheck(4),
  forwardingCheck(6),
  { id: 'rp_filter', title: 'rp_filter compatible', after: ['routes'], run: rpFilterCheck },
  { id: 'tunnel_ping', title: 'traffic crosses the tunnel', after: ['routes'], run: tunnelPingCheck },
  { id: 'kubelet', title: 'kubelet port open', run: kubeletCheck },
  { id: 'client', title: 'nodelink client connected', run: clientCheck },
];
