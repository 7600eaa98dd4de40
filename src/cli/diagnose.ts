import { fetchStatus } from '../admin/index.js';
import { userMessage } from '../errors.js';
import { formatEndpoint } from '../routing/index.js';
import { ConfigError, DEFAULTS, cidr, int, list, parseEndpoint, type RawOptions } from './config.js';
import { formatReport, runChecks, type DiagnoseReport, type LocalDaemon, type Side } from './diagnose/checks.js';
import { controlPlaneChecks } from './diagnose/control-plane.js';
import { NODE_CHECKS, nodeContext } from './diagnose/node.js';

/**
 * `nodelink diagnose`: the checklist an operator runs when `kubectl logs` says "error dialing
 * backend", run by nodelink itself. Each check prints ✓ or ✗ and, when it fails, the fix;
 * checks that depend on a failed one are skipped (-), so the first ✗ is the cause. Exit code 1
 * when any check failed.
 *
 * This file picks the side and reads the flags. The checks are tables in diagnose/node.ts and
 * diagnose/control-plane.ts, run by diagnose/checks.ts.
 */

export type { Check, DiagnoseReport } from './diagnose/checks.js';

/** Flags only the node side takes: given any of them, the operator means the node side. */
const NODE_FLAGS = ['server', 'server-key', 'ca', 'server-name', 'key'];

/** A flag's value, undefined when empty; a repeated flag's last. */
function text(raw: RawOptions, flag: string): string | undefined {
  const value = Array.isArray(raw[flag]) ? (raw[flag] as unknown[]).at(-1) : raw[flag];
  return value === undefined || value === null || value === '' ? undefined : String(value);
}

async function askDaemon(socket: string): Promise<LocalDaemon> {
  try {
    return { socket, status: await fetchStatus(socket) };
  } catch (err) {
    return { socket, error: userMessage(err) };
  }
}

const sideOf = (daemon: LocalDaemon): Side => (daemon.status?.role === 'server' ? 'control-plane' : 'node');

/**
 * The side to check, and the daemon's answer: --side when given; the node side when a
 * node-only flag is given; else the role of the daemon that answers on --admin-socket (or on
 * the server's, then the client's default socket).
 */
async function chooseSide(raw: RawOptions): Promise<{ side: Side; daemon: LocalDaemon }> {
  const side = text(raw, 'side');
  if (side !== undefined && side !== 'node' && side !== 'control-plane')
    throw new ConfigError(`--side must be node or control-plane, got "${side}"`);
  const socket = text(raw, 'admin-socket');
  const defaultSocket = (s: Side): string => (s === 'node' ? DEFAULTS.clientAdminSocket : DEFAULTS.serverAdminSocket);
  if (side) return { side, daemon: await askDaemon(socket ?? defaultSocket(side)) };
  if (NODE_FLAGS.some((flag) => text(raw, flag) !== undefined))
    return { side: 'node', daemon: await askDaemon(socket ?? DEFAULTS.clientAdminSocket) };
  const pickSide = "--side node (with the client's --server and --server-key or --ca) or --side control-plane";
  if (socket) {
    const daemon = await askDaemon(socket);
    if (daemon.status) return { side: sideOf(daemon), daemon };
    throw new ConfigError(`${daemon.error}; without it diagnose cannot tell which side this is: pass ${pickSide}`);
  }
  for (const candidate of [DEFAULTS.serverAdminSocket, DEFAULTS.clientAdminSocket]) {
    const daemon = await askDaemon(candidate);
    if (daemon.status) return { side: sideOf(daemon), daemon };
  }
  throw new ConfigError(
    `no nodelink daemon answers on ${DEFAULTS.serverAdminSocket} or ${DEFAULTS.clientAdminSocket}, so diagnose cannot tell which side this is: pass the daemon's --admin-socket, or ${pickSide}`,
  );
}

/** Runs the checklist, prints it (text or --json), and returns the exit code. */
export async function diagnoseCommand(raw: RawOptions): Promise<number> {
  // The same patience and port as the server's own path checks.
  const timeoutMs = int(raw, 'timeout-ms', DEFAULTS.pathCheckTimeoutMs, 100, 60_000);
  const kubeletPort = int(raw, 'kubelet-port', DEFAULTS.pathCheckPort, 1, 65535);
  const { side, daemon } = await chooseSide(raw);
  let report: DiagnoseReport;
  let heading: string;
  if (side === 'control-plane') {
    const ctx = { daemon, kubeletPort, timeoutMs };
    report = await runChecks(side, controlPlaneChecks(ctx), ctx);
    heading = `nodelink diagnose — control plane (${daemon.socket})`;
  } else {
    // The client's config file may list several servers: diagnose checks the first.
    const [serverText] = list(raw, 'server');
    const ctx = nodeContext(
      {
        server: serverText ? parseEndpoint(serverText, 'server') : undefined,
        serverKey: text(raw, 'server-key'),
        caFile: text(raw, 'ca'),
        serverName: text(raw, 'server-name'),
        keyFile: text(raw, 'key'),
        name: text(raw, 'name') ?? (process.env['NODE_NAME'] || undefined),
        routes: list(raw, 'route').map((route) => cidr(route, 'route')),
        tun: text(raw, 'tun') ?? DEFAULTS.tun,
        kubeletPort,
        timeoutMs,
      },
      daemon,
    );
    report = await runChecks(side, NODE_CHECKS, ctx);
    const server = ctx.server ? `, server ${formatEndpoint(ctx.server)}` : '';
    heading = `nodelink diagnose — node${ctx.name ? ` ${ctx.name}` : ''}${server}`;
  }
  process.stdout.write(raw['json'] === true ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report, heading));
  return report.ok ? 0 : 1;
}
