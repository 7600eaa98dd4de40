import { execFile } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { existsSync, readFileSync } from 'node:fs';
import { connect as netConnect, isIP } from 'node:net';
import { fetchStatus, type DaemonStatus } from '../admin/index.js';
import { decodeKey, encodeKey, readKeyFile, type KeyPair } from '../auth/index.js';
import { userMessage } from '../errors.js';
import { probeHandshake, type ProbeResult } from '../link-client/probe.js';
import { Prefix } from '../routing/index.js';
import { ip, routeReplaceCommand } from '../tun/index.js';
import { ConfigError, DEFAULTS, cidr, int, list, parseEndpoint, type Endpoint, type RawOptions } from './config.js';
import { deviceUp, nodeIp } from './observe.js';

/**
 * `nodelink diagnose`: the checklist an operator runs when `kubectl logs` says "error dialing
 * backend", run by nodelink itself. Each check prints ✓ or ✗ and, when it fails, the fix.
 * Checks that depend on a failed one are skipped (-) rather than failing again, so the first ✗
 * is the cause. Exit code 1 when any check failed.
 *
 * Node side: the running client, key file, DNS, TCP, TLS, server key, authorization, TUN,
 * routes, ip_forward, rp_filter, a ping through the tunnel, kubelet's port.
 * Control-plane side: the running server, its port, its TUN, and per peer: connected, kernel
 * routes into the TUN, node IP and pod CIDR reachable through the link.
 */

export type CheckStatus = 'pass' | 'fail' | 'skip';

export interface Check {
  id: string;
  title: string;
  status: CheckStatus;
  detail: string;
  fix?: string;
}

export interface DiagnoseReport {
  side: 'node' | 'control-plane';
  ok: boolean;
  failed: number;
  checks: Check[];
}

class Checklist {
  readonly checks: Check[] = [];

  pass(id: string, title: string, detail: string): true {
    this.checks.push({ id, title, status: 'pass', detail });
    return true;
  }

  fail(id: string, title: string, detail: string, fix: string): false {
    this.checks.push({ id, title, status: 'fail', detail, fix });
    return false;
  }

  skip(id: string, title: string, detail: string): false {
    this.checks.push({ id, title, status: 'skip', detail });
    return false;
  }

  report(side: DiagnoseReport['side']): DiagnoseReport {
    const failed = this.checks.filter((check) => check.status === 'fail').length;
    return { side, ok: failed === 0, failed, checks: this.checks };
  }
}

// ---- probes ------------------------------------------------------------------------------------

type Connect = { ok: true; ms: number } | { ok: false; code: string };

function tcpConnect(host: string, port: number, timeoutMs: number): Promise<Connect> {
  return new Promise((resolve) => {
    const started = performance.now();
    const socket = netConnect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ ok: false, code: 'ETIMEDOUT' });
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ ok: true, ms: performance.now() - started });
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve({ ok: false, code: err.code ?? err.message });
    });
  });
}

function describeConnectError(code: string, timeoutMs: number): string {
  switch (code) {
    case 'ECONNREFUSED':
      return 'connection refused';
    case 'ETIMEDOUT':
      return `no answer within ${timeoutMs} ms`;
    case 'EHOSTUNREACH':
      return 'host unreachable';
    case 'ENETUNREACH':
      return 'network unreachable (no route)';
    default:
      return code;
  }
}

function ping(
  address: string,
  timeoutMs: number,
  source?: string,
): Promise<{ ok: boolean; detail: string; missing?: boolean }> {
  const args = ['-n', '-c', '1', '-W', String(Math.max(1, Math.ceil(timeoutMs / 1000)))];
  if (address.includes(':')) args.unshift('-6');
  if (source) args.push('-I', source);
  args.push(address);
  return new Promise((resolve) => {
    execFile('ping', args, { timeout: timeoutMs + 2000 }, (err, stdout) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') {
        resolve({ ok: false, missing: true, detail: 'ping is not installed' });
        return;
      }
      const rtt = /time=([\d.]+) ms/.exec(stdout);
      resolve(
        err ? { ok: false, detail: 'no echo reply' } : { ok: true, detail: rtt ? `reply in ${rtt[1]} ms` : 'reply' },
      );
    });
  });
}

