import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { formatEndpoint } from '../routing/index.js';
import { AdminError } from './errors.js';

/** One named check of a health report, with what it found. */
export interface HealthCheck {
  ok: boolean;
  detail: string;
}

export interface HealthReport {
  ok: boolean;
  checks: Record<string, HealthCheck>;
}

export function report(checks: Record<string, HealthCheck>): HealthReport {
  return { ok: Object.values(checks).every((check) => check.ok), checks };
}

export interface ObservabilityServerOptions {
  readonly host: string;
  readonly port: number;
  /** Prometheus exposition text and its content type. */
  readonly metrics: () => Promise<string>;
  readonly contentType: string;
  /** /readyz: may this daemon take traffic (server: listening, TUN up; client: authenticated, recent pong). */
  readonly ready: () => Promise<HealthReport>;
}

/** Largest event-loop stall /healthz tolerates. */
const MAX_EVENT_LOOP_DELAY_MS = 5000;

/** The event loop's worst stall over the last window, from perf_hooks (sampled in C++, no timers of ours). */
class EventLoopWatch {
  private readonly histogram: IntervalHistogram = monitorEventLoopDelay({ resolution: 20 });
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
  private constructor(
    private readonly server: Server,
    private readonly loop: EventLoopWatch,
  ) {}

  static async start(options: ObservabilityServerOptions): Promise<ObservabilityServer> {
    const loop = new EventLoopWatch(10_000);
    const maxDelayMs = MAX_EVENT_LOOP_DELAY_MS;
    const live = (): HealthReport =>
      report({
        event_loop: {
          ok: loop.maxDelayMs <= maxDelayMs,
          detail: `worst event-loop delay ${loop.maxDelayMs.toFixed(1)} ms over the last 10-20 s (limit ${maxDelayMs} ms)`,
        },
      });
    const server = createServer((req, res) => {
      void handle(req, res, options, live).catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`internal error: ${err instanceof Error ? err.message : String(err)}\n`);
      });
    });
    server.keepAliveTimeout = 5000;
    server.requestTimeout = 10_000;
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
