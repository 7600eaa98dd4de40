// Drives a kube-apiserver stand-in process (scripts/kube-standin.ts) over its control socket,
// which works from any network namespace because it is a unix socket in the filesystem.
import { request } from 'node:http';
import type { MintOptions, StandinNode, StandinPod } from './kube-standin.js';

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
