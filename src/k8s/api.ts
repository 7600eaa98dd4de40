import { existsSync } from 'node:fs';
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest, type RequestOptions as HttpsRequestOptions } from 'node:https';
import { homedir } from 'node:os';
import { join } from 'node:path';
import {
  ApiException,
  CoreV1Api,
  KubeConfig,
  Observable,
  type RequestContext,
  type ResponseContext,
  type V1Node,
} from '@kubernetes/client-node';
import { KubernetesError } from './errors.js';
import type { NodeLike } from './node-routes.js';

/** Reads Node objects. The real one talks to kube-apiserver; tests pass a recorded server or a fake. */
export interface NodeSource {
  getNode(name: string): Promise<NodeLike>;
  /** The API server's URL, for messages. */
  readonly server: string;
}

/** One API request never waits longer than this; the caller retries or fails on its own terms. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

/** Where the kubelet mounts a pod's service-account token and the cluster CA. */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/**
 * Where the credentials come from, in the order a pod and an operator expect: an explicit
 * `--kubeconfig`, the pod's service account (in-cluster: KUBERNETES_SERVICE_HOST/PORT, token and
 * CA under `root` + SERVICE_ACCOUNT_DIR), then `$KUBECONFIG` or ~/.kube/config.
 */
export function loadKubeConfig(path?: string, env: NodeJS.ProcessEnv = process.env, root = ''): KubeConfig {
  const kc = new KubeConfig();
  try {
    if (path) {
      if (!existsSync(path))
        throw new KubernetesError('k8s_config', `kubeconfig ${path} does not exist: fix --kubeconfig`);
      kc.loadFromFile(path);
    } else if (env['KUBERNETES_SERVICE_HOST']) {
      for (const file of ['token', 'ca.crt']) {
        if (!existsSync(`${root}${SERVICE_ACCOUNT_DIR}/${file}`)) {
          throw new KubernetesError(
            'k8s_config',
            `in a pod but ${SERVICE_ACCOUNT_DIR}/${file} is missing: set automountServiceAccountToken: true and serviceAccountName (deploy/base), or pass --kubeconfig`,
          );
        }
      }
      kc.loadFromCluster(root);
    } else if (env['KUBECONFIG'] || existsSync(join(env['HOME'] ?? homedir(), '.kube', 'config'))) {
      kc.loadFromDefault();
    } else {
      throw new KubernetesError(
        'k8s_config',
        'no Kubernetes credentials: run inside a pod with a service account, or pass --kubeconfig (or set KUBECONFIG)',
      );
    }
  } catch (err) {
    if (err instanceof KubernetesError) throw err;
    throw new KubernetesError(
      'k8s_config',
      `cannot load the Kubernetes config${path ? ` ${path}` : ''}: ${oneLine((err as Error).message)}`,
    );
  }
  if (!kc.getCurrentCluster()) {
    throw new KubernetesError(
      'k8s_config',
      `the Kubernetes config${path ? ` ${path}` : ''} has no current cluster: set current-context`,
    );
  }
  return kc;
}

/** Reads Node objects through @kubernetes/client-node, with a deadline on every request. */
export class KubeNodeSource implements NodeSource {
  private readonly api: CoreV1Api;
  readonly server: string;

  constructor(
    kc: KubeConfig,
    private readonly timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
  ) {
    this.api = kc.makeApiClient(CoreV1Api);
    this.server = kc.getCurrentCluster()?.server ?? '?';
  }

  async getNode(name: string): Promise<V1Node> {
    try {
      return await this.api.readNode({ name }, deadlineOptions(this.timeoutMs));
    } catch (err) {
      throw describeApiError(err, `get Node "${name}"`, this.server, this.timeoutMs, {
        forbidden: 'grant the service account "get" on nodes (deploy/base/rbac.yaml)',
        notFound: `there is no Node "${name}" in the Kubernetes API (404): set NODE_NAME (or --name) to this node's name, from spec.nodeName`,
      });
    }
  }
}

/** What a 403 and a 404 mean for one kind of request: the RBAC to grant; the whole 404 message. */
export interface RequestHints {
  readonly forbidden: string;
  readonly notFound: string;
}

/** How long the kubeconfig's credentials are reused before they are applied again. */
const CREDENTIALS_REFRESH_MS = 10_000;

/** Kept-alive connections to kube-apiserver at most, per KubeJsonClient. */
const MAX_SOCKETS = 32;

