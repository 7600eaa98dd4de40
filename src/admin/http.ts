import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { formatEndpoint } from '../routing/index.js';
import { AdminError } from './errors.js';
import { report, type HealthReport } from './health.js';

export interface ObservabilityServerOptions {
  readonly host: string;
  readonly port: number;
  /** Renders the Prometheus exposition text; called at most once per `limits.metricsCacheMs`. */
  readonly metrics: () => Promise<string>;
  readonly contentType: string;
  /** /readyz: may this daemon take traffic (server: listening, TUN up; client: authenticated, recent pong). */
  readonly ready: () => Promise<HealthReport>;
  /** Defaults: ENDPOINT_LIMITS. */
  readonly limits?: Partial<EndpointLimits>;
}

/**
 * What a scrape may cost the daemon. The endpoint shares its thread with the data path, and
 * anyone who can reach the port (every local user, for 127.0.0.1) can flood it.
 */
export interface EndpointLimits {
  /** One rendering of /metrics answers every scrape for this long; Prometheus scrapes every 10 s or more. */
  readonly metricsCacheMs: number;
  /** Connections open at once; more are closed at accept and counted. */
  readonly maxConnections: number;
  /** From accept (or the end of the previous request) to the last request header. */
  readonly headersTimeoutMs: number;
  /** From accept to the whole request read. */
  readonly requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  readonly keepAliveTimeoutMs: number;
  /** Requests served on one connection before it is closed, so no client holds a slot for good. */
  readonly maxRequestsPerSocket: number;
}

export const ENDPOINT_LIMITS: EndpointLimits = Object.freeze({
  metricsCacheMs: 1000,
  maxConnections: 64,
  headersTimeoutMs: 5000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5000,
  maxRequestsPerSocket: 1000,
});

/**
 * Serves one rendering to every caller for `ms` after it started; callers that arrive while it
 * renders wait for the same one. A failed rendering is not kept.
 */
export function renderedFor(ms: number, render: () => Promise<string>): () => Promise<string> {
  let last: { at: number; text: Promise<string> } | undefined;
  return () => {
    const now = Date.now();
    if (!last || now - last.at >= ms) {
      const current = { at: now, text: render() };
      last = current;
      current.text.catch(() => {
        if (last === current) last = undefined;
      });
    }
    return last.text;
  };
}

/** Largest event-loop stall /healthz tolerates. */
const MAX_EVENT_LOOP_DELAY_MS = 5000;

/**
 * The event loop's worst stall over the last window, from perf_hooks. Its C++ timer wakes the
 * loop once per resolution: 100 ms, as prom-client's lag sampler (metrics.ts), which is fine
 * enough for a limit of seconds and keeps an idle daemon from waking fifty times a second.
 */
class EventLoopWatch {
  private readonly histogram: IntervalHistogram = monitorEventLoopDelay({ resolution: 100 });
  private lastMaxMs = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(windowMs: number) {
    this.histogram.enable();
    this.timer = setInterval(() => {
      this.lastMaxMs = this.histogram.max / 1e6;
      this.histogram.reset();
    }, windowMs);
    this.timer.unref();
  }

  /** The worst delay in the current or the previous window, in ms. */
  get maxDelayMs(): number {
    return Math.max(this.lastMaxMs, this.histogram.max / 1e6);
  }

  close(): void {
    clearInterval(this.timer);
    this.histogram.disable();
  }
}

/**
 * The HTTP endpoint of `--metrics HOST:PORT`, for Prometheus and Kubernetes probes:
 *
 *   GET /metrics   Prometheus text format
 *   GET /healthz   200 while the process is alive and its event loop responsive, else 503
 *   GET /readyz    200 when the daemon can carry traffic, else 503
 *
 * Health bodies are JSON: {"status":"ok"|"fail","checks":{name:{ok,detail}}}.
 */
export class ObservabilityServer {
  private refused = 0;

  private constructor(
    private readonly server: Server,
    private readonly loop: EventLoopWatch,
  ) {
    server.on('drop', () => this.refused++);
  }

  static async start(options: ObservabilityServerOptions): Promise<ObservabilityServer> {
    const limits = { ...ENDPOINT_LIMITS, ...options.limits };
    const metrics = renderedFor(limits.metricsCacheMs, options.metrics);
    const loop = new EventLoopWatch(10_000);
    const maxDelayMs = MAX_EVENT_LOOP_DELAY_MS;
    const live = (): HealthReport =>
      report({
        event_loop: {
          ok: loop.maxDelayMs <= maxDelayMs,
          detail: `worst event-loop delay ${loop.maxDelayMs.toFixed(1)} ms over the last 10-20 s (limit ${maxDelayMs} ms)`,
        },
      });
    const server = createServer(
      {
        headersTimeout: limits.headersTimeoutMs,
        requestTimeout: limits.requestTimeoutMs,
        keepAliveTimeout: limits.keepAliveTimeoutMs,
        // Node enforces the two timeouts above only when it walks its connections, every 30 s
        // by default: a slow client would hold its connection that long.
        connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs),
      },
      (req, res) => {
        void handle(req, res, { ...options, metrics }, live).catch((err: unknown) => {
          if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
          res.end(`internal error: ${err instanceof Error ? err.message : String(err)}\n`);
        });
      },
    );
    server.maxConnections = limits.maxConnections;
    server.maxRequestsPerSocket = limits.maxRequestsPerSocket;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        loop.close();
        reject(
          new AdminError(
            'metrics_listen',
            err.code === 'EADDRINUSE'
              ? `--metrics ${options.host}:${options.port} is already in use: stop the other process or pick another port`
              : `cannot serve metrics on ${options.host}:${options.port} (${err.code ?? err.message}): fix --metrics`,
          ),
        );
      });
      server.listen(options.port, options.host, () => resolve());
    });
    return new ObservabilityServer(server, loop);
  }

  get address(): string {
    const address = this.server.address();
    if (address && typeof address === 'object') {
      return formatEndpoint({ host: address.address, port: address.port });
    }
    return String(address);
  }

  /** Connections closed at accept because `maxConnections` were open. */
  get refusedConnections(): number {
    return this.refused;
  }

  close(): void {
    this.loop.close();
    this.server.close();
    this.server.closeAllConnections();
  }
}

async function handle(
  req: IncomingMessage,
  res: ServerResponse,
  options: ObservabilityServerOptions,
  live: () => HealthReport,
): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' }).end();
    return;
  }
  switch (path) {
    case '/metrics': {
      const body = await options.metrics();
      res.writeHead(200, { 'content-type': options.contentType });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    case '/healthz':
    case '/livez':
      return sendReport(res, live());
    case '/readyz':
      return sendReport(res, await options.ready());
    case '/':
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('nodelink: /metrics /healthz /readyz\n');
      return;
    default:
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics, /healthz or /readyz\n');
  }
}

function sendReport(res: ServerResponse, health: HealthReport): void {
  res.writeHead(health.ok ? 200 : 503, { 'content-type': 'application/json' });
  res.end(`${JSON.stringify({ status: health.ok ? 'ok' : 'fail', checks: health.checks })}\n`);
}
