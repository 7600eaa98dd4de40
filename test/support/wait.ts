// The one way tests and scripts wait for a condition: poll it, bounded in time.

import { setTimeout as sleep } from 'node:timers/promises';

const POLL_MS = 10;

/**
 * Polls `check` every 10 ms until it returns true and resolves with the milliseconds that took.
 * A check that throws counts as "not yet"; after `timeoutMs` this rejects naming `what` and the
 * last error the check threw.
 */
export async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 3000,
): Promise<number> {
  const started = Date.now();
  let lastError: unknown;
  for (;;) {
    try {
      if (await check()) return Date.now() - started;
      lastError = undefined;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() - started >= timeoutMs) break;
    await sleep(POLL_MS);
  }
  const detail = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
}
