import { KubernetesError } from './errors.js';

/**
 * At most `maxConcurrent` API calls in flight, at most `maxWaiting` more in line (first come,
 * first served); beyond that a call is refused at once as transient ('k8s_busy'), so a reconnect
 * storm of nodes cannot pile unbounded work on kube-apiserver. `busy` words the refusal.
 */
export class ApiCallLimit {
  private readonly waiting: Array<() => void> = [];
  private active = 0;

  constructor(
    private readonly maxConcurrent: number,
    private readonly maxWaiting: number,
    private readonly busy: (waiting: number) => string,
  ) {}

  async run<T>(call: () => Promise<T>): Promise<T> {
    if (this.active < this.maxConcurrent) {
      this.active++;
    } else {
      if (this.waiting.length >= this.maxWaiting) throw new KubernetesError('k8s_busy', this.busy(this.waiting.length));
      // A finishing call hands its slot over directly, so `active` never passes the limit.
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
    try {
      return await call();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}
