import { Gauge } from 'prom-client';
import { formatEndpoint } from '../routing/index.js';
import type { Logger } from '../log.js';
import type { HealthReport } from './health.js';
import { ObservabilityServer } from './http.js';
import type { LinkMetrics } from './metrics.js';
import { AdminServer } from './server.js';
import type { DaemonStatus } from './status.js';
import { RetryingEndpoint, type EndpointStatus } from './endpoint.js';

export interface DaemonEndpointsOptions {
  /** --metrics HOST:PORT; null when off. */
  readonly metrics: { readonly host: string; readonly port: number } | null;
  /** --admin-socket. */
  readonly adminSocket: string;
  readonly log: Logger;
}

/**
 * The daemon's two local endpoints, --metrics and --admin-socket. Neither keeps the link from
 * starting: one that cannot be served is retried (RetryingEndpoint) and shows as failed in the
 * log, in status (`endpoints`) and in `nodelink_endpoint_up`. Readiness does not depend on them:
 * it says whether the daemon carries traffic, which a taken port does not change, and /readyz is
 * served by the metrics endpoint itself.
 */
export class DaemonEndpoints {
  private http: RetryingEndpoint<ObservabilityServer> | undefined;
  private admin: RetryingEndpoint<AdminServer> | undefined;

  constructor(
    private readonly options: DaemonEndpointsOptions,
    private readonly metrics: LinkMetrics,
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

  /** Serves /metrics, /healthz and /readyz, if --metrics asks for them. */
  async startHttp(ready: () => Promise<HealthReport>): Promise<void> {
    const { metrics } = this;
    const { metrics: address, log } = this.options;
    if (!address) return;
    this.http = await RetryingEndpoint.start(
      'metrics',
      formatEndpoint(address),
      async () => {
        const http = await ObservabilityServer.start({
          host: address.host,
          port: address.port,
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

  /** Serves status on --admin-socket; throws only if another nodelink answers there. */
  async startAdmin(provider: () => Promise<DaemonStatus>): Promise<void> {
    const path = this.options.adminSocket;
    this.admin = await RetryingEndpoint.start('admin', path, () => AdminServer.start(path, provider), this.options.log);
  }

  /** Writes where the metrics endpoint serves and how both endpoints fare into status. */
  addTo(status: DaemonStatus): void {
    const address = this.http?.value?.address;
    if (address) status.metrics = address;
    status.endpoints = this.list();
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
