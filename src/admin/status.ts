import type { DebugStatus } from './debug.js';

/** The status document of SPEC.md, served by each daemon and printed by `nodelink status`. */
export interface PeerStatus {
  name: string;
  publicKey: string;
  connected: boolean;
  endpoint: string | null;
  routes: string[];
  /** Routes the peers file allows (server side); the announced ones are `routes`. */
  allowedIPs?: string[];
  connectedSince: string | null;
  lastPongMs: number | null;
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
  drops: number;
  dropsByReason: Record<string, number>;
  queuedBytes: number;
}

export interface DaemonStatus {
  role: 'server' | 'client';
  tun: string;
  tunnelAddress: string | null;
  tunnelAddresses: string[];
  listen?: string;
  name?: string;
  startedAt: string;
  /** Drops not attributable to one peer (unknown destination, malformed from the TUN). */
  dropsByReason: Record<string, number>;
  peers: PeerStatus[];
  /** Process counts for leak checks: fds, timers, sessions (see debug.ts). */
  debug?: DebugStatus;
}
