// Kubernetes-mode identity: which Node a projected service-account token speaks for.
//
// A node's pod presents a projected, audience-bound token inside its channel-bound hello. The
// server asks kube-apiserver (TokenReview, authentication.k8s.io/v1) whether the token is valid
// for our audience, requires the configured service account, and learns the node from the
// token's own claims: the node-name extra that pod-bound tokens carry since Kubernetes 1.30, or
// else the pod the token is bound to, read back and checked by UID, and its spec.nodeName. The
// hello's claimed name counts for nothing on its own: a token from node A never speaks for B.
//
// kube-apiserver is someone else's service and may be slow or away: results are cached for the
// token's lifetime (capped), reviews run under a concurrency cap with a bounded line, and a
// failure to ask is transient (the node retries) while a refusal is final (the reason says why).
import { createHash } from 'node:crypto';
import { AuthError } from '../auth/errors.js';
import { MAX_HELLO_TOKEN_BYTES } from '../auth/hello.js';
import { KubernetesError } from './errors.js';
import { ApiCallLimit } from './limit.js';

/** The parts of a TokenReview status (authentication.k8s.io/v1) that decide a node's identity. */
export interface TokenReviewStatus {
  readonly authenticated?: boolean;
  readonly error?: string;
  readonly audiences?: readonly string[];
  readonly user?: {
    readonly username?: string;
    readonly uid?: string;
    readonly extra?: Readonly<Record<string, readonly string[]>>;
  };
}

/** The two API calls identity needs; the real one is KubeIdentityApi (api.ts), tests pass fakes. */
export interface IdentityApi {
  /** POST a TokenReview; throws KubernetesError when the API cannot answer. */
  reviewToken(token: string, audiences: readonly string[]): Promise<TokenReviewStatus>;
  /** GET a Pod; resolves undefined on 404, throws KubernetesError when the API cannot answer. */
  getPod(namespace: string, name: string): Promise<{ uid?: string; nodeName?: string } | undefined>;
}

export interface NodeIdentity {
  readonly node: string;
  readonly pod: string;
  readonly serviceAccount: string;
  /** When this answer stops being trusted (token expiry, capped). */
  readonly validUntil: number;
}

export interface IdentityOptions {
  /** The audience the projected token must carry. */
  readonly audience: string;
  /** "namespace:name" of the service account the client pods run as. */
  readonly serviceAccount: string;
  /** Reviews in flight at once; more wait in line. */
  readonly maxConcurrent?: number;
  /** Reviews allowed to wait; beyond it a node is told to retry. */
  readonly maxWaiting?: number;
  /** The longest a positive answer is reused, whatever the token's expiry says. */
  readonly maxCacheMs?: number;
  /** How long a refusal is remembered, so a node retrying a bad token does not hammer the API. */
  readonly refusalCacheMs?: number;
  readonly now?: () => number;
}

export const DEFAULT_TOKEN_AUDIENCE = 'nodelink';
export const DEFAULT_SERVICE_ACCOUNT = 'nodelink:nodelink-client';
const NODE_NAME_EXTRA = 'authentication.kubernetes.io/node-name';
const POD_NAME_EXTRA = 'authentication.kubernetes.io/pod-name';
const POD_UID_EXTRA = 'authentication.kubernetes.io/pod-uid';
const CACHE_ENTRIES = 20_000;

type Cached = { identity: NodeIdentity } | { refusal: AuthError; until: number };

/** Verifies tokens against kube-apiserver with a cache and a concurrency cap. */
export class NodeIdentityVerifier {
  private readonly cache = new Map<string, Cached>();
  private readonly inFlight = new Map<string, Promise<NodeIdentity>>();
  private readonly limit: ApiCallLimit;
  private readonly now: () => number;
  private readonly namespace: string;
  private readonly accountName: string;
  private reviewed: ((key: string, identity: NodeIdentity) => void) | undefined;

  constructor(
    private readonly api: IdentityApi,
    private readonly options: IdentityOptions,
  ) {
    this.now = options.now ?? Date.now;
    const [namespace, name, extra] = options.serviceAccount.split(':');
    if (!namespace || !name || extra !== undefined) {
      throw new KubernetesError(
        'k8s_config',
        `service account "${options.serviceAccount}" must be "namespace:name": fix --service-account`,
      );
    }
    this.namespace = namespace;
    this.accountName = name;
    this.limit = new ApiCallLimit(
      options.maxConcurrent ?? 16,
      options.maxWaiting ?? 4096,
      () => 'too many token reviews waiting for kube-apiserver: retrying',
    );
  }

