// The namespace harness, by job: the address plan (addresses), building and tearing down the
// topology (topology), supervising processes (processes), curl and ping through it (probes), the
// stubs' deterministic payload (payload) and the leak checks (leaks).

export { url } from './addresses.js';
export { Harness, type Apiserver, type HarnessOptions, type Namespaces } from './topology.js';
export { ManagedProcess, type ExecOptions, type ExecResult, type ExitInfo, type SpawnOptions } from './processes.js';
export { type CurlOptions, type CurlResult, type PingOptions } from './probes.js';
export { expectedBytes, expectedSha256 } from './payload.js';
export { leftovers, listNamespaces, rootNamespaceViolations } from './leaks.js';
