// Status records as the admin socket reports them, for tests that feed status to readiness,
// metrics and diagnose. Counters start at zero; a test overrides only the fields it is about.

import type { DaemonStatus, PeerStatus } from '../../src/admin/index.js';

export function idlePeerStatus(overrides: Partial<PeerStatus> = {}): PeerStatus {
  return {
    name: 'node-1',
    publicKey: 'KEY',
    connected: false,
    endpoint: null,
    routes: [],
    connectedSince: null,
    lastPongMs: null,
    rxBytes: 0,
    txBytes: 0,
    rxPackets: 0,
    txPackets: 0,
    drops: 0,
    dropsByReason: {},
    queuedBytes: 0,
    ...overrides,
  };
}

export function serverStatus(overrides: Partial<DaemonStatus> = {}): DaemonStatus {
  return {
    role: 'server',
    tun: 'nl0',
    tunnelAddress: null,
    tunnelAddresses: [],
    startedAt: new Date().toISOString(),
    dropsByReason: {},
    peers: [],
    ...overrides,
  };
}
