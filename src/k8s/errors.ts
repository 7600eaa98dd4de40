import { NodelinkError } from '../errors.js';

/**
 * Kubernetes API and Node-object failures, each one line naming the cause and the fix. Codes:
 * 'k8s_config' (no usable kubeconfig), 'k8s_unreachable' (network, TLS, timeout),
 * 'k8s_unauthorized' (401), 'k8s_forbidden' (403: RBAC), 'k8s_not_found' (404: no such Node),
 * 'k8s_api' (any other HTTP error, 5xx), 'k8s_node' (a Node object nodelink cannot use),
 * 'k8s_busy' (too many Node reads waiting: transient).
 */
export class KubernetesError extends NodelinkError {}
