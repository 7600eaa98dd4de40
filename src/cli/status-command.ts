import { existsSync } from 'node:fs';
import { fetchStatus, formatStatus } from '../admin/index.js';
import { userMessage } from '../errors.js';
import { ConfigError, DEFAULTS, type RawOptions } from './config.js';

/** The daemon's admin socket: --admin-socket, else the server's if present, else the client's. */
function adminSocketPath(raw: RawOptions): string {
  const path = raw['admin-socket'] as string | undefined;
  if (path) return path;
  return existsSync(DEFAULTS.serverAdminSocket) ? DEFAULTS.serverAdminSocket : DEFAULTS.clientAdminSocket;
}

/**
 * `nodelink status [--json] [--watch [--interval S]]`. With --watch the screen is redrawn every
 * interval until Ctrl-C (or --count refreshes); a daemon that goes away is shown as an error
 * line, not an exit, so an operator can watch a restart. --json with --watch prints one JSON
 * document per line.
 */
export async function statusCommand(raw: RawOptions): Promise<void> {
  const path = adminSocketPath(raw);
  const json = raw['json'] === true;
  if (raw['watch'] !== true) {
    const status = await fetchStatus(path);
    process.stdout.write(json ? `${JSON.stringify(status, null, 2)}\n` : formatStatus(status));
    return;
  }
  const intervalS = Number(raw['interval'] ?? DEFAULTS.statusIntervalS);
  if (!Number.isFinite(intervalS) || intervalS < 0.1 || intervalS > 3600)
    throw new ConfigError(`--interval must be 0.1 to 3600 seconds, got "${String(raw['interval'])}"`);
  const count = raw['count'] === undefined ? Infinity : Number(raw['count']);
  if (!(count >= 1)) throw new ConfigError(`--count must be at least 1, got "${String(raw['count'])}"`);
  const tty = process.stdout.isTTY === true;
  for (let i = 0; i < count; i++) {
    if (i > 0) await new Promise((resolve) => setTimeout(resolve, intervalS * 1000));
    let text: string;
    try {
      const status = await fetchStatus(path);
      text = json ? `${JSON.stringify(status)}\n` : formatStatus(status);
    } catch (err) {
      text = json ? `${JSON.stringify({ error: userMessage(err) })}\n` : `nodelink: ${userMessage(err)}\n`;
    }
    if (tty && !json) {
      // Home, clear screen: redraw in place like `watch`.
      process.stdout.write(`\x1b[H\x1b[2J${new Date().toISOString()}  every ${intervalS}s, Ctrl-C to stop\n\n${text}`);
    } else {
      process.stdout.write(json ? text : `${text}\n`);
    }
  }
}
