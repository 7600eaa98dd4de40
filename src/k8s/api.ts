import { existsSync } from 'node:fs';
import { Agent as HttpsAgent } from 'node:https';
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

/**
 * One keep-alive connection pool for many API calls. The generated client makes a new agent,
 * and so a new TLS connection, for every request: a reconnect storm of thousands of nodes, each
 * asking for a TokenReview, would pay a TLS handshake per node on top of the node's own.
 */
export class KeepAlivePool {
  private agent: HttpsAgent | undefined;

  /** Swaps the request's fresh agent for the pool's one, built once with the same TLS options. */
  apply(context: RequestContext): void {
    const given = context.getAgent();
    if (!(given instanceof HttpsAgent)) return;
    this.agent ??= new HttpsAgent({ ...given.options, keepAlive: true, maxSockets: 32 });
    context.setAgent(this.agent);
  }

  close(): void {
    this.agent?.destroy();
  }
}

/** Request options that abort one API call after `timeoutMs` (and use `pool`'s connections). */
export function deadlineOptions(timeoutMs: number, pool?: KeepAlivePool) {
  const deadline = AbortSignal.timeout(timeoutMs);
  // The object-style API takes the generated client's Observable-based middleware.
  return {
    middleware: [
      {
        pre: (context: RequestContext) => {
          context.setSignal(deadline);
          pool?.apply(context);
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
