// What diagnose checks on the control plane before the apiserver, for a server with one peer:
// node-1, holding its node IP and one pod network. The unit test of the table and the run in
// namespaces expect the same ids.

export const CONTROL_PLANE_CHECKS_WITH_NODE_1: readonly string[] = [
  'server',
  'listening',
  'tun',
  'flow_filter',
  'peer:node-1:connected',
  'peer:node-1:routes',
  'peer:node-1:node_ip',
  'peer:node-1:pod:198.19.1.0/24',
];
