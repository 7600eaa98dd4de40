import { defaultServerId } from '../link-server/replica-id.js';
import { readKeyFile, readPeersFile } from '../auth/index.js';
import { processDebug } from '../admin/index.js';
import { LinkServer, loadServerCertificate } from '../link-server/index.js';
import { LinuxTun, ipBatch, routeDeleteCommand, routeReplaceCommand } from '../tun/index.js';
import { createLogger } from '../log.js';
import { userMessage } from '../errors.js';
import type { Prefix } from '../routing/index.js';
import { tunnelSource, type ServerConfig } from './config.js';
import { connectionOptions, onShutdownSignal } from './daemon.js';
import { serverObservability } from './observe.js';
import { kubernetesNodeAuth, nodeRouteCheck } from './kubernetes.js';
import { onReload, settingsReloader, type StartSettings } from './reload.js';

export async function runServer(config: ServerConfig, start: StartSettings): Promise<void> {
  const log = createLogger(config.logLevel, { role: 'server' }, config.logFormat);
  // Everything that can be wrong with the input is checked before any device is created.
  const keyPair = readKeyFile(config.keyFile);
  const kubernetes = config.nodeAuth === 'kubernetes' ? await kubernetesNodeAuth(config, log) : undefined;
  const registry = kubernetes?.registry ?? readPeersFile(config.peersFile, config.tunnelCidrs);
  const loadCertificate = () =>
    config.certFile ? loadServerCertificate(config.certFile, config.certKeyFile || undefined, keyPair) : undefined;
  const certificate = loadCertificate();
  const checkRoutes = config.authorizeFromNodes
    ? await nodeRouteCheck(config.kubeconfig, registry.peers[0]?.name, log)
    : undefined;
  const tun = await LinuxTun.open({
    name: config.tun,
    mtu: config.mtu,
    addresses: config.tunnelCidrs.map((cidr) => `${cidr.firstHost()}/${cidr.length}`),
  });
  const installRoutes = (cidrs: readonly Prefix[]): Promise<void> =>
    ipBatch(
      cidrs.map((cidr) =>
        routeReplaceCommand(cidr.toString(), config.tun, tunnelSource(config.tunnelAddresses, cidr.family)),
      ),
    );
  const observe = serverObservability(config, log, { status: () => server.status() });
  const server = new LinkServer({
    host: config.listen.host,
    port: config.listen.port,
    keyPair,
    registry,
    tun,
    tunnelCidrs: config.tunnelCidrs,
    tunnelAddresses: config.tunnelAddresses,
    connection: connectionOptions(config),
    handshakeTimeoutMs: config.handshakeTimeoutMs,
    installRoutes,
    log,
    observer: observe.metrics,
    checkRoutes,
    authorizeHello: kubernetes?.authorize,
    certificate,
    limits: {
      maxUnauthenticated: config.maxUnauthenticated,
      maxNewPerSourcePerSecond: config.maxNewConnsPerSource,
      maxQueued: config.maxQueuedHandshakes,
    },
    // In one ip -batch, as installRoutes; a route already gone is no error.
    removeRoutes: (cidrs) =>
      ipBatch(cidrs.map((cidr) => routeDeleteCommand(cidr.toString(), config.tun))).catch(() => undefined),
    serverId: config.serverId || defaultServerId(),
    serverCount: config.serverCount,
  });
  try {
    await server.start();
    await observe.serveAdmin(
      observe.enrich(() => ({ ...server.status(), debug: { ...processDebug(), ...server.connectionCounts() } })),
    );
    await observe.start();
  } catch (err) {
    kubernetes?.stop();
    observe.close();
    await server.stop();
    await tun.close();
    throw err;
  }
  // Kubernetes mode: Nodes that come, go or change move the peers and their kernel routes.
  kubernetes?.follow((nodes) => {
    server
      .reload(nodes, 'nodes')
      .catch((err: unknown) => log.error({ err: userMessage(err) }, 'cannot apply Node changes'));
  });
  // SIGHUP: bad settings, a bad peers file or a bad certificate are refused with one line and the
  // old ones stay.
  onReload(
    'settings',
    settingsReloader({
      role: 'server',
      configFile: config.configFile,
      start,
      log,
      apply: (next) => {
        log.level = next.logLevel;
        observe.pathChecker.reconfigure({
          intervalMs: next.pathCheckIntervalMs!,
          timeoutMs: next.pathCheckTimeoutMs!,
          port: next.pathCheckPort!,
        });
      },
    }),
    log,
  );
  if (!kubernetes) {
    onReload(
      'peers',
      () => server.reload(readPeersFile(config.peersFile, config.tunnelCidrs)).then(() => undefined),
      log,
    );
  }
  if (config.certFile) {
    onReload(
      'certificate',
      () => {
        server.setCertificate(loadCertificate()!);
        log.info({ cert: config.certFile }, 'certificate reloaded');
      },
      log,
    );
  }
  log.info(
    { tun: config.tun, tunnelCidrs: config.tunnelCidrs.map(String), adminSocket: config.adminSocket },
    'server ready',
  );
  onShutdownSignal(log, 2000, async () => {
    kubernetes?.stop();
    observe.close();
    await Promise.race([server.stop(), new Promise((resolve) => setTimeout(resolve, 1000))]);
    await tun.close();
  });
}
