import type { Logger } from '../log.js';
import { NodelinkError, userMessage } from '../errors.js';

/** An endpoint's health, in status (`endpoints`) and in metrics (`nodelink_endpoint_up`). */
export interface EndpointStatus {
  /** `metrics` (--metrics) or `admin` (--admin-socket). */
  name: string;
  /** HOST:PORT or socket path, as configured. */
  address: string;
  state: 'serving' | 'failed';
  /** Why it is not serving, while failed: one line saying how to fix it. */
  error: string | null;
  /** When the current state began. */
  since: string;
  /** Metrics: connections closed at accept because the connection cap was reached. */
  refusedConnections?: number;
}

interface Closable {
  close(): void;
}

/** Error codes after which the daemon must not start at all (another nodelink owns the endpoint). */
const FATAL_CODES = new Set(['admin_in_use']);
const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 10_000;

/**
 * An admin socket or metrics endpoint that never keeps the link from starting. Anyone on the host
 * can take a TCP port, and a daemon that exits for it leaves the cluster without routes; so when
 * the endpoint cannot be served the daemon starts without it, says so once at error level (and in
 * status and metrics), and binds again with backoff until it can, saying so when it does.
 *
 * The one exception is another nodelink of the same user answering on the admin socket: two
 * daemons on one host would fight over the same device and routes, so that start fails.
 */
export class RetryingEndpoint<T extends Closable> {
  private current: T | undefined;
  private error: string | null = null;
  private since = new Date().toISOString();
  private timer: NodeJS.Timeout | undefined;
  private retryMs: number;
  private closed = false;

  private constructor(
    readonly name: string,
    readonly address: string,
    private readonly open: () => Promise<T>,
    private readonly log: Logger,
    private readonly firstRetryMs: number,
  ) {
    this.retryMs = firstRetryMs;
  }

  /** Tries once now; throws only for another nodelink on the admin socket. */
  static async start<T extends Closable>(
    name: string,
    address: string,
    open: () => Promise<T>,
    log: Logger,
    firstRetryMs = FIRST_RETRY_MS,
  ): Promise<RetryingEndpoint<T>> {
    const endpoint = new RetryingEndpoint(name, address, open, log, firstRetryMs);
    try {
      endpoint.serving(await open());
    } catch (err) {
      if (err instanceof NodelinkError && FATAL_CODES.has(err.code)) throw err;
      endpoint.failed(err);
    }
    return endpoint;
  }

  /** The endpoint while it serves. */
  get value(): T | undefined {
    return this.current;
  }

  status(extra: Partial<EndpointStatus> = {}): EndpointStatus {
    return {
      name: this.name,
      address: this.address,
      state: this.current ? 'serving' : 'failed',
      error: this.error,
      since: this.since,
      ...extra,
    };
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.current?.close();
    this.current = undefined;
  }

  private serving(value: T): void {
    const recovered = this.error !== null;
    this.current = value;
    this.error = null;
    this.since = new Date().toISOString();
    if (recovered) this.log.info({ endpoint: this.name, address: this.address }, `${this.name} endpoint serving again`);
  }

  private failed(err: unknown): void {
    const message = userMessage(err);
    if (this.error === null) {
      this.since = new Date().toISOString();
      this.log.error(
        { endpoint: this.name, address: this.address, err: message },
        `${this.name} endpoint failed; the link runs without it and it is retried in the background`,
      );
    } else if (message !== this.error) {
      this.log.warn(
        { endpoint: this.name, address: this.address, err: message },
        `${this.name} endpoint still failing`,
      );
    }
    this.error = message;
    this.timer = setTimeout(() => void this.retry(), this.retryMs);
    this.timer.unref();
    this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
  }

  private async retry(): Promise<void> {
    if (this.closed) return;
    try {
      const value = await this.open();
      if (this.closed) {
        value.close();
        return;
      }
      this.retryMs = this.firstRetryMs;
      this.serving(value);
    } catch (err) {
      if (!this.closed) this.failed(err);
    }
  }
}
