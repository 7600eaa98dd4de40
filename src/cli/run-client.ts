import { writeFileSync } from 'node:fs';
import { decodeKey, readKeyFile } from '../auth/index.js';
import { AdminServer } from '../admin/index.js';
import { LinkClient } from '../link-client/index.js';
import { readCaFile } from '../link-client/trust.js';
import { LinuxTun, routeReplace } from '../tun/index.js';
import { createLogger, type Logger } from '../log.js';
import { NodelinkError } from '../errors.js';
import type { ClientConfig } from './config.js';
import { connectionOptions, onShutdownSignal } from './daemon.js';
import { clientObservability } from './observe.js';
import { routesFromKubernetes } from './kubernetes.js';
import type { Prefix } from '../routing/index.js';

/**
 * Pods answer the control plane through this node, so the node must forward. Only the
 * families the node announces are touched: turning on IPv6 forwarding changes how a host
 * treats router advertisements, which nobody asked for on an IPv4-only node.
 */
function enableForwarding(routes: readonly Prefix[], log: Logger): void {
  const families = new Set(routes.map((route) => route.family));
  const knobs: Array<[4 | 6, string]> = [[4, '/proc/sys/net/ipv4/ip_forward'], [6, '/proc/sys/net/ipv6/conf/all/forwarding']];
  for (const [family, path] of knobs) {
    if (!families.has(family)) continue;
    try {
      writeFileSync(path, '1');
    } catch (err) {
      log.warn({ path, err: (err as Error).message }, 'cannot enable forwarding: pods will not answer through the link');
    }
  }
}

export async function runClient(config: ClientConfig): Promise<void> {
  const log = createLogger(config.logLevel, { role: 'client', node: config.name }, config.logFormat);
  const keyPair = readKeyFile(config.keyFile);
  const serverKey = config.serverKey ? decodeKey(config.serverKey, '--server-key') : undefined;
  const ca = config.caFile ? readCaFile(config.caFile) : undefined;
  const fromNode = config.routesFromNode ? await routesFromKubernetes(config, log) : undefined;
  const routes = fromNode?.routes ?? config.routes;
  if (config.enableForwarding) enableForwarding(routes, log);
  const tun = await LinuxTun.open({ name: config.tun, mtu: config.mtu, addresses: [] });
  let admin: AdminServer | undefined;
  const observe = clientObservability(config, log, keyPair.publicKey, { status: () => client.status(), serverTunnelAddresses: () => client.serverTunnelAddresses, announcedRoutes: () => client.announcedRoutes });
  const client = new LinkClient({
    host: config.server.host,
    port: config.server.port,
    serverKey,
    ca,
    serverName: config.serverName || undefined,
    keyPair,
    name: config.name,
    routes,
    tun,
    connection: connectionOptions(config),
    handshakeTimeoutMs: config.handshakeTimeoutMs,
    backoffBaseMs: config.backoffBaseMs,
    backoffCapMs: config.backoffCapMs,
    installRoutes: async (cidrs) => {
      for (const cidr of cidrs) await routeReplace(cidr.toString(), config.tun);
    },
    onRejected: (reason) => {
      process.stderr.write(`nodelink: the server rejected this node: ${reason}\n`);
      admin?.close();
      void tun.close().finally(() => process.exit(2));
    },
    log,
    observer: observe.metrics,
  });
  try {
    admin = await AdminServer.start(config.adminSocket, observe.enrich(() => client.status()));
    await observe.start();
  } catch (err) {
    await tun.close();
    throw err instanceof NodelinkError ? err : new NodelinkError('admin_socket', String(err));
  }
  client.start();
  const stopFollowing = fromNode?.follow((changed) => client.setRoutes(changed));
  log.info({ server: `${config.server.host}:${config.server.port}`, routes: routes.map(String), tun: config.tun }, 'client started');
  onShutdownSignal(log, 2000, async () => {
    stopFollowing?.();
    observe.close();
    await client.stop();
    admin?.close();
    await tun.close();
  });
}
