// A STAND-IN for kube-apiserver, for tests, the demo and the load test only. There is no
// kube-apiserver binary on these machines, so this HTTPS server speaks the published API shapes
// that nodelink's Kubernetes mode uses, and nodelink talks to it through @kubernetes/client-node's
// own API classes and informer, exactly as it would to the real one:
//   POST /apis/authentication.k8s.io/v1/tokenreviews   TokenReview (spec.token, spec.audiences)
//   GET  /api/v1/namespaces/NS/pods/NAME                Pod (metadata.uid, spec.nodeName)
//   GET  /api/v1/nodes, /api/v1/nodes/NAME              NodeList, Node
//   GET  /api/v1/nodes?watch=true&resourceVersion=N     watch events, one JSON object a line
// It mints projected-style service-account tokens (JWTs with the kubernetes.io claims that
// pod-bound tokens carry, signed with a key of its own) and reviews them as kube-apiserver does:
// signature, expiry, audience, and that the bound pod still exists with the same UID.
//
// Run as a process (`node dist/scripts/kube-standin.js --listen HOST:PORT --control SOCKET
// --kubeconfig FILE`), it takes commands as JSON over HTTP on a unix socket, which works across
// network namespaces: POST /nodes, DELETE /nodes/NAME, POST /pods, DELETE /pods/NS/NAME,
// POST /tokens (mint), POST /bulk {nodes, pods, tokens}, POST /down {ms}, GET /counts.
import 'reflect-metadata';
import { createHmac, randomBytes, randomUUID, timingSafeEqual, webcrypto } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server as HttpServer,
  type ServerResponse,
} from 'node:http';
import { createServer, type Server } from 'node:https';
import type { Socket } from 'node:net';
import { pathToFileURL } from 'node:url';
import * as x509 from '@peculiar/x509';

export interface StandinNode {
  readonly name: string;
  readonly internalIPs: readonly string[];
  readonly podCIDRs: readonly string[];
}

export interface StandinPod {
  readonly namespace: string;
  readonly name: string;
  readonly nodeName: string;
  readonly uid?: string;
}

export interface MintOptions {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly pod: string;
  readonly audience?: string;
  readonly expiresInSec?: number;
  /** Kubernetes >= 1.30 adds the node to pod-bound tokens; older clusters do not. */
  readonly nodeClaim?: boolean;
}

type Json = Record<string, unknown>;
type Watcher = { res: ServerResponse };

const ISSUER = 'https://kubernetes.default.svc.cluster.local';
/** Watch events kept for resuming a watch from an older resourceVersion; older ones answer 410. */
const EVENT_HISTORY = 1000;

/** The stand-in; `start()` listens, `kubeconfig()` gives a client config that trusts it. */
export class KubeApiStandin {
  private readonly secret = randomBytes(32);
  /** The bearer token this server's clients must present (the server's own credential). */
  readonly clientToken = randomBytes(24).toString('base64url');
  private readonly nodes = new Map<string, Json>();
  private readonly pods = new Map<string, Json>();
  private readonly events: Array<{ rv: number; line: string }> = [];
  private readonly watchers = new Set<Watcher>();
  private readonly sockets = new Set<Socket>();
  private rv = 1;
  private downUntil = 0;
  private server: Server | undefined;
  private certPem = '';
  readonly counts = { tokenReviews: 0, podReads: 0, nodeLists: 0, nodeWatches: 0, unauthorized: 0, connections: 0 };
  url = '';

