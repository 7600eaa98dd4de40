// The Kubernetes API calls of Kubernetes mode: TokenReview and Pod reads for identity (over
// KubeJsonClient, with @kubernetes/client-node applying the kubeconfig's credentials), and
// client-node's informer watching Nodes for the routes each node may announce. Loaded with
// `await import()` (the client library is slow to load).
import {
  CoreV1Api,
  makeInformer,
  type KubeConfig,
  type V1Node,
  type Informer,
  type ObjectCache,
} from '@kubernetes/client-node';
import type { Logger } from '../log.js';
import { DEFAULT_REQUEST_TIMEOUT_MS, KubeJsonClient, deadlineOptions, describeApiError } from './api.js';
import { KubernetesError } from './errors.js';
import type { IdentityApi, TokenReviewStatus } from './identity.js';
import type { NodeLike } from './node-routes.js';

/** TokenReview and Pod reads for NodeIdentityVerifier, over KubeJsonClient's kept-alive connections. */
export class KubeIdentityApi implements IdentityApi {
  private readonly client: KubeJsonClient;
  private readonly server: string;

  constructor(
    kc: KubeConfig,
    private readonly timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
  ) {
    this.client = new KubeJsonClient(kc);
    this.server = this.client.server;
  }

  async reviewToken(token: string, audiences: readonly string[]): Promise<TokenReviewStatus> {
    try {
      const review = await this.client.request<{ status?: TokenReviewStatus }>(
        'POST',
        '/apis/authentication.k8s.io/v1/tokenreviews',
        {
          apiVersion: 'authentication.k8s.io/v1',
          kind: 'TokenReview',
          spec: { token, audiences: [...audiences] },
        },
        this.timeoutMs,
      );
      return review.status ?? {};
    } catch (err) {
      throw describeApiError(err, 'create a TokenReview', this.server, this.timeoutMs, {
        forbidden: 'grant the server\'s service account "create" on tokenreviews (deploy/server/rbac.yaml)',
        notFound: `the Kubernetes API at ${this.server} has no TokenReview API (404): it must serve authentication.k8s.io/v1`,
      });
    }
  }

  close(): void {
    this.client.close();
  }

  async getPod(namespace: string, name: string): Promise<{ uid?: string; nodeName?: string } | undefined> {
    try {
      const pod = await this.client.request<{ metadata?: { uid?: string }; spec?: { nodeName?: string } }>(
        'GET',
        `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`,
        undefined,
        this.timeoutMs,
      );
      return { uid: pod.metadata?.uid, nodeName: pod.spec?.nodeName };
    } catch (err) {
      const failure = describeApiError(err, `get Pod ${namespace}/${name}`, this.server, this.timeoutMs, {
        forbidden: 'grant the server\'s service account "get" on pods (deploy/server/rbac.yaml)',
        notFound: `no Pod ${namespace}/${name}`,
      });
      if (failure.code === 'k8s_not_found') return undefined;
      throw failure;
    }
  }
}

export interface NodeWatchHandlers {
  /** Every Node as it is now, after the first list and after every change. */
  readonly onNodes: (nodes: readonly NodeLike[]) => void;
  readonly log: Logger;
}

/**
 * Watches all Node objects with client-node's informer (one list, then a watch that resumes
 * from its resourceVersion). The informer stops on an error; this restarts it with backoff and
 * keeps the last known Nodes meanwhile, so kube-apiserver going away changes nothing that is up.
 */
export class NodeWatch {
  private readonly informer: Informer<V1Node> & ObjectCache<V1Node>;
  private stopped = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryMs = 0;
  private failing = false;
  private listed = false;
  private firstList: { resolve: () => void; reject: (err: Error) => void } | undefined;
  private batch: NodeJS.Timeout | undefined;

  /**
   * `batchMs`: events are gathered this long before onNodes runs, so a thousand Nodes joining at
   * once cost one pass over all Nodes, not a thousand.
   */
  constructor(
    kc: KubeConfig,
    private readonly handlers: NodeWatchHandlers,
    private readonly maxRetryMs = 30_000,
    private readonly batchMs = 200,
  ) {
    const core = kc.makeApiClient(CoreV1Api);
    const server = kc.getCurrentCluster()?.server ?? '?';
    this.informer = makeInformer<V1Node>(kc, '/api/v1/nodes', async () => {
      try {
        return await core.listNode({}, deadlineOptions(DEFAULT_REQUEST_TIMEOUT_MS));
      } catch (err) {
        throw describeApiError(err, 'list Nodes', server, DEFAULT_REQUEST_TIMEOUT_MS, {
          forbidden: 'grant the server\'s service account "list" and "watch" on nodes (deploy/server/rbac.yaml)',
          notFound: `the Kubernetes API at ${server} does not serve /api/v1/nodes (404)`,
        });
      }
    });
    const changed = (): void => this.publishSoon();
    this.informer.on('add', changed);
    this.informer.on('update', changed);
    this.informer.on('delete', changed);
    this.informer.on('error', (err: unknown) => this.onError(err));
  }

  /** Resolves after the first full list of Nodes; rejects if that first list fails. */
  start(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.firstList = { resolve, reject };
      this.informer.start().then(
        () => this.onListed(),
        (err: unknown) => this.onError(err),
      );
    });
  }

  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.batch) clearTimeout(this.batch);
    void this.informer.stop();
  }

  private onListed(): void {
    if (this.stopped || this.listed) return;
    this.listed = true;
    this.publish();
    this.firstList?.resolve();
    this.firstList = undefined;
  }

  private publish(): void {
    if (!this.listed || this.stopped) return;
    this.handlers.onNodes(this.informer.list());
  }

  private publishSoon(): void {
    if (!this.listed || this.stopped || this.batch) return;
    this.batch = setTimeout(() => {
      this.batch = undefined;
      this.publish();
    }, this.batchMs);
  }

  private onError(err: unknown): void {
    if (this.stopped) return;
    const message = err instanceof KubernetesError ? err.message : oneLine(String((err as Error)?.message ?? err));
    if (!this.listed && this.firstList) {
      this.firstList.reject(err instanceof Error ? err : new KubernetesError('k8s_api', message));
      this.firstList = undefined;
      this.stopped = true;
      return;
    }
    if (!this.failing) {
      this.handlers.log.warn({ err: message }, 'the Node watch failed: keeping the Nodes known now and retrying');
    }
    this.failing = true;
    this.retryMs = Math.min(this.maxRetryMs, this.retryMs ? this.retryMs * 2 : 500);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.stopped) return;
      this.informer.start().then(
        () => {
          if (this.failing) this.handlers.log.info('the Node watch is back');
          this.failing = false;
          this.retryMs = 0;
          this.publish();
        },
        (e: unknown) => this.onError(e),
      );
    }, this.retryMs);
    this.retryTimer.unref();
  }
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}
