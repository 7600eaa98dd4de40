// Runs nodelink itself on a Harness topology, through the real CLI: a server in the control
// plane namespace and one client per node namespace. Used by the demo and the namespace tests.

import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeKey, generateSeed, keyPairFromSeed } from '../src/auth/index.js';
import type { DaemonStatus } from '../src/admin/index.js';
import type { Harness, ManagedProcess } from './harness/index.js';
import { waitFor } from '../test/support/wait.js';

export const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');

export interface Identity {
  readonly keyFile: string;
  readonly publicKey: string;
}

export interface ClusterOptions {
  /** Node numbers that get a peers-file entry (default: all of the harness's nodes). */
  readonly peers?: number[];
  readonly extraServerArgs?: string[];
  readonly mtu?: number;
  /** Extra environment of the server process. */
  readonly serverEnv?: Record<string, string>;
}

/** Runs `nodelink ARGS` (optionally inside a namespace) and returns its exit code and output. */
export function runCli(
  args: string[],
  opts: { ns?: string; input?: string; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const argv = opts.ns ? ['netns', 'exec', opts.ns, process.execPath, CLI, ...args] : [CLI, ...args];
  const command = opts.ns ? 'ip' : process.execPath;
  return new Promise((resolve) => {
    const child = execFile(
      command,
      argv,
      { timeout: opts.timeoutMs ?? 20_000, maxBuffer: 256 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
    child.stdin?.end(opts.input ?? '');
  });
}

export class NodelinkCluster {
  readonly serverKey: Identity;
  readonly nodeKeys = new Map<number, Identity>();
  readonly peersFile: string;
  readonly serverSocket: string;
  server: ManagedProcess | undefined;
  readonly clients = new Map<number, ManagedProcess>();

  constructor(
    readonly h: Harness,
    readonly options: ClusterOptions = {},
  ) {
    this.serverKey = this.makeIdentity('server');
    for (let n = 1; n <= h.nodes; n++) this.nodeKeys.set(n, this.makeIdentity(`node-${n}`));
    this.peersFile = path.join(h.dir, 'peers.json');
    this.serverSocket = path.join(h.dir, 'server.sock');
    const peers = (options.peers ?? [...this.nodeKeys.keys()]).map((n) => ({
      name: h.nodeName(n),
      publicKey: this.nodeKeys.get(n)!.publicKey,
      allowedIPs: h.nodeRoutes(n),
    }));
    writeFileSync(this.peersFile, JSON.stringify({ peers }, null, 2));
  }

  /** A fresh key file (0600) in the harness's directory. */
  makeIdentity(name: string): Identity {
    const seed = generateSeed();
    const keyFile = path.join(this.h.dir, `${name}.key`);
    writeFileSync(keyFile, `${encodeKey(seed)}\n`, { mode: 0o600 });
    return { keyFile, publicKey: encodeKey(keyPairFromSeed(seed).publicKey) };
  }

  clientSocket(n: number): string {
    return path.join(this.h.dir, `client-${n}.sock`);
  }

  async startServer(): Promise<ManagedProcess> {
    const { h } = this;
    const args = [
      process.execPath,
      CLI,
      'server',
      '--listen',
      h.serverEndpoint,
      '--key',
      this.serverKey.keyFile,
      '--peers',
      this.peersFile,
      '--tunnel-cidr',
      h.tunnelCIDR,
      '--tunnel-cidr',
      h.tunnelCIDR6,
      '--admin-socket',
      this.serverSocket,
      ...(this.options.mtu ? ['--mtu', String(this.options.mtu)] : []),
      ...(this.options.extraServerArgs ?? []),
    ];
    this.server = h.spawn(h.ns.cp, args, { name: 'nodelink-server', env: this.options.serverEnv });
    await this.server.waitForOutput('server ready', 15_000);
    return this.server;
  }

  clientArgs(
    n: number,
    overrides: { name?: string; routes?: string[]; identity?: Identity; serverKey?: string } = {},
  ): string[] {
    const { h } = this;
    const identity = overrides.identity ?? this.nodeKeys.get(n)!;
    return [
      process.execPath,
      CLI,
      'client',
      '--server',
      h.serverEndpoint,
      '--server-key',
      overrides.serverKey ?? this.serverKey.publicKey,
      '--key',
      identity.keyFile,
      '--name',
      overrides.name ?? h.nodeName(n),
      ...(overrides.routes ?? h.nodeRoutes(n)).flatMap((route) => ['--route', route]),
      '--admin-socket',
      this.clientSocket(n),
      ...(this.options.mtu ? ['--mtu', String(this.options.mtu)] : []),
    ];
  }

  /** Starts node n's client with the usual flags, and `extraArgs` after them (a later flag wins). */
  startClient(
    n: number,
    extraArgs: readonly string[] = [],
    name = `nodelink-client-${n}`,
    env?: Record<string, string>,
  ): ManagedProcess {
    const proc = this.h.spawn(this.h.ns.node(n), [...this.clientArgs(n), ...extraArgs], { name, env });
    this.clients.set(n, proc);
    return proc;
  }

  async status(socket = this.serverSocket): Promise<DaemonStatus> {
    const result = await runCli(['status', '--json', '--admin-socket', socket]);
    if (result.code !== 0) throw new Error(`nodelink status failed: ${result.stderr.trim()}`);
    return JSON.parse(result.stdout) as DaemonStatus;
  }

  /** Waits until the server shows every given node connected. */
  async waitConnected(nodes: number[], timeoutMs = 15_000): Promise<void> {
    const names = nodes.map((n) => this.h.nodeName(n));
    await waitFor(
      `nodes ${names.join(', ')} connected to the server`,
      async () => {
        const status = await this.status().catch(() => undefined);
        return names.every((name) => status?.peers.some((peer) => peer.name === name && peer.connected));
      },
      timeoutMs,
    );
  }

  /** Starts the server and every node's client, and waits for all to connect. */
  async up(): Promise<void> {
    await this.startServer();
    const nodes = [...this.nodeKeys.keys()];
    for (const n of nodes) this.startClient(n);
    await this.waitConnected(nodes);
  }

  async stop(): Promise<void> {
    await Promise.all([...this.clients.values()].map((proc) => proc.stop()));
    await this.server?.stop();
  }
}