  async start(host = '127.0.0.1', port = 0): Promise<void> {
    const { certPem, keyPem } = await selfSignedCertificate(host);
    this.certPem = certPem;
    const server = createServer({ cert: certPem, key: keyPem }, (req, res) => this.handle(req, res));
    server.on('connection', (socket: Socket) => {
      if (Date.now() < this.downUntil) {
        socket.destroy();
        return;
      }
      this.counts.connections++;
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.server = server;
    const address = server.address() as { port: number };
    this.url = `https://${host.includes(':') ? `[${host}]` : host}:${address.port}`;
  }

  async stop(): Promise<void> {
    for (const watcher of this.watchers) watcher.res.destroy();
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  /** A kubeconfig (YAML is a superset of JSON) that trusts this server and carries the client token. */
  kubeconfig(): string {
    return JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [
        {
          name: 'standin',
          cluster: { server: this.url, 'certificate-authority-data': Buffer.from(this.certPem).toString('base64') },
        },
      ],
      users: [{ name: 'nodelink-server', user: { token: this.clientToken } }],
      contexts: [{ name: 'standin', context: { cluster: 'standin', user: 'nodelink-server' } }],
      'current-context': 'standin',
    });
  }

  /** Goes away for `ms`: open connections are cut and new ones are closed at once. */
  goDown(ms: number): void {
    this.downUntil = Date.now() + ms;
    for (const watcher of this.watchers) watcher.res.destroy();
    for (const socket of this.sockets) socket.destroy();
  }

  upsertNode(node: StandinNode): void {
    const existing = this.nodes.get(node.name);
    const object: Json = {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name: node.name,
        uid: (existing?.['metadata'] as Json | undefined)?.['uid'] ?? randomUUID(),
        resourceVersion: String(++this.rv),
      },
      spec: { podCIDR: node.podCIDRs[0], podCIDRs: [...node.podCIDRs] },
      status: {
        addresses: [
          ...node.internalIPs.map((address) => ({ type: 'InternalIP', address })),
          { type: 'Hostname', address: node.name },
        ],
      },
    };
    this.nodes.set(node.name, object);
    this.emit(existing ? 'MODIFIED' : 'ADDED', object);
  }

  deleteNode(name: string): void {
    const existing = this.nodes.get(name);
    if (!existing) return;
    this.nodes.delete(name);
    const metadata = { ...(existing['metadata'] as Json), resourceVersion: String(++this.rv) };
    this.emit('DELETED', { ...existing, metadata });
  }

