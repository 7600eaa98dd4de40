// Drives a kube-apiserver stand-in process (scripts/kube-standin.ts) over its control socket,
// which works from any network namespace because it is a unix socket in the filesystem.
import { request } from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Harness, ManagedProcess } from './harness/index.js';
import type { MintOptions, StandinNode, StandinPod } from './kube-standin.js';

const STANDIN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'kube-standin.js');

/** The stand-in as a process in the harness's control-plane namespace, where the server runs. */
export interface RunningStandin {
  readonly process: ManagedProcess;
  readonly control: StandinControl;
  /** A kubeconfig for the server, in the harness's directory. */
  readonly kubeconfig: string;
}

/** Starts the stand-in on 127.0.0.1:6443 of the control-plane namespace and waits until it answers. */
export async function startKubeStandin(h: Harness): Promise<RunningStandin> {
  const socket = path.join(h.dir, 'kube-standin.sock');
  const kubeconfig = path.join(h.dir, 'kubeconfig.json');
  // PROFILE_STANDIN=DIR writes a CPU profile of the stand-in there (node --cpu-prof), like
  // PROFILE_SERVER for the server: in a load test its reviews take CPU from the same cores.
  const profile = process.env['PROFILE_STANDIN'];
  const proc = h.spawn(
    h.ns.cp,
    [
      process.execPath,
      ...(profile ? ['--cpu-prof', `--cpu-prof-dir=${profile}`] : []),
      STANDIN,
      '--listen',
      '127.0.0.1:6443',
      '--control',
      socket,
      '--kubeconfig',
      kubeconfig,
    ],
    { name: 'kube-standin' },
  );
  await proc.waitForOutput('kube-standin ready', 20_000);
  return { process: proc, control: new StandinControl(socket), kubeconfig };
}

export class StandinControl {
  constructor(readonly socketPath: string) {}

  private call<T>(method: string, path: string, body?: unknown): Promise<T> {
    return new Promise((resolve, reject) => {
      const req = request({ socketPath: this.socketPath, method, path, timeout: 5000 }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const parsed = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as T & { error?: string };
          if (res.statusCode !== 200) reject(new Error(`kube stand-in: ${parsed.error ?? res.statusCode}`));
          else resolve(parsed);
        });
      });
      req.on('timeout', () => req.destroy(new Error('kube stand-in: no answer on the control socket')));
      req.on('error', reject);
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }

  upsertNode(node: StandinNode): Promise<unknown> {
    return this.call('POST', '/nodes', node);
  }

  deleteNode(name: string): Promise<unknown> {
    return this.call('DELETE', `/nodes/${name}`);
  }

  async upsertPod(pod: StandinPod): Promise<string> {
    return (await this.call<{ uid: string }>('POST', '/pods', pod)).uid;
  }

  deletePod(namespace: string, name: string): Promise<unknown> {
    return this.call('DELETE', `/pods/${namespace}/${name}`);
  }

  async mint(options: MintOptions): Promise<string> {
    return (await this.call<{ token: string }>('POST', '/tokens', options)).token;
  }

  /** Creates all `nodes` and `pods`, then mints one token per entry of `tokens`, in one call. */
  async bulk(request: { nodes?: StandinNode[]; pods?: StandinPod[]; tokens?: MintOptions[] }): Promise<string[]> {
    return (await this.call<{ tokens: string[] }>('POST', '/bulk', request)).tokens;
  }

  goDown(ms: number): Promise<unknown> {
    return this.call('POST', '/down', { ms });
  }

  counts(): Promise<Record<string, number>> {
    return this.call('GET', '/counts');
  }
}
