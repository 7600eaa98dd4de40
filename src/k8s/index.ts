// The pure parts only: importing @kubernetes/client-node costs ~2 s, so api.ts is loaded with
// `await import('../k8s/api.js')` by the commands that need it.
export { KubernetesError } from './errors.js';
export {
  type NodeLike,
  type NodeRoutes,
  dedupe,
  routesFromNode,
  routesOutsideNode,
  sameRoutes,
} from './node-routes.js';
export { NodeRoutesWatcher, type NodeRoutesWatcherOptions } from './watch.js';
export { CachedNodeReader, NODE_CHECK_LIMITS, nodeRouteChecker, type NodeCheckLimits } from './authorize.js';
export type { NodeSource } from './api.js';
