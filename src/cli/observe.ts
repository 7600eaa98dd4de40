import {
  DaemonEndpoints,
  LinkMetrics,
  PeerEventLog,
  cached,
  clientReadiness,
  kernelRouteSet,
  serverReadiness,
  tunnelRouteStates,
  type DaemonStatus,
  type HealthReport,
  type KernelRoutes,
  type RouteState,
} from '../admin/index.js';
import { PathChecker, type PathTarget } from '../link-server/path-check.js';
import { deviceUp, kernelRoutes } from '../tun/index.js';
import type { Logger } from '../log.js';
import { VERSION } from '../version.js';
import { tunnelSource, type ClientConfig, type ServerConfig } from './config.js';
import { effectiveConfig } from './config-file.js';

/**
 * The daemon's observability, wired once per process: the peer event log, metrics (also the
 * link's observer), the --metrics and --admin-socket endpoints, readiness, the server's path
 * checks, and status enriched with events, path health and route states. Nothing here is on the
 * data path, and nothing here decides anything: each part comes from the module that owns it.
 */

/** What the LinkServer tells its observability (LinkServer itself fits). */
export interface ServerSide {
  status(): DaemonStatus;
  routeStates(kernel: KernelRoutes | undefined): Map<string, RouteState[]>;
  pathTargets(): PathTarget[];
  /** Reads the kernel's counters that status() reports (the flow filter's), before it is served. */
  refresh?(): Promise<void>;
}

/**
 * Made before the LinkServer, whose observer is `metrics`; start() is handed the server once it
 * listens, and only then are status, metrics and path checks served.
 */
export function serverObservability(config: ServerConfig, log: Logger) {
  let server: ServerSide | undefined; // handed over by start()
  let listening: string | undefined; // its address, so /readyz need not build every peer's status
  const side = (): ServerSide => {
    if (!server) throw new Error('server observability read before start() handed it the server');
    return server;
  };
  const tunUp = cached(1000, () => deviceUp(config.tun));
  const ready = async (): Promise<HealthReport> => serverReadiness(listening, await tunUp());
  const events = new PeerEventLog();
  const metrics = new LinkMetrics({
    role: 'server',
    version: VERSION,
    events,
    status: () => side().status(),
    refresh: async () => server?.refresh?.(),
    ready: async () => (await ready()).ok,
  });
  const pathChecker = new PathChecker({
    intervalMs: config.pathCheckIntervalMs,
    timeoutMs: config.pathCheckTimeoutMs,
    port: config.pathCheckPort,
    targets: () => side().pathTargets(),
    sourceAddress: (family) => tunnelSource(config.tunnelAddresses, family),
    log,
    onResult: (peer, health) => metrics.pathChecked(peer, health),
  });
  const endpoints = new DaemonEndpoints({ metrics: config.metrics, adminSocket: config.adminSocket, log }, metrics);
  const enrich = async (status: DaemonStatus): Promise<DaemonStatus> => {
    const routeStates = side().routeStates(kernelRouteSet(await kernelRoutes(config.tun)));
    for (const peer of status.peers) {
      events.addTo(peer);
      peer.path = pathChecker.health(peer.name);
      peer.routeStates = routeStates.get(peer.name) ?? [];
    }
    endpoints.addTo(status);
    return status;
  };
  return {
    metrics,
    pathChecker,
    /** Serves `base` (enriched) on the admin socket, then metrics and readiness; starts path checks. */
    async start(linkServer: ServerSide, base: () => DaemonStatus): Promise<void> {
      server = linkServer;
      listening = linkServer.status().listen ?? '?';
      await endpoints.startAdmin(async () => {
        await linkServer.refresh?.();
        return enrich(base());
      });
      await endpoints.startHttp(ready);
      pathChecker.start();
      logEffectiveConfig('server', config, log);
    },
    close(): void {
      listening = undefined;
      pathChecker.stop();
      endpoints.close();
    },
  };
}

/** `linkStatus` is the node's LinkClients' status, as cheap and synchronous as metrics need. */
export function clientObservability(config: ClientConfig, log: Logger, linkStatus: () => DaemonStatus) {
  const tunUp = cached(1000, () => deviceUp(config.tun));
  const events = new PeerEventLog();
  const ready = async (): Promise<HealthReport> =>
    clientReadiness({ status: linkStatus(), events, deadAfterMs: config.deadAfterMs, tun: await tunUp() });
  const metrics = new LinkMetrics({
    role: 'client',
    version: VERSION,
    events,
    status: linkStatus,
    ready: async () => (await ready()).ok,
  });
  const endpoints = new DaemonEndpoints({ metrics: config.metrics, adminSocket: config.adminSocket, log }, metrics);
  const enrich = async (status: DaemonStatus): Promise<DaemonStatus> => {
    const kernel = kernelRouteSet(await kernelRoutes(config.tun));
    for (const peer of status.peers) {
      events.addTo(peer);
      peer.routeStates = tunnelRouteStates(peer.routes, kernel);
    }
    endpoints.addTo(status);
    return status;
  };
  return {
    metrics,
    /** Serves `base` (enriched) on the admin socket, then metrics and readiness. */
    async start(base: () => DaemonStatus): Promise<void> {
      await endpoints.startAdmin(() => enrich(base()));
      await endpoints.startHttp(ready);
      logEffectiveConfig('client', config, log);
    },
    close(): void {
      endpoints.close();
    },
  };
}

function logEffectiveConfig(command: string, config: object, log: Logger): void {
  log.info({ config: { command, ...effectiveConfig(config) } }, 'effective config');
}