  upsertPod(pod: StandinPod): string {
    const uid = pod.uid ?? randomUUID();
    this.pods.set(`${pod.namespace}/${pod.name}`, {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: pod.name, namespace: pod.namespace, uid, resourceVersion: String(++this.rv) },
      spec: { nodeName: pod.nodeName, serviceAccountName: 'nodelink-client' },
    });
    return uid;
  }

  deletePod(namespace: string, name: string): void {
    this.pods.delete(`${namespace}/${name}`);
  }

  /** A projected-style token for a pod that exists here (its UID and node are bound in). */
  mint(options: MintOptions): string {
    const pod = this.pods.get(`${options.namespace}/${options.pod}`);
    if (!pod) throw new Error(`stand-in: no pod ${options.namespace}/${options.pod} to bind a token to`);
    const nodeName = (pod['spec'] as Json)['nodeName'] as string;
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      aud: [options.audience ?? 'nodelink'],
      exp: now + (options.expiresInSec ?? 3600),
      iat: now,
      nbf: now,
      iss: ISSUER,
      jti: randomUUID(),
      sub: `system:serviceaccount:${options.namespace}:${options.serviceAccount}`,
      'kubernetes.io': {
        namespace: options.namespace,
        serviceaccount: { name: options.serviceAccount, uid: 'sa-uid' },
        pod: { name: options.pod, uid: (pod['metadata'] as Json)['uid'] },
        ...(options.nodeClaim === false ? {} : { node: { name: nodeName, uid: this.nodeUid(nodeName) } }),
      },
    };
    const head = b64(JSON.stringify({ alg: 'HS256', kid: 'standin' }));
    const body = b64(JSON.stringify(claims));
    return `${head}.${body}.${createHmac('sha256', this.secret).update(`${head}.${body}`).digest('base64url')}`;
  }

  private nodeUid(name: string): string {
    return ((this.nodes.get(name)?.['metadata'] as Json | undefined)?.['uid'] as string | undefined) ?? '';
  }

  private emit(type: string, object: Json): void {
    const line = `${JSON.stringify({ type, object })}\n`;
    this.events.push({ rv: this.rv, line });
    if (this.events.length > EVENT_HISTORY) this.events.shift();
    for (const watcher of this.watchers) watcher.res.write(line);
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    if (req.headers.authorization !== `Bearer ${this.clientToken}`) {
      this.counts.unauthorized++;
      return status(res, 401, 'Unauthorized', 'Unauthorized');
    }
    const url = new URL(req.url ?? '/', 'https://standin');
    const path = url.pathname;
    if (req.method === 'POST' && path === '/apis/authentication.k8s.io/v1/tokenreviews') {
      return void readBody(req).then((body) => {
        this.counts.tokenReviews++;
        const spec = ((body['spec'] as Json | undefined) ?? {}) as { token?: string; audiences?: string[] };
        const review = this.review(spec.token ?? '', spec.audiences ?? []);
        send(res, 201, {
          apiVersion: 'authentication.k8s.io/v1',
          kind: 'TokenReview',
          metadata: { creationTimestamp: null },
          spec,
          status: review,
        });
      });
    }
    if (req.method !== 'GET')
      return status(res, 405, 'MethodNotAllowed', 'the stand-in serves only what nodelink uses');
    const pod = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(path);
    if (pod) {
      this.counts.podReads++;
      const object = this.pods.get(`${pod[1]}/${pod[2]}`);
      return object ? send(res, 200, object) : status(res, 404, 'NotFound', `pods "${pod[2]}" not found`);
    }
    const node = /^\/api\/v1\/nodes\/([^/]+)$/.exec(path);
    if (node) {
      const object = this.nodes.get(node[1]!);
      return object ? send(res, 200, object) : status(res, 404, 'NotFound', `nodes "${node[1]}" not found`);
    }
    if (path === '/api/v1/nodes') {
      if (url.searchParams.get('watch') === 'true')
        return this.watch(res, Number(url.searchParams.get('resourceVersion')));
      this.counts.nodeLists++;
      return send(res, 200, {
        apiVersion: 'v1',
        kind: 'NodeList',
        metadata: { resourceVersion: String(this.rv) },
        items: [...this.nodes.values()],
      });
    }
    status(res, 404, 'NotFound', `the stand-in does not serve ${path}`);
  }

  private watch(res: ServerResponse, from: number): void {
    this.counts.nodeWatches++;
    const oldest = this.events[0]?.rv ?? this.rv;
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    if (from && from < oldest - 1) {
      const gone = { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'Expired', code: 410 };
      res.end(`${JSON.stringify({ type: 'ERROR', object: { ...gone, message: 'too old resource version' } })}\n`);
      return;
    }
    for (const event of this.events) if (event.rv > from) res.write(event.line);
    const watcher = { res };
    this.watchers.add(watcher);
    res.on('close', () => this.watchers.delete(watcher));
  }

  /** TokenReview as kube-apiserver decides it for a bound service-account token. */
  private review(token: string, audiences: readonly string[]): Json {
    const refuse = (why: string): Json => ({ authenticated: false, error: `[invalid bearer token, ${why}]` });
    const parts = token.split('.');
    if (parts.length !== 3) return refuse('token is malformed');
    const expected = createHmac('sha256', this.secret).update(`${parts[0]}.${parts[1]}`).digest();
    const given = Buffer.from(parts[2]!, 'base64url');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return refuse('signature is invalid');
    const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as {
      aud: string[];
      exp: number;
      sub: string;
      'kubernetes.io': {
        namespace: string;
        pod: { name: string; uid: string };
        node?: { name: string; uid: string };
        serviceaccount: { name: string; uid: string };
      };
    };
    if (claims.exp * 1000 < Date.now()) return refuse('service account token has expired');
    const wanted = audiences.length > 0 ? audiences : ['https://kubernetes.default.svc'];
    const matched = wanted.filter((audience) => claims.aud.includes(audience));
    if (matched.length === 0) {
      return refuse(
        `token audiences ${JSON.stringify(claims.aud)} is invalid for the target audiences ${JSON.stringify(wanted)}`,
      );
    }
    const k8s = claims['kubernetes.io'];
    const pod = this.pods.get(`${k8s.namespace}/${k8s.pod.name}`);
    if (!pod || (pod['metadata'] as Json)['uid'] !== k8s.pod.uid) {
      return refuse(`pod "${k8s.pod.name}" not found or its UID changed: the token is bound to a deleted pod`);
    }
    const extra: Record<string, string[]> = {
      'authentication.kubernetes.io/pod-name': [k8s.pod.name],
      'authentication.kubernetes.io/pod-uid': [k8s.pod.uid],
      'authentication.kubernetes.io/credential-id': ['JTI=standin'],
    };
    if (k8s.node) {
      extra['authentication.kubernetes.io/node-name'] = [k8s.node.name];
      extra['authentication.kubernetes.io/node-uid'] = [k8s.node.uid];
    }
    return {
      authenticated: true,
      user: {
        username: claims.sub,
        uid: k8s.serviceaccount.uid,
        groups: ['system:serviceaccounts', `system:serviceaccounts:${k8s.namespace}`, 'system:authenticated'],
        extra,
      },
      audiences: matched,
    };
  }
}

function b64(text: string): string {
  return Buffer.from(text).toString('base64url');
}

