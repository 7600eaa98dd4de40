import { Gauge } from 'prom-client';
import {
  AdminServer,
  ObservabilityServer,
  LinkMetrics,
  PeerEventLog,
  RetryingEndpoint,
  cached,
  clientReadiness,
  serverReadiness,
  type EndpointStatus,
  type DaemonStatus,
  type HealthReport,
  type RouteState,
} from '../admin/index.js';
import { encodeKey } from '../auth/index.js';
import { PathChecker, type PathTarget } from '../link-server/path-check.js';
import { Prefix, formatEndpoint, nodeIp } from '../routing/index.js';
import { deviceUp, kernelRoutes } from '../tun/index.js';
import type { Logger } from '../log.js';
import { VERSION } from '../version.js';
import { tunnelSource, type ClientConfig, type LinkTunables, type ServerConfig } from './config.js';
import { effectiveConfig } from './config-file.js';

/**
 * The daemon's observability, wired once per process: metrics (also the link's observer),
 * the /metrics /healthz /readyz endpoint, the server's path checks, status enrichment (route
 * states from the kernel, pongs, reconnects, path health). run-server.ts and run-client.ts call
 * this; nothing here is on the data path.
 */

function kernelSet(texts: string[] | undefined): Set<string> | undefined {
  return texts && new Set(texts.map(canonical));
}

function canonical(text: string): string {
  try {
    return Prefix.parse(text).toString();
  } catch {
    return text;
  }
}

interface Common {
  readonly metrics: LinkMetrics;
  /** Starts the HTTP endpoint (if --metrics) and logs the effective config. */
  start(): Promise<void>;
  /** Serves status on --admin-socket; throws only if another nodelink answers there. */
  serveAdmin(provider: () => Promise<DaemonStatus>): Promise<void>;
  close(): void;
  /** Wraps the daemon's status provider with events, path health and route states. */
  enrich(base: () => DaemonStatus): () => Promise<DaemonStatus>;
}

/**
 * The daemon's two local endpoints, --metrics and --admin-socket. Neither keeps the link from
 * starting: one that cannot be served is retried (RetryingEndpoint) and shows as failed in the
 * log, in status (`endpoints`) and in `nodelink_endpoint_up`. Readiness does not depend on them:
 * it says whether the daemon carries traffic, which a taken port does not change, and /readyz is
 * served by the metrics endpoint itself.
 */
class Endpoints {
  private http: RetryingEndpoint<ObservabilityServer> | undefined;
  private admin: RetryingEndpoint<AdminServer> | undefined;

  constructor(
    private readonly config: LinkTunables,
    private readonly metrics: LinkMetrics,
    private readonly log: Logger,
  ) {
    const list = (): EndpointStatus[] => this.list();
    new Gauge({
      name: 'nodelink_endpoint_up',
      help: 'Whether a local endpoint is serving (1) or failed and being retried (0): metrics, admin.',
      labelNames: ['endpoint'],
      registers: [metrics.registry],
      collect() {
        this.reset();
        for (const endpoint of list()) this.set({ endpoint: endpoint.name }, endpoint.state === 'serving' ? 1 : 0);
      },
    });
  }

  async startHttp(ready: () => Promise<HealthReport>): Promise<void> {
    const { config, metrics, log } = this;
    if (!config.metrics) return;
    const { host, port } = config.metrics;
    this.http = await RetryingEndpoint.start(
      'metrics',
      formatEndpoint(config.metrics),
      async () => {
        const http = await ObservabilityServer.start({
          host,
          port,
          metrics: () => metrics.text(),
          contentType: metrics.contentType,
          ready,
        });
        log.info({ metrics: http.address }, 'serving /metrics, /healthz and /readyz');
        return http;
      },
      log,
    );
  }

  async startAdmin(provider: () => Promise<DaemonStatus>): Promise<void> {
    const path = this.config.adminSocket;
    this.admin = await RetryingEndpoint.start('admin', path, () => AdminServer.start(path, provider), this.log);
  }

  /** HOST:PORT the metrics endpoint serves on, while it does. */
  get httpAddress(): string | undefined {
    return this.http?.value?.address;
  }

  list(): EndpointStatus[] {
    const list: EndpointStatus[] = [];
    if (this.http) list.push(this.http.status({ refusedConnections: this.http.value?.refusedConnections ?? 0 }));
    if (this.admin) list.push(this.admin.status());
    return list;
  }

  close(): void {
    this.http?.close();
    this.admin?.close();
  }
}

function logEffectiveConfig(command: string, config: object, log: Logger): void {
  log.info({ config: { command, ...effectiveConfig(config) } }, 'effective config');
}

// ---- server ------------------------------------------------------------------------------------

export interface ServerSide {
  /** The LinkServer's status (sync). start() is called once it listens. */
  status(): DaemonStatus;
}

