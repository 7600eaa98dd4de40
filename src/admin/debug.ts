import { readdirSync } from 'node:fs';

/**
 * Process-level counts for leak checks (the `debug` field of `status --json`): what a test
 * compares before and after churn to prove that sessions, timers and sockets are released.
 * Read only when status is asked for, never on the data path.
 */
export interface DebugStatus {
  pid: number;
  rssBytes: number;
  /** Open file descriptors (/proc/self/fd), or -1 where /proc is missing. */
  fds: number;
  /** Referenced timers and intervals (process.getActiveResourcesInfo()). */
  timers: number;
  /** Every resource that keeps the event loop alive, by type (TCPWrap, TLSWrap, Timeout, …). */
  activeResources: Record<string, number>;
  /** Server only: authenticated sessions, TLS connections still in their handshake, and
   *  connections held in line for a handshake slot. */
  sessions?: number;
  handshaking?: number;
  queued?: number;
}

export function processDebug(): DebugStatus {
  const activeResources: Record<string, number> = {};
  for (const type of process.getActiveResourcesInfo()) activeResources[type] = (activeResources[type] ?? 0) + 1;
  let fds = -1;
  try {
    fds = readdirSync('/proc/self/fd').length - 1; // the directory handle readdir itself opened
  } catch {
    // Not Linux: leave -1.
  }
  return {
    pid: process.pid,
    rssBytes: process.memoryUsage.rss(),
    fds,
    timers: activeResources['Timeout'] ?? 0,
    activeResources,
  };
}
