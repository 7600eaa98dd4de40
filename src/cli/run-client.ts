import { writeFileSync } from 'node:fs';
import {
  AuthError,
  decodeKey,
  encodeKey,
  generateSeed,
  keyPairFromSeed,
  readKeyFile,
  readNamedFile,
} from '../auth/index.js';
import { processDebug } from '../admin/index.js';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { LinkClient, TunFanout } from '../link-client/index.js';
import type { DaemonStatus } from '../admin/index.js';
import { readCaFile } from '../link-client/trust.js';
import { ClientRoutes, LinuxTun } from '../tun/index.js';
import { createLogger, type Logger } from '../log.js';
import { NodelinkError } from '../errors.js';
import type { ClientConfig, Endpoint } from './config.js';
import { connectionOptions, onShutdownSignal } from './daemon.js';
import { clientObservability } from './observe.js';
import { routesFromKubernetes } from './kubernetes.js';
import { formatEndpoint, type Prefix } from '../routing/index.js';
import { reloadSettingsOnSighup, type StartSettings } from './reload.js';

/** The kernel's forwarding switch for each family (diagnose reads the same ones). */
export const FORWARDING_SYSCTL: Readonly<Record<4 | 6, string>> = {
  4: '/proc/sys/net/ipv4/ip_forward',
  6: '/proc/sys/net/ipv6/conf/all/forwarding',
};

/**
 * Pods answer the control plane through this node, so the node must forward. Only the
 * families the node announces are touched: turning on IPv6 forwarding changes how a host
 * treats router advertisements, which nobody asked for on an IPv4-only node.
 */
function enableForwarding(routes: readonly Prefix[], log: Logger): void {
  const families = new Set(routes.map((route) => route.family));
  for (const family of families) {
    const path = FORWARDING_SYSCTL[family];
    try {
      writeFileSync(path, '1');
    } catch (err) {
      log.warn(
        { path, err: (err as Error).message },
        'cannot enable forwarding: pods will not answer through the link',
      );
    }
  }
}

