import type { Logger } from '../log.js';
import type { ConnectionOptions } from '../link/connection.js';
import type { LinkTunables } from './config.js';

export function connectionOptions(config: LinkTunables): ConnectionOptions {
  return {
    maxQueueBytes: config.maxQueueBytes,
    keepaliveIntervalMs: config.keepaliveIntervalMs,
    deadAfterMs: config.deadAfterMs,
  };
}

/**
 * Runs `shutdown` once on SIGTERM or SIGINT, then exits. A second signal, or a shutdown that
 * hangs past `graceMs`, exits at once: an operator's Ctrl-C always works.
 */
export function onShutdownSignal(log: Logger, graceMs: number, shutdown: () => Promise<void>): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals): void => {
    if (stopping) process.exit(1);
    stopping = true;
    log.info({ signal }, 'shutting down');
    setTimeout(() => process.exit(1), graceMs).unref();
    shutdown().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err: String(err) }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}