/** The device the kernel would send ADDRESS out of, or an error line. */
async function routeDevice(address: string): Promise<{ dev?: string; error?: string }> {
  try {
    const [route] = JSON.parse(await ip(['-j', 'route', 'get', address])) as Array<{ dev?: string }>;
    return { dev: route?.dev };
  } catch (err) {
    return { error: userMessage(err).replace(/^.*failed: /, '') };
  }
}

function readSysctl(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function hostOf(route: Prefix): string {
  return route.toString().split('/')[0]!;
}

/** An address inside the CIDR to ask the kernel about: its first host (or itself for /32, /128). */
function sampleAddress(cidr: Prefix): string {
  return cidr.length >= cidr.bits - 1 ? hostOf(cidr) : cidr.firstHost();
}

function endpointText(endpoint: Endpoint): string {
  return endpoint.host.includes(':') ? `[${endpoint.host}]:${endpoint.port}` : `${endpoint.host}:${endpoint.port}`;
}

// ---- node side ---------------------------------------------------------------------------------

export interface NodeInput {
  server?: Endpoint;
  serverKey?: string;
  keyFile?: string;
  name?: string;
  routes: Prefix[];
  tun: string;
  adminSocket: string;
  kubeletPort: number;
  timeoutMs: number;
}

async function diagnoseNode(input: NodeInput): Promise<DiagnoseReport> {
  const c = new Checklist();
  const { timeoutMs } = input;
  const daemon = await fetchStatus(input.adminSocket).catch(() => undefined);
  const serverPeer = daemon?.role === 'client' ? daemon.peers[0] : undefined;

  // What we check against: flags (or config file) first, else what the running client says.
  const server = input.server ?? (daemon?.server ? parseEndpoint(daemon.server, 'server') : undefined);
  const serverKeyText = input.serverKey ?? serverPeer?.publicKey;
  const name = input.name ?? daemon?.name;
  const tun = daemon?.tun ?? input.tun;
  const routes =
    input.routes.length > 0 ? input.routes : (daemon?.announcedRoutes ?? []).map((text) => Prefix.parse(text));
  const clientConnected = serverPeer?.connected === true;

  // Enough configuration to test with.
  // Without --key a connected client is proof enough of authorization.
  const missing = [
    !server && '--server',
    !serverKeyText && '--server-key',
    !input.keyFile && !clientConnected && '--key',
    !name && '--name',
  ].filter(Boolean);
  let keyPair: KeyPair | undefined;
  let serverKey: Uint8Array | undefined;
  if (input.keyFile) {
    try {
      keyPair = readKeyFile(input.keyFile);
      c.pass(
        'key_file',
        'key file',
        `${input.keyFile} is valid; this node's public key is ${encodeKey(keyPair.publicKey)}`,
      );
    } catch (err) {
      c.fail(
        'key_file',
        'key file',
        userMessage(err),
        'fix --key: a file with one base64 private key (nodelink keygen), mode 0600',
      );
    }
  }
  if (serverKeyText) {
    try {
      serverKey = decodeKey(serverKeyText, '--server-key');
    } catch (err) {
      c.fail(
        'server_key_format',
        'server key',
        userMessage(err),
        'pass the output of `nodelink pubkey < server.key` from the control plane',
      );
    }
  }
  if (missing.length > 0) {
    c.fail(
      'config',
      'configuration',
      `missing ${missing.join(', ')} (not given, and no running client to ask)`,
      `pass them as flags, NODELINK_* env or --config, the same as for nodelink client`,
    );
  }

  // DNS, TCP, TLS, server key, authorization.
  let tunnelCidrs: string[] = serverPeer?.routes ?? [];
  let serverAddresses: string[] = daemon?.serverTunnelAddresses ?? [];
  let reachable = false;
  if (server) {
    const where = endpointText(server);
    let resolved = true;
    if (isIP(server.host)) {
      c.pass('dns', 'server name resolves', `${server.host} is an IP address`);
    } else {
      try {
        const addresses = await lookup(server.host, { all: true });
        c.pass('dns', 'server name resolves', `${server.host} → ${addresses.map((a) => a.address).join(', ')}`);
      } catch (err) {
        resolved = c.fail(
          'dns',
          'server name resolves',
          `${server.host} does not resolve (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
          `fix DNS on this node (cat /etc/resolv.conf) or put the server's IP in --server`,
        );
      }
    }
    if (resolved) {
      const tcp = await tcpConnect(server.host, server.port, timeoutMs);
      if (tcp.ok) {
        reachable = c.pass(
          'tcp',
          'server port answers',
          `${where} accepted a TCP connection in ${tcp.ms.toFixed(1)} ms`,
        );
      } else if (tcp.code === 'ECONNREFUSED') {
        c.fail(
          'tcp',
          'server port answers',
          `${where}: connection refused — the server is down or listens elsewhere`,
          `start nodelink server on the control plane (check its logs), or fix --server; nothing listens on ${where}`,
        );
      } else {
        c.fail(
          'tcp',
          'server port answers',
          `${where}: ${describeConnectError(tcp.code, timeoutMs)}`,
          `a firewall, security group or NAT between this node and the control plane drops TCP ${server.port}: allow outbound TCP to ${where}`,
        );
      }
    } else {
      c.skip('tcp', 'server port answers', 'skipped: the server name does not resolve');
    }
  } else {
    c.skip('dns', 'server name resolves', 'skipped: no --server');
    c.skip('tcp', 'server port answers', 'skipped: no --server');
  }

  const sameIdentity =
    serverPeer?.connected === true &&
    keyPair !== undefined &&
    daemon?.publicKey === encodeKey(keyPair.publicKey) &&
    daemon?.name === name;
  if (server && reachable && serverKey) {
    let result: ProbeResult | undefined;
    if (keyPair && name) {
      // A hello with the key of a connected client would replace its session: only check the
      // server key then, and take the running session as proof of authorization.
      result = await probeHandshake({
        host: server.host,
        port: server.port,
        serverKey,
        keyPair,
        name,
        routes: routes.map(String),
        timeoutMs,
        skipHello: sameIdentity,
      });
    } else {
      // Without our own key we can still check TLS and the server key.
      result = await probeHandshake({ host: server.host, port: server.port, serverKey, timeoutMs, skipHello: true });
    }
    const where = endpointText(server);
    if (result.stage === 'tls') {
      c.fail(
        'tls',
        'TLS 1.3 handshake',
        `${where}: ${result.error}`,
        `is ${where} really a nodelink server? It must speak TLS 1.3 directly; a TLS-intercepting proxy or a load balancer terminating TLS in between breaks it`,
      );
      c.skip('server_key', 'server key matches', 'skipped: no TLS handshake');
    } else {
      c.pass('tls', 'TLS 1.3 handshake', `${where} completed a TLS 1.3 handshake`);
      if (result.stage === 'server_key') {
        c.fail(
          'server_key',
          'server key matches',
          `${where} presents key ${result.presented ?? '(not Ed25519)'}, but --server-key is ${serverKeyText}`,
          'run `nodelink pubkey < server.key` on the control plane and pass that as --server-key — or --server points at the wrong server',
        );
      } else {
        c.pass('server_key', 'server key matches', `${where} presents the pinned key ${serverKeyText}`);
      }
    }
    if ((!keyPair || !name) && clientConnected) {
      c.pass(
        'authorized',
        'this node is authorized',
        `the running client is authenticated as "${daemon?.name ?? '?'}"`,
      );
    } else if (!keyPair || !name) {
      c.skip('authorized', 'this node is authorized', 'skipped: needs --key and --name');
    } else if (result.stage === 'key_ok' && sameIdentity) {
      c.pass('authorized', 'this node is authorized', `the running client is authenticated as "${name}"`);
    } else if (result.stage === 'welcome') {
      c.pass(
        'authorized',
        'this node is authorized',
        `the server accepted "${name}" with routes ${routes.map(String).join(', ') || '(none)'}`,
      );
      tunnelCidrs = tunnelCidrs.length > 0 ? tunnelCidrs : result.tunnelCidrs;
      serverAddresses = serverAddresses.length > 0 ? serverAddresses : result.serverAddresses;
    } else if (result.stage === 'rejected') {
      const entry = JSON.stringify({ name, publicKey: encodeKey(keyPair.publicKey), allowedIPs: routes.map(String) });
      const fix =
        result.code === 'route_not_allowed'
          ? "announce only routes inside this node's allowedIPs (fix --route), or widen allowedIPs in the server's peers file"
          : /not in the server's peers file/.test(result.reason)
            ? `add this node to the server's peers file: ${entry}`
            : "fix --name or the server's peers file so that they agree";
      c.fail(
        'authorized',
        'this node is authorized',
        `the server rejected this node (${result.code}): ${result.reason}`,
        fix,
      );
    } else if (result.stage === 'no_answer') {
      c.fail(
        'authorized',
        'this node is authorized',
        `no answer to our hello: ${result.error}`,
        "check the server's logs for this node's connection",
      );
    } else {
      c.skip('authorized', 'this node is authorized', 'skipped: the server key does not match');
    }
  } else {
    c.skip('tls', 'TLS 1.3 handshake', server ? 'skipped: the server port does not answer' : 'skipped: no --server');
    c.skip('server_key', 'server key matches', 'skipped: no TLS handshake');
    c.skip('authorized', 'this node is authorized', 'skipped: no TLS handshake');
  }

  // Local plumbing: TUN, routes into it, forwarding, rp_filter.
  const device = await deviceUp(tun);
  if (device.ok) c.pass('tun', 'TUN device up', device.detail);
  else
    c.fail(
      'tun',
      'TUN device up',
      device.detail,
      `nodelink client creates ${tun} when it starts: start it, or check its logs for why it exits`,
    );

  let routesOk = false;
  if (tunnelCidrs.length === 0) {
    c.skip(
      'routes',
      'routes to the control plane',
      'skipped: tunnel CIDRs unknown (no running, connected client and no accepted hello)',
    );
  } else {
    const wrong: string[] = [];
    for (const text of tunnelCidrs) {
      const cidr = Prefix.parse(text);
      const sample =
        serverAddresses.find((address) => (address.includes(':') ? 6 : 4) === cidr.family) ?? sampleAddress(cidr);
      const route = await routeDevice(sample);
      if (route.dev !== tun)
        wrong.push(
          `${text} goes ${route.dev ? `via ${route.dev}` : `nowhere (${route.error ?? 'no route'})`}, not ${tun}`,
        );
    }
    routesOk =
      wrong.length === 0
        ? c.pass('routes', 'routes to the control plane', `${tunnelCidrs.join(', ')} → ${tun}`)
        : c.fail(
            'routes',
            'routes to the control plane',
            `MISSING route: ${wrong.join('; ')} — replies to the control plane take the wrong way`,
            `${tunnelCidrs.map((cidr) => `ip ${routeReplaceCommand(cidr, tun)}`).join(' && ')} (nodelink client installs these when it connects: restarting it also fixes it)`,
          );
  }

  const families = new Set(routes.map((route) => route.family));
  if (families.size === 0) families.add(4);
  for (const family of [...families].sort()) {
    const path = family === 4 ? '/proc/sys/net/ipv4/ip_forward' : '/proc/sys/net/ipv6/conf/all/forwarding';
    const knob = family === 4 ? 'net.ipv4.ip_forward' : 'net.ipv6.conf.all.forwarding';
    const value = readSysctl(path);
    if (value === '1') c.pass(`ip_forward${family === 6 ? '6' : ''}`, `IPv${family} forwarding on`, `${knob} = 1`);
    else if (value === undefined)
      c.skip(`ip_forward${family === 6 ? '6' : ''}`, `IPv${family} forwarding on`, `cannot read ${path}`);
    else {
      c.fail(
        `ip_forward${family === 6 ? '6' : ''}`,
        `IPv${family} forwarding on`,
        `${knob} = ${value}: ip_forward is off, so this node does not forward the control plane's packets to pods`,
        `sysctl -w ${knob}=1 (persist it in /etc/sysctl.d/); nodelink client turns it on at start unless --no-forwarding`,
      );
    }
  }

  if (families.has(4)) {
    const all = Number(readSysctl('/proc/sys/net/ipv4/conf/all/rp_filter') ?? 0);
    const dev = Number(readSysctl(`/proc/sys/net/ipv4/conf/${tun}/rp_filter`) ?? 0);
    const mode = Math.max(all, dev); // the kernel applies the larger of the two
    const names = ['off', 'strict', 'loose'];
    if (mode !== 1) c.pass('rp_filter', 'rp_filter compatible', `rp_filter = ${mode} (${names[mode] ?? '?'})`);
    else if (routesOk)
      c.pass(
        'rp_filter',
        'rp_filter compatible',
        `rp_filter = 1 (strict), compatible: the route back to the tunnel CIDR is via ${tun}`,
      );
    else {
      c.fail(
        'rp_filter',
        'rp_filter compatible',
        `rp_filter = 1 (strict) and the route back to the tunnel is not via ${tun}: the kernel drops the control plane's packets as spoofed`,
        `fix the routes above, or sysctl -w net.ipv4.conf.${tun}.rp_filter=2 (loose)`,
      );
    }
  }

  // Through the tunnel, and kubelet.
  const nodeAddress = nodeIp(routes);
  const serverAddress = serverAddresses[0];
  if (!serverAddress) {
    c.skip('tunnel_ping', 'server reachable through the tunnel', "skipped: the server's tunnel address is unknown");
  } else if (!device.ok) {
    c.skip('tunnel_ping', 'server reachable through the tunnel', `skipped: ${tun} is not up`);
  } else {
    const source =
      nodeAddress && (nodeAddress.family === 4) === !serverAddress.includes(':') ? hostOf(nodeAddress) : undefined;
    const echo = await ping(serverAddress, timeoutMs, source);
    if (echo.missing) c.skip('tunnel_ping', 'server reachable through the tunnel', 'skipped: ping is not installed');
    else if (echo.ok)
      c.pass(
        'tunnel_ping',
        'server reachable through the tunnel',
        `ping ${serverAddress}${source ? ` from ${source}` : ''}: ${echo.detail}`,
      );
    else {
      c.fail(
        'tunnel_ping',
        'server reachable through the tunnel',
        `ping ${serverAddress}${source ? ` from ${source}` : ''}: ${echo.detail}`,
        'the session may be up but packets do not cross: compare `nodelink status` drops on both sides (spoofed_source, unannounced_source) and check firewalls on the TUN',
      );
    }
  }

  const kubeletHost = nodeAddress ? hostOf(nodeAddress) : '127.0.0.1';
  const kubelet = await tcpConnect(kubeletHost, input.kubeletPort, timeoutMs);
  if (kubelet.ok) c.pass('kubelet', 'kubelet port open', `${kubeletHost}:${input.kubeletPort} accepts connections`);
  else {
    c.fail(
      'kubelet',
      'kubelet port open',
      `${kubeletHost}:${input.kubeletPort}: ${describeConnectError(kubelet.code, timeoutMs)}`,
      `kubelet is not listening on :${input.kubeletPort} here (systemctl status kubelet): kubectl logs/exec will fail with "error dialing backend" even with the link up`,
    );
  }
  // Last: the running client. Its failure is a symptom; the checks above name the cause.
  if (!daemon) {
    c.fail(
      'client',
      'nodelink client connected',
      `no nodelink client answers on ${input.adminSocket}`,
      'start nodelink client on this node (DaemonSet pod running? its logs say why it exits), or pass --admin-socket',
    );
  } else if (daemon.role !== 'client') {
    c.fail(
      'client',
      'nodelink client connected',
      `${input.adminSocket} belongs to a nodelink ${daemon.role}`,
      "pass the client's --admin-socket, or use --side control-plane",
    );
  } else if (serverPeer?.connected) {
    c.pass(
      'client',
      'nodelink client connected',
      `connected to ${serverPeer.endpoint ?? '?'} since ${serverPeer.connectedSince ?? '?'}${serverPeer.lastPongMs !== null ? `, rtt ${serverPeer.lastPongMs.toFixed(1)} ms` : ''}`,
    );
  } else {
    c.fail(
      'client',
      'nodelink client connected',
      `running but NOT connected${serverPeer?.lastError ? ` (last error: ${serverPeer.lastError})` : ''}`,
      'the checks below name the cause; the client keeps redialing with backoff',
    );
  }

  return c.report('node');
}

// ---- control-plane side ------------------------------------------------------------------------

export interface ControlPlaneInput {
  adminSocket: string;
  kubeletPort: number;
  timeoutMs: number;
}

async function diagnoseControlPlane(input: ControlPlaneInput): Promise<DiagnoseReport> {
  const c = new Checklist();
  const { timeoutMs } = input;
  let status: DaemonStatus | undefined;
  try {
    status = await fetchStatus(input.adminSocket);
  } catch (err) {
    c.fail(
      'server',
      'nodelink server running',
      userMessage(err),
      'start nodelink server on the control plane (check its logs for why it exits), or pass --admin-socket',
    );
    return c.report('control-plane');
  }
  if (status.role !== 'server') {
    c.fail(
      'server',
      'nodelink server running',
      `${input.adminSocket} belongs to a nodelink ${status.role}`,
      "use --side node, or pass the server's --admin-socket",
    );
    return c.report('control-plane');
  }
  const connected = status.peers.filter((peer) => peer.connected).length;
  c.pass(
    'server',
    'nodelink server running',
    `listening on ${status.listen ?? '?'}, ${connected} of ${status.peers.length} peers connected`,
  );

  if (status.listen) {
    const listen = parseEndpoint(status.listen, 'listen');
    const host = listen.host === '0.0.0.0' ? '127.0.0.1' : listen.host === '::' ? '::1' : listen.host;
    const tcp = await tcpConnect(host, listen.port, timeoutMs);
    if (tcp.ok)
      c.pass('listening', 'server port answers', `${endpointText({ host, port: listen.port })} accepts connections`);
    else
      c.fail(
        'listening',
        'server port answers',
        `${endpointText({ host, port: listen.port })}: ${describeConnectError(tcp.code, timeoutMs)}`,
        'restart nodelink server; check --listen',
      );
  }

  const device = await deviceUp(status.tun);
  if (device.ok) c.pass('tun', 'TUN device up', device.detail);
  else c.fail('tun', 'TUN device up', device.detail, `restart nodelink server: it creates ${status.tun}`);

  for (const peer of status.peers) {
    const id = (what: string): string => `peer:${peer.name}:${what}`;
    if (peer.connected) {
      const path =
        peer.path && peer.path.state !== 'unknown'
          ? `; path check ${peer.path.state}${peer.path.error ? ` (${peer.path.error})` : ''}`
          : '';
      c.pass(
        id('connected'),
        `${peer.name}: connected`,
        `from ${peer.endpoint ?? '?'} since ${peer.connectedSince ?? '?'}${peer.lastPongMs !== null ? `, rtt ${peer.lastPongMs.toFixed(1)} ms` : ''}${path}`,
      );
    } else {
      c.fail(
        id('connected'),
        `${peer.name}: connected`,
        `not connected${peer.lastError ? ` (last: ${peer.lastError})` : ''}`,
        `run \`nodelink diagnose\` on ${peer.name}: is its nodelink client running, and can it reach ${status.listen ?? 'the server'}?`,
      );
    }

    const wrong: string[] = [];
    for (const text of peer.allowedIPs ?? []) {
      const route = await routeDevice(sampleAddress(Prefix.parse(text)));
      if (route.dev !== status.tun)
        wrong.push(`${text} goes ${route.dev ? `via ${route.dev}` : `nowhere (${route.error ?? 'no route'})`}`);
    }
    const src = (family: 4 | 6): string =>
      status!.tunnelAddresses.find((address) => address.includes(':') === (family === 6)) ?? '';
    if (wrong.length === 0)
      c.pass(
        id('routes'),
        `${peer.name}: kernel routes into ${status.tun}`,
        `${(peer.allowedIPs ?? []).join(', ')} → ${status.tun}`,
      );
    else {
      c.fail(
        id('routes'),
        `${peer.name}: kernel routes into ${status.tun}`,
        `MISSING route: ${wrong.join('; ')}, not ${status.tun} — the apiserver's packets for it never reach the link`,
        `${wrong
          .map((line) => line.split(' ')[0]!)
          .map((cidr) => `ip ${routeReplaceCommand(cidr, status!.tun, src(Prefix.parse(cidr).family))}`)
          .join(' && ')} (nodelink server installs these at start: restarting it also fixes it)`,
      );
    }

    if (!peer.connected) {
      c.skip(id('node_ip'), `${peer.name}: node IP reachable through the link`, 'skipped: not connected');
      continue;
    }
    const announced = peer.routes.map((text) => Prefix.parse(text));
    const node = nodeIp(announced);
    if (!node) {
      c.skip(
        id('node_ip'),
        `${peer.name}: node IP reachable through the link`,
        'skipped: the node announced no /32 or /128',
      );
    } else {
      const tcp = await tcpConnect(hostOf(node), input.kubeletPort, timeoutMs);
      // A refusal is an answer from the node's kernel: the path works, kubelet is not there.
      if (tcp.ok || tcp.code === 'ECONNREFUSED') {
        c.pass(
          id('node_ip'),
          `${peer.name}: node IP reachable through the link`,
          `${hostOf(node)}:${input.kubeletPort} ${tcp.ok ? `answered in ${tcp.ms.toFixed(1)} ms` : 'refused (the node answered; kubelet is not listening)'}`,
        );
      } else {
        c.fail(
          id('node_ip'),
          `${peer.name}: node IP reachable through the link`,
          `${hostOf(node)}:${input.kubeletPort}: ${describeConnectError(tcp.code, timeoutMs)}`,
          `the session is up but the node does not answer through it: run \`nodelink diagnose\` on ${peer.name} (routes, rp_filter, firewall)`,
        );
      }
    }
    for (const pod of announced.filter((route) => route.length < route.bits)) {
      const target = pod.firstHost();
      const echo = await ping(target, timeoutMs);
      if (echo.missing)
        c.skip(id(`pod:${pod}`), `${peer.name}: pod CIDR ${pod} reachable`, 'skipped: ping is not installed');
      else if (echo.ok)
        c.pass(id(`pod:${pod}`), `${peer.name}: pod CIDR ${pod} reachable`, `ping ${target}: ${echo.detail}`);
      else {
        c.fail(
          id(`pod:${pod}`),
          `${peer.name}: pod CIDR ${pod} reachable`,
          `ping ${target} (first address of the pod CIDR): ${echo.detail}`,
          `run \`nodelink diagnose\` on ${peer.name} (ip_forward, rp_filter, the pod bridge)`,
        );
      }
    }
  }
  return c.report('control-plane');
}

// ---- the command -------------------------------------------------------------------------------

const MARK: Record<CheckStatus, string> = { pass: '✓', fail: '✗', skip: '-' };

function formatReport(report: DiagnoseReport, heading: string): string {
  const width = Math.min(42, Math.max(...report.checks.map((check) => check.title.length)));
  const lines = [heading, ''];
  for (const check of report.checks) {
    lines.push(`  ${MARK[check.status]} ${check.title.padEnd(width)}  ${check.detail}`);
    if (check.fix) lines.push(`      fix: ${check.fix}`);
  }
  lines.push('');
  const failed = report.checks.filter((check) => check.status === 'fail');
  lines.push(
    failed.length === 0
      ? `all ${report.checks.filter((check) => check.status === 'pass').length} checks passed`
      : `${failed.length} check${failed.length === 1 ? '' : 's'} failed; first: ${failed[0]!.title} — ${failed[0]!.detail}`,
  );
  return `${lines.join('\n')}\n`;
}

function chooseSide(raw: RawOptions): 'node' | 'control-plane' {
  const side = raw['side'] as string | undefined;
  if (side === 'node' || side === 'control-plane') return side;
  if (side) throw new ConfigError(`--side must be node or control-plane, got "${side}"`);
  if (raw['server'] || raw['server-key']) return 'node';
  const socket = raw['admin-socket'] as string | undefined;
  if (socket) return /server/.test(socket) ? 'control-plane' : 'node';
  return existsSync(DEFAULTS.serverAdminSocket) && !existsSync(DEFAULTS.clientAdminSocket) ? 'control-plane' : 'node';
}

/** Runs the checklist, prints it (text or --json), and returns the exit code. */
export async function diagnoseCommand(raw: RawOptions): Promise<number> {
  const side = chooseSide(raw);
  const timeoutMs = int(raw, 'timeout-ms', 3000, 100, 60_000);
  const kubeletPort = int(raw, 'kubelet-port', 10250, 1, 65535);
  let report: DiagnoseReport;
  let heading: string;
  if (side === 'control-plane') {
    const adminSocket = (raw['admin-socket'] as string | undefined) || DEFAULTS.serverAdminSocket;
    report = await diagnoseControlPlane({ adminSocket, kubeletPort, timeoutMs });
    heading = `nodelink diagnose — control plane (${adminSocket})`;
  } else {
    const serverText = raw['server'] as string | undefined;
    const routes = list(raw, 'route').map((text) => cidr(text, 'route'));
    const input: NodeInput = {
      server: serverText ? parseEndpoint(serverText, 'server') : undefined,
      serverKey: (raw['server-key'] as string | undefined) || undefined,
      keyFile: (raw['key'] as string | undefined) || undefined,
      name: (raw['name'] as string | undefined) || process.env['NODE_NAME'] || undefined,
      routes,
      tun: (raw['tun'] as string | undefined) || DEFAULTS.tun,
      adminSocket: (raw['admin-socket'] as string | undefined) || DEFAULTS.clientAdminSocket,
      kubeletPort,
      timeoutMs,
    };
    report = await diagnoseNode(input);
    heading = `nodelink diagnose — node${input.name ? ` ${input.name}` : ''}${input.server ? `, server ${endpointText(input.server)}` : ''}`;
  }
  process.stdout.write(raw['json'] === true ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report, heading));
  return report.ok ? 0 : 1;
}
