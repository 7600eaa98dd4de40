// A local HTTPS stand-in for kube-apiserver that serves the recorded Node objects and error
// bodies of test/fixtures/k8s/api.recording.json on 127.0.0.1, with its own CA-less
// self-signed certificate and a bearer token, so the real @kubernetes/client-node path runs.

import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { selfSignedCertificate } from '../../scripts/kube-standin.js';

export const RECORDING: Record<string, unknown> = JSON.parse(
  readFileSync(new URL('../../../test/fixtures/k8s/api.recording.json', import.meta.url), 'utf8'),
) as Record<string, unknown>;

export const TOKEN = 'recorded-test-token';

/** What GET /api/v1/nodes/NAME answers: a recording key (Node or Status), or "hang". */
export type Answer = string | 'hang';

export interface RecordedApiServer {
  readonly url: string;
  readonly caPem: string;
  /** name → answer; change it to simulate a Node update or an outage. */
  readonly answers: Map<string, Answer>;
  readonly requests: Array<{ path: string; authorization: string | undefined }>;
  /** A kubeconfig file for this server (token auth, CA pinned); `ca` and `server` override. */
  writeKubeconfig(ca?: string, server?: string): string;
  close(): Promise<void>;
}

export async function startRecordedApiServer(): Promise<RecordedApiServer> {
  const { certPem, keyPem } = await selfSignedCertificate('127.0.0.1', 'recorded-kube-apiserver');
  const answers = new Map<string, Answer>();
  const requests: RecordedApiServer['requests'] = [];
  const sockets = new Set<Socket>();
  const dir = mkdtempSync(join(tmpdir(), 'nodelink-k8s-'));
  const server: Server = createServer({ cert: certPem, key: keyPem }, (req, res) => {
    requests.push({ path: req.url ?? '', authorization: req.headers.authorization });
    const send = (key: string): void => {
      const body = RECORDING[key] as { kind?: string; code?: number } | undefined;
      if (!body) throw new Error(`no recording "${key}"`);
      res.writeHead(body.kind === 'Status' ? (body.code ?? 500) : 200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return send('status-401');
    const match = /^\/api\/v1\/nodes\/([^/?]+)/.exec(req.url ?? '');
    const answer = match ? answers.get(decodeURIComponent(match[1]!)) : undefined;
    if (answer === 'hang') return; // never answers: the client's deadline must end it
    send(answer ?? 'status-404');
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  const url = `https://127.0.0.1:${port}`;
  let files = 0;
  return {
    url,
    caPem: certPem,
    answers,
    requests,
    writeKubeconfig(ca = certPem, server = url) {
      const path = join(dir, `kubeconfig-${++files}`);
      writeFileSync(
        path,
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Config',
          clusters: [
            { name: 'recorded', cluster: { server, 'certificate-authority-data': Buffer.from(ca).toString('base64') } },
          ],
          users: [{ name: 'nodelink', user: { token: TOKEN } }],
          contexts: [{ name: 'recorded', context: { cluster: 'recorded', user: 'nodelink' } }],
          'current-context': 'recorded',
        }),
        { mode: 0o600 },
      );
      return path;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
