import type { Logger } from '../log.js';
import type { Prefix } from '../routing/index.js';
import type { NodeSource } from './api.js';
import { routesFromNode, sameRoutes } from './node-routes.js';
import { userMessage } from '../errors.js';

export interface NodeRoutesWatcherOptions {
  readonly source: NodeSource;
  readonly name: string;
  /** Re-reads the Node this often. A pod CIDR is set once and changes rarely; polling needs only "get". */
  readonly intervalMs: number;
  /** The routes announced now; a change is reported against these. */
  readonly initial: readonly Prefix[];
  /** Called with the node's new routes whenever they differ from the last ones. */
  readonly onChange: (routes: readonly Prefix[]) => void;
  readonly log: Logger;
}

/**
 * Follows one Node object's InternalIPs and pod CIDRs by polling it with "get" (the least RBAC:
 * no list, no watch). A failed read is logged and the last known routes stay in force, so a
 * blip of kube-apiserver never takes the link down. One request at a time; stop() ends it.
 */
export class NodeRoutesWatcher {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private current: readonly Prefix[];
  private failing = false;

  constructor(private readonly options: NodeRoutesWatcherOptions) {
    this.current = options.initial;
  }

  get routes(): readonly Prefix[] {
    return this.current;
  }

  start(): void {
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  /** One read of the Node; resolves after onChange ran, if it had to. Exposed for tests. */
  async poll(): Promise<void> {
    const { options } = this;
    try {
      const node = await options.source.getNode(options.name);
      if (this.stopped) return;
      const { routes } = routesFromNode(node, options.name);
      if (this.failing) options.log.info({ node: options.name }, 'Node object readable again');
      this.failing = false;
      if (!sameRoutes(routes, this.current)) {
        options.log.info(
          { node: options.name, from: this.current.map(String), to: routes.map(String) },
          'Node routes changed: re-announcing',
        );
        this.current = routes;
        options.onChange(routes);
      }
    } catch (err) {
      if (!this.failing) {
        options.log.warn(
          { node: options.name, err: userMessage(err) },
          'cannot read the Node object: keeping the routes announced now',
        );
      }
      this.failing = true;
    }
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.poll().finally(() => this.schedule());
    }, this.options.intervalMs);
    this.timer.unref();
  }
}