function send(res: ServerResponse, code: number, body: Json): void {
  res.writeHead(code, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function status(res: ServerResponse, code: number, reason: string, message: string): void {
  send(res, code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
}

function readBody(req: IncomingMessage, maxBytes = 1 << 20): Promise<Json> {
  // Events, not `for await`: a storm sends thousands of small bodies, and an async iterator per
  // request costs the stand-in more than the review it answers.
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= maxBytes) chunks.push(chunk);
    });
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as Json);
      } catch {
        resolve({});
      }
    });
    req.on('error', () => resolve({}));
  });
}

/** A self-signed ECDSA certificate for `host` (an IP address), as a stand-in API server presents. */
export async function selfSignedCertificate(
  host: string,
  commonName = 'kube-apiserver-standin',
): Promise<{ certPem: string; keyPem: string }> {
  x509.cryptoProvider.set(webcrypto as unknown as Crypto);
  const algorithm = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await webcrypto.subtle.generateKey(algorithm, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: `CN=${commonName}`,
    notBefore: new Date(Date.now() - 3600_000),
    notAfter: new Date(Date.now() + 86400_000),
    keys: keys as unknown as CryptoKeyPair,
    signingAlgorithm: algorithm,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.SubjectAlternativeNameExtension([{ type: 'ip', value: host }]),
    ],
  });
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${Buffer.from(pkcs8)
    .toString('base64')
    .replace(/(.{64})/g, '$1\n')
    .trimEnd()}\n-----END PRIVATE KEY-----\n`;
  return { certPem: cert.toString('pem'), keyPem };
}

/** Many Nodes and pods at once, and a token for each pod: what a load test of thousands needs. */
function bulk(standin: KubeApiStandin, body: Json): { tokens: string[] } {
  const {
    nodes = [],
    pods = [],
    tokens = [],
  } = body as {
    nodes?: StandinNode[];
    pods?: StandinPod[];
    tokens?: MintOptions[];
  };
  for (const node of nodes) standin.upsertNode(node);
  for (const pod of pods) standin.upsertPod(pod);
  return { tokens: tokens.map((options) => standin.mint(options)) };
}

/** The control socket of the process mode: JSON commands from tests in other namespaces. */
function controlServer(standin: KubeApiStandin): HttpServer {
  return createHttpServer((req, res) => {
    // Bulk requests of a load test carry thousands of objects.
    void readBody(req, 64 << 20).then((body) => {
      const url = new URL(req.url ?? '/', 'http://control');
      try {
        const parts = url.pathname.split('/').filter(Boolean);
        let answer: unknown = { ok: true };
        if (req.method === 'POST' && parts[0] === 'nodes') standin.upsertNode(body as unknown as StandinNode);
        else if (req.method === 'DELETE' && parts[0] === 'nodes') standin.deleteNode(parts[1]!);
        else if (req.method === 'POST' && parts[0] === 'pods')
          answer = { uid: standin.upsertPod(body as unknown as StandinPod) };
        else if (req.method === 'DELETE' && parts[0] === 'pods') standin.deletePod(parts[1]!, parts[2]!);
        else if (req.method === 'POST' && parts[0] === 'tokens')
          answer = { token: standin.mint(body as unknown as MintOptions) };
        else if (req.method === 'POST' && parts[0] === 'down') standin.goDown(Number(body['ms']));
        else if (req.method === 'POST' && parts[0] === 'bulk') answer = bulk(standin, body);
        else if (req.method === 'GET' && parts[0] === 'counts') answer = standin.counts;
        else throw new Error(`unknown control request ${req.method} ${url.pathname}`);
        send(res, 200, answer as Json);
      } catch (err) {
        send(res, 400, { error: (err as Error).message });
      }
    });
  });
}

async function main(argv: readonly string[]): Promise<void> {
  const flag = (name: string): string => {
    const at = argv.indexOf(`--${name}`);
    const value = at >= 0 ? argv[at + 1] : undefined;
    if (!value) throw new Error(`kube-standin: --${name} is required`);
    return value;
  };
  const listen = flag('listen');
  const separator = listen.lastIndexOf(':');
  const standin = new KubeApiStandin();
  await standin.start(listen.slice(0, separator).replace(/^\[|\]$/g, ''), Number(listen.slice(separator + 1)));
  writeFileSync(flag('kubeconfig'), standin.kubeconfig(), { mode: 0o600 });
  const socket = flag('control');
  rmSync(socket, { force: true });
  const control = controlServer(standin);
  control.listen(socket, () => process.stdout.write(`kube-standin ready ${standin.url}\n`));
  const stop = (): void => {
    control.close();
    void standin.stop().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(1);
  });
}
