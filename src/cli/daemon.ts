import { setFlagsFromString } from 'node:v8';
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
 * V8 optimises a function once it has run a budget of bytecode. On an idle link the packet path
 * runs a few dozen times a second, so with the default budget it stays in the baseline tier for
 * minutes, and every packet pays for it in latency. A sixteenth of the budget has the daemon's
 * hot paths optimised within seconds of traffic, for some more compiling, once, on V8's own
 * background thread.
 */
export function tierUpEarly(): void {
  setFlagsFromString('--interrupt-budget=4096');
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