export function serverObservability(
  config: ServerConfig,
  log: Logger,
  side: ServerSide,
): Common & { pathChecker: PathChecker } {
  const tunUp = cached(1000, () => deviceUp(config.tun));
  // Set once the server listens: a scrape of /readyz need not build the status of every peer.
  let listening: string | undefined;
  const ready = async (): Promise<HealthReport> => serverReadiness(listening, await tunUp());
  const events = new PeerEventLog();
  const metrics = new LinkMetrics({
    role: 'server',
    version: VERSION,
    events,
    status: () => side.status(),
    ready: async () => (await ready()).ok,
  });
  const pathChecker = new PathChecker({
    intervalMs: config.pathCheckIntervalMs,
    timeoutMs: config.pathCheckTimeoutMs,
    port: config.pathCheckPort,
    targets: () => pathTargets(side.status()),
    sourceAddress: (family) => tunnelSource(config.tunnelAddresses, family),
    log,
    onResult: (peer, health) => metrics.pathChecked(peer, health),
  });
  const endpoints = new Endpoints(config, metrics, log);
  return {
    metrics,
    pathChecker,
    async start() {
      listening = side.status().listen ?? '?';
      await endpoints.startHttp(ready);
      pathChecker.start();
      logEffectiveConfig('server', config, log);
    },
    serveAdmin: (provider) => endpoints.startAdmin(provider),
    close() {
      listening = undefined;
      pathChecker.stop();
      endpoints.close();
    },
    enrich(base) {
      return async () => {
        const status = base();
        const kernel = kernelSet(await kernelRoutes(config.tun));
        for (const peer of status.peers) {
          events.addTo(peer);
          peer.path = pathChecker.health(peer.name);
          const announced = peer.routes.map((route) => Prefix.parse(route));
          peer.routeStates = (peer.allowedIPs ?? []).map((text): RouteState => {
            const route = canonical(text);
            const allowed = Prefix.parse(route);
            const inKernel = kernel ? kernel.has(route) : null;
            let state: RouteState['state'];
            if (inKernel === false) state = 'missing';
            else if (!peer.connected) state = 'offline';
            else state = announced.some((a) => allowed.contains(a)) ? 'active' : 'not_announced';
            return { route, state, kernel: inKernel };
          });
        }
        addEndpoints(status, endpoints);
        return status;
      };
    },
  };
}

/** Each connected node's node IP. */
export function pathTargets(status: DaemonStatus): PathTarget[] {
  const targets: PathTarget[] = [];
  for (const peer of status.peers) {
    if (!peer.connected) continue;
    const host = nodeIp(peer.routes.map((route) => Prefix.parse(route)));
    if (host) targets.push({ peer: peer.name, address: host.address, family: host.family });
  }
  return targets;
}

// ---- client ------------------------------------------------------------------------------------

export interface ClientSide {
  status(): DaemonStatus;
  /** The server's addresses inside the tunnel, from its welcome. */
  serverTunnelAddresses(): readonly string[];
  announcedRoutes(): readonly Prefix[];
}

export function clientObservability(
  config: ClientConfig,
  log: Logger,
  publicKey: Uint8Array,
  side: ClientSide,
): Common {
  const tunUp = cached(1000, () => deviceUp(config.tun));
  const events = new PeerEventLog();
  const ready = async (): Promise<HealthReport> =>
    clientReadiness({ status: side.status(), events, deadAfterMs: config.deadAfterMs, tun: await tunUp() });
  const metrics = new LinkMetrics({
    role: 'client',
    version: VERSION,
    events,
    status: () => side.status(),
    ready: async () => (await ready()).ok,
  });
  const endpoints = new Endpoints(config, metrics, log);
  return {
    metrics,
    async start() {
      await endpoints.startHttp(ready);
      logEffectiveConfig('client', config, log);
    },
    serveAdmin: (provider) => endpoints.startAdmin(provider),
    close() {
      endpoints.close();
    },
    enrich(base) {
      return async () => {
        const status = base();
        const kernel = kernelSet(await kernelRoutes(config.tun));
        status.publicKey = encodeKey(publicKey);
        status.server = formatEndpoint(config.server);
        status.serverTunnelAddresses = [...side.serverTunnelAddresses()];
        status.announcedRoutes = side.announcedRoutes().map(String);
        for (const peer of status.peers) {
          events.addTo(peer);
          peer.routeStates = peer.routes.map((text): RouteState => {
            const route = canonical(text);
            const inKernel = kernel ? kernel.has(route) : null;
            return { route, state: inKernel === false ? 'missing' : 'installed', kernel: inKernel };
          });
        }
        addEndpoints(status, endpoints);
        return status;
      };
    },
  };
}

function addEndpoints(status: DaemonStatus, endpoints: Endpoints): void {
  const address = endpoints.httpAddress;
  if (address) status.metrics = address;
  status.endpoints = endpoints.list();
}