  /**
   * The Node this token speaks for. Throws AuthError (final: the token is refused, with the
   * reason) or KubernetesError (transient: the API could not be asked; retry later).
   */
  async verify(token: string): Promise<NodeIdentity> {
    if (token.length === 0 || token.length > MAX_HELLO_TOKEN_BYTES) {
      throw new AuthError('token_rejected', 'the hello carries no usable service-account token: check --token-file');
    }
    const key = createHash('sha256').update(token).digest('base64');
    const cached = this.cache.get(key);
    const now = this.now();
    if (cached) {
      if ('identity' in cached && cached.identity.validUntil > now) return cached.identity;
      if ('refusal' in cached && cached.until > now) throw cached.refusal;
      this.cache.delete(key);
    }
    // Many connections of one node during a storm share one review.
    const pending = this.inFlight.get(key);
    if (pending) return pending;
    const review = this.limit
      .run(() => this.review(token))
      .then(
        (identity) => {
          this.remember(key, { identity });
          this.reviewed?.(key, identity);
          return identity;
        },
        (err: unknown) => {
          if (err instanceof AuthError) {
            this.remember(key, { refusal: err, until: this.now() + (this.options.refusalCacheMs ?? 10_000) });
          }
          throw err;
        },
      );
    this.inFlight.set(key, review);
    return review.finally(() => this.inFlight.delete(key));
  }

  /**
   * Calls `listener` with every verdict kube-apiserver gives (a review that admitted a token),
   * keyed by the token's hash, never the token: the workers of one server share their verdicts.
   */
  onReviewed(listener: (key: string, identity: NodeIdentity) => void): void {
    this.reviewed = listener;
  }

  /**
   * Takes a verdict another worker of this server got (onReviewed), as if this verifier had
   * asked: a node redialing through any worker is admitted from it while kube-apiserver is away.
   */
  adopt(key: string, identity: NodeIdentity): void {
    if (identity.validUntil > this.now() && !this.cache.has(key)) this.remember(key, { identity });
  }

  /** Forgets every cached answer for a node (its Node object went away). */
  forgetNode(node: string): void {
    for (const [key, entry] of this.cache) {
      if ('identity' in entry && entry.identity.node === node) this.cache.delete(key);
    }
  }

  private remember(key: string, entry: Cached): void {
    if (this.cache.size >= CACHE_ENTRIES) {
      // Map order is insertion order: the oldest entry goes first.
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
    this.cache.set(key, entry);
  }

  private async review(token: string): Promise<NodeIdentity> {
    const { audience } = this.options;
    const status = await this.api.reviewToken(token, [audience]);
    if (!status.authenticated) {
      throw new AuthError(
        'token_rejected',
        `kube-apiserver rejected the service-account token${status.error ? ` (${oneLine(status.error)})` : ''}: check the projected token's audience "${audience}" and expiry`,
      );
    }
    if (status.audiences && !status.audiences.includes(audience)) {
      throw new AuthError(
        'token_rejected',
        `the service-account token is not for audience "${audience}" (it is for ${status.audiences.join(', ') || 'none'}): set audience: ${audience} in the projected volume`,
      );
    }
    const expected = `system:serviceaccount:${this.namespace}:${this.accountName}`;
    const username = status.user?.username ?? '';
    if (username !== expected) {
      throw new AuthError(
        'wrong_service_account',
        `the token belongs to "${username || 'nobody'}", not to ${expected}: run the client pods as that service account, or fix --service-account`,
      );
    }
    const extra = status.user?.extra ?? {};
    const pod = extra[POD_NAME_EXTRA]?.[0];
    const podUid = extra[POD_UID_EXTRA]?.[0];
    if (!pod || !podUid) {
      throw new AuthError(
        'token_rejected',
        'the service-account token is not bound to a pod: use a projected serviceAccountToken volume, not a Secret-based token',
      );
    }
    let node = extra[NODE_NAME_EXTRA]?.[0];
    if (!node) {
      // Before Kubernetes 1.30 the token names only its pod: read the pod back, check it is the
      // same pod (a deleted and re-created pod has another UID), and take its node.
      const found = await this.api.getPod(this.namespace, pod);
      if (!found || found.uid !== podUid) {
        throw new AuthError(
          'token_rejected',
          `the token's pod ${this.namespace}/${pod} no longer exists: the pod was deleted; its token is void`,
        );
      }
      if (!found.nodeName) {
        throw new AuthError('token_rejected', `pod ${this.namespace}/${pod} is not scheduled to a node yet`);
      }
      node = found.nodeName;
    }
    const maxCacheMs = this.options.maxCacheMs ?? 5 * 60_000;
    const expiry = tokenExpiry(token);
    const validUntil = Math.min(this.now() + maxCacheMs, expiry ?? this.now() + 60_000);
    return { node, pod: `${this.namespace}/${pod}`, serviceAccount: expected, validUntil };
  }
}

/**
 * The `exp` claim of a JWT, in ms, read without verifying anything: it only bounds how long a
 * verdict that kube-apiserver gave is reused, never decides one.
 */
export function tokenExpiry(token: string): number | undefined {
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  try {
    const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as { exp?: unknown };
    return typeof claims.exp === 'number' && Number.isFinite(claims.exp) ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim().slice(0, 300);
}