interface PreparedRequests {
  readonly agent: HttpAgent;
  readonly headers: Readonly<Record<string, string>>;
  readonly at: number;
}

/**
 * JSON requests to kube-apiserver for the calls a reconnect storm makes by the thousand
 * (TokenReviews, Pod reads). The generated client spends about as much CPU on each call as
 * nodelink spends on a node's whole hello: a fetch shim, its serializer, and a new agent and a
 * CA file read per request. Here the kubeconfig's credentials (bearer token, exec plugin, token
 * file, client certificate, CA, proxy) are applied by @kubernetes/client-node itself once per
 * CREDENTIALS_REFRESH_MS (it re-reads token files on its own schedule), and every request goes
 * over one pool of kept-alive connections. Failures are ApiException (HTTP status) or network errors, as the
 * generated client's, so describeApiError words them the same way.
 */
export class KubeJsonClient {
  private prepared: Promise<PreparedRequests> | undefined;
  private keepAlive: { agent: HttpsAgent; tls: readonly unknown[] } | undefined;
  private readonly base: URL;
  readonly server: string;

  constructor(private readonly kc: KubeConfig) {
    this.server = kc.getCurrentCluster()?.server ?? '?';
    this.base = new URL(this.server);
  }

  /** `method` `path` (below the server's URL) with `body` as JSON; the parsed answer, or throws. */
  async request<T>(method: 'GET' | 'POST', path: string, body: unknown, timeoutMs: number): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const answer = await this.send(await this.prepare(), method, path, payload, timeoutMs);
    if (answer.status < 200 || answer.status > 299) {
      throw new ApiException(answer.status, `HTTP ${answer.status}`, answer.text, answer.headers);
    }
    try {
      return JSON.parse(answer.text) as T;
    } catch {
      throw new KubernetesError(
        'k8s_api',
        `the Kubernetes API at ${this.server} answered ${method} ${path} with something that is not JSON: check the server address`,
      );
    }
  }

  close(): void {
    this.keepAlive?.agent.destroy();
    this.keepAlive = undefined;
  }

  private prepare(): Promise<PreparedRequests> {
    const current = this.prepared;
    if (current) {
      return current.then((prepared) => {
        if (Date.now() - prepared.at < CREDENTIALS_REFRESH_MS || this.prepared !== current) return prepared;
        this.prepared = undefined;
        return this.prepare();
      });
    }
    const next = this.build();
    this.prepared = next;
    next.catch(() => {
      if (this.prepared === next) this.prepared = undefined;
    });
    return next;
  }

  private async build(): Promise<PreparedRequests> {
    const options: HttpsRequestOptions = {};
    await this.kc.applyToHTTPSOptions(options);
    const headers: Record<string, string> = { accept: 'application/json', 'content-type': 'application/json' };
    for (const [name, value] of Object.entries(options.headers ?? {})) {
      if (value !== undefined) headers[name.toLowerCase()] = Array.isArray(value) ? value.join(', ') : String(value);
    }
    if (options.auth) headers['authorization'] = `Basic ${Buffer.from(options.auth).toString('base64')}`;
    const given = options.agent;
    // A proxy's agent is used as given; a direct HTTPS connection is kept alive, and is made
    // again only when the TLS material (a rotated client certificate, a new CA) changes.
    if (!(given instanceof HttpsAgent)) {
      return {
        agent: given instanceof HttpAgent ? given : new HttpAgent({ keepAlive: true }),
        headers,
        at: Date.now(),
      };
    }
    const tls = TLS_OPTIONS.map((name) => (given.options as Record<string, unknown>)[name]);
    if (!this.keepAlive || tls.some((value, i) => !sameOption(value, this.keepAlive!.tls[i]))) {
      const old = this.keepAlive?.agent;
      this.keepAlive = {
        agent: new HttpsAgent({ ...given.options, keepAlive: true, maxSockets: MAX_SOCKETS, scheduling: 'lifo' }),
        tls,
      };
      // Requests still on the old connections finish within their deadline.
      if (old) setTimeout(() => old.destroy(), 2 * DEFAULT_REQUEST_TIMEOUT_MS).unref();
    }
    return { agent: this.keepAlive.agent, headers, at: Date.now() };
  }

  private send(
    prepared: PreparedRequests,
    method: string,
    path: string,
    payload: string | undefined,
    timeoutMs: number,
  ): Promise<{ status: number; text: string; headers: Record<string, string> }> {
    const { base } = this;
    const request = base.protocol === 'http:' ? httpRequest : httpsRequest;
    const headers =
      payload === undefined
        ? prepared.headers
        : { ...prepared.headers, 'content-length': String(Buffer.byteLength(payload)) };
    return new Promise((resolve, reject) => {
      const req = request(
        {
          method,
          host: base.hostname.replace(/^\[|\]$/g, ''),
          port: base.port || undefined,
          path: `${base.pathname.replace(/\/$/, '')}${path}`,
          headers,
          agent: prepared.agent,
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (text += chunk));
          res.on('end', () => {
            clearTimeout(timer);
            resolve({ status: res.statusCode ?? 0, text, headers: res.headers as Record<string, string> });
          });
          res.on('error', fail);
          res.on('close', () => {
            if (!res.complete) fail(new Error('the connection closed in the middle of the answer'));
          });
        },
      );
      let timedOut: Error | undefined;
      const timer = setTimeout(() => {
        timedOut = new Error(`no answer within ${timeoutMs} ms`);
        timedOut.name = 'TimeoutError';
        req.destroy(timedOut);
      }, timeoutMs);
      // The deadline's error wins over the reset it causes on a half-read answer.
      function fail(err: Error): void {
        clearTimeout(timer);
        reject(timedOut ?? err);
      }
      req.on('error', fail);
      req.end(payload);
    });
  }
}