export async function runClient(config: ClientConfig, start: StartSettings): Promise<void> {
  const log = createLogger(config.logLevel, { role: 'client', node: config.name }, config.logFormat);
  // Kubernetes mode needs no key file: the token proves who this node is, and the key only binds
  // each hello to its TLS session, so a fresh one per start does.
  const keyPair = config.keyFile ? readKeyFile(config.keyFile) : keyPairFromSeed(generateSeed());
  const token = config.tokenFile ? () => readToken(config.tokenFile) : undefined;
  if (token) token();
  const routesFromServer = Boolean(config.tokenFile) && config.routes.length === 0 && !config.routesFromNode;
  const serverKey = config.serverKey ? decodeKey(config.serverKey, '--server-key') : undefined;
  const ca = config.caFile ? readCaFile(config.caFile) : undefined;
  const fromNode = config.routesFromNode ? await routesFromKubernetes(config, log) : undefined;
  const routes = fromNode?.routes ?? config.routes;
  if (config.enableForwarding) enableForwarding(routes, log);
  const tun = await LinuxTun.open({ name: config.tun, mtu: config.mtu, addresses: [] });
  const targets = await serverTargets(config.servers, log);
  // One server: the session owns the TUN. Several: a fanout hands each session the replies for
  // its own server's tunnel CIDRs.
  const fanout = targets.length > 1 ? new TunFanout(tun) : undefined;
  const clients: LinkClient[] = [];
  const observe = clientObservability(config, log, () => combinedStatus(clients));
  for (const target of targets) {
    const view = fanout?.view();
    const serverRoutes = new ClientRoutes({ tun: config.tun });
    const client: LinkClient = new LinkClient({
      host: target.host,
      port: target.port,
      serverKey,
      ca,
      serverName: config.serverName || target.serverName,
      keyPair,
      name: config.name,
      routes,
      token,
      routesFromServer,
      onRoutes: (granted) => {
        if (config.enableForwarding) enableForwarding(granted, log);
      },
      tun: view ?? tun,
      connection: connectionOptions(config),
      handshakeTimeoutMs: config.handshakeTimeoutMs,
      backoffBaseMs: config.backoffBaseMs,
      backoffCapMs: config.backoffCapMs,
      replicaSearchCapMs: config.replicaSearchCapMs,
      replicaForgetMs: config.replicaForgetMs,
      installRoutes: async (cidrs, serverAddress) => {
        const conflicts = fanout && view ? fanout.claim(view, cidrs) : [];
        if (conflicts.length > 0) {
          log.error(
            { server: target.label, conflicts: conflicts.map(String) },
            'two servers announce the same tunnel CIDR: give every server its own --tunnel-cidr',
          );
        }
        await serverRoutes.install(cidrs.map(String), serverAddress);
      },
      onRejected: (reason) => {
        process.stderr.write(`nodelink: the server ${target.label} rejected this node: ${reason}\n`);
        observe.close();
        void tun.close().finally(() => process.exit(2));
      },
      log: targets.length > 1 ? log.child({ server: target.label }) : log,
      observer: observe.metrics,
      peerName: targets.length > 1 ? `server ${target.label}` : 'server',
    });
    clients.push(client);
  }
  try {
    await observe.start(() => ({
      ...combinedStatus(clients),
      publicKey: encodeKey(keyPair.publicKey),
      server: formatEndpoint(config.server),
      serverTunnelAddresses: clients.flatMap((client) => client.serverTunnelAddresses),
      announcedRoutes: clients[0]!.announcedRoutes.map(String),
      debug: processDebug(),
    }));
  } catch (err) {
    observe.close();
    await tun.close();
    throw err instanceof NodelinkError ? err : new NodelinkError('admin_socket', String(err));
  }
  reloadSettingsOnSighup({ role: 'client', configFile: config.configFile, start, log });
  for (const client of clients) client.start();
  const stopFollowing = fromNode?.follow((changed) => {
    for (const client of clients) client.setRoutes(changed);
  });
  log.info(
    { servers: targets.map((target) => target.label), routes: routes.map(String), tun: config.tun },
    'client started',
  );
  onShutdownSignal(log, 2000, async () => {
    stopFollowing?.();
    observe.close();
    await Promise.all(clients.map((client) => client.stop()));
    await tun.close();
  });
}

interface ServerTarget {
  readonly host: string;
  readonly port: number;
  /** The DNS name the address came from: SNI and the certificate name under --ca. */
  readonly serverName: string | undefined;
  readonly label: string;
}

/**
 * One session per server. A DNS name with several addresses (several servers behind one name)
 * is expanded here, once, at start; a name with one address stays a name, so each redial
 * resolves it afresh.
 */
async function serverTargets(servers: readonly Endpoint[], log: Logger): Promise<ServerTarget[]> {
  const targets: ServerTarget[] = [];
  for (const { host, port } of servers) {
    const addresses = isIP(host)
      ? []
      : await lookup(host, { all: true }).catch((err: Error) => {
          log.warn({ server: host, err: err.message }, 'cannot resolve the server name yet; will retry when dialing');
          return [];
        });
    if (addresses.length <= 1) {
      targets.push({ host, port, serverName: undefined, label: formatEndpoint({ host, port }) });
      continue;
    }
    for (const { address } of addresses) {
      targets.push({
        host: address,
        port,
        serverName: host,
        label: formatEndpoint({ host: address, port }),
      });
    }
  }
  return targets;
}

/** The node's status: one peer entry per server replica, the replicas of every --server address. */
function combinedStatus(clients: readonly LinkClient[]): DaemonStatus {
  const [first, ...rest] = clients.map((client) => client.status());
  const all = [first!, ...rest];
  return {
    ...first!,
    peers: all.flatMap((status) => status.peers),
    replicas: all.flatMap((status) => status.replicas ?? []),
  };
}

/** The projected token as the kubelet wrote it last; one line naming the file if it cannot be read. */
function readToken(path: string): string {
  const text = readNamedFile(
    path,
    'token file',
    'mount a projected serviceAccountToken volume there (deploy/base), or fix --token-file',
    (message) => new AuthError('token_file', message),
  ).trim();
  if (!text)
    throw new AuthError('token_file', `token file ${path} is empty: the kubelet has not written the token yet`);
  return text;
}