/** The agent options that make a TLS connection what it is; a change of any needs new connections. */
const TLS_OPTIONS = ['ca', 'cert', 'key', 'pfx', 'passphrase', 'rejectUnauthorized', 'servername'] as const;

function sameOption(a: unknown, b: unknown): boolean {
  if (Buffer.isBuffer(a) && Buffer.isBuffer(b)) return a.equals(b);
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => sameOption(x, b[i]));
  return a === b;
}

/** Request options that abort one API call of the generated client after `timeoutMs`. */
export function deadlineOptions(timeoutMs: number) {
  const deadline = AbortSignal.timeout(timeoutMs);
  // The object-style API takes the generated client's Observable-based middleware.
  return {
    middleware: [
      {
        pre: (context: RequestContext) => {
          context.setSignal(deadline);
          return new Observable(Promise.resolve(context));
        },
        post: (context: ResponseContext) => new Observable(Promise.resolve(context)),
      },
    ],
    middlewareMergeStrategy: 'append' as const,
  };
}

/** Any failure of an API request, as one line saying what to fix. */
export function describeApiError(
  err: unknown,
  action: string,
  server: string,
  timeoutMs: number,
  hints: RequestHints,
): KubernetesError {
  if (err instanceof KubernetesError) return err;
  if (err instanceof ApiException) {
    const detail = statusMessage(err.body);
    const code = Number(err.code);
    if (code === 401) {
      return new KubernetesError(
        'k8s_unauthorized',
        `the Kubernetes API at ${server} rejected our credentials (401 Unauthorized${detail}): check the service-account token or --kubeconfig`,
      );
    }
    if (code === 403) {
      return new KubernetesError(
        'k8s_forbidden',
        `the Kubernetes API refused to ${action} (403 Forbidden${detail}): ${hints.forbidden}`,
      );
    }
    if (code === 404) {
      return new KubernetesError('k8s_not_found', hints.notFound);
    }
    return new KubernetesError(
      'k8s_api',
      `the Kubernetes API at ${server} failed to ${action} (HTTP ${code}${detail}): check kube-apiserver; nodelink retries`,
    );
  }
  const e = err as { name?: string; code?: string; message?: string };
  if (e?.name === 'AbortError' || e?.name === 'TimeoutError') {
    return new KubernetesError(
      'k8s_unreachable',
      `no answer from the Kubernetes API at ${server} within ${timeoutMs} ms to ${action}: check the API server and the network`,
    );
  }
  const why = e?.code ?? oneLine(e?.message ?? String(err));
  return new KubernetesError(
    'k8s_unreachable',
    `cannot reach the Kubernetes API at ${server} (${why}): check the API server address, its CA and the network`,
  );
}

/** The `message` of a Kubernetes Status body, if the body is one; bodies may be text or parsed. */
function statusMessage(body: unknown): string {
  let parsed: unknown = body;
  if (typeof body === 'string') {
    try {
      parsed = JSON.parse(body);
    } catch {
      return body.trim() ? `: ${oneLine(body).slice(0, 200)}` : '';
    }
  }
  const message = (parsed as { message?: unknown } | null)?.message;
  return typeof message === 'string' && message ? `: ${oneLine(message).slice(0, 300)}` : '';
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}
