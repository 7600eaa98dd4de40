/**
 * The server's packet path, both ways, and its ICMP answers: no logging here, and every drop
 * counted under its reason (src/reasons.ts).
 *
 * TUN → node, in the order it runs:
 *
 *   1. native/tunio.c on_readable: the TUN fd is readable; up to a batch of packets is read into
 *      one buffer and handed to JavaScript in one call.
 *   2. src/tun/linux-tun.ts onPacket: each packet, a view of that buffer, to Forwarder.fromTun,
 *      with its offload number (tun/device.ts): with the TUN's offloads on, a TCP packet of up to
 *      64 KiB whatever the MTU, its checksum left to the receiving kernel.
 *   3. fromTun (here): checkPacket (else malformed); the longest match of the destination in the
 *      routes that connected nodes announced gives the session. No session: the drop is counted
 *      to the peer whose allowedIPs hold the address (peer_offline, or no_route when it is
 *      connected but did not announce it), else to nobody (no_route), and answered with ICMP
 *      unreachable written back into the TUN, at most ICMP_ERRORS_PER_SECOND.
 *   4. src/link/connection.ts FramedConnection.sendData: dropped (queue_full) when the session's
 *      TLS stream already holds --max-queue-bytes unsent; else the frame header and the packet
 *      are written to the TLS socket, corked, so every frame of this tick leaves in one TLS
 *      record and one syscall at process.nextTick. An offloaded packet goes as an Offload frame
 *      when the session agreed to offloads; else it is finished (segmented) there first.
 *
 * node → TUN, in the order it runs:
 *
 *   1. The session's TLS socket emits a decrypted chunk: FramedConnection.onChunk pushes it into
 *      its FrameDecoder (src/protocol/decoder.ts), which emits every frame the chunk completes,
 *      as a view into the chunk where it can.
 *   2. FramedConnection.onFrame counts a Data frame and hands it to the session's onData
 *      (handshake.ts), which calls Forwarder.fromNode.
 *   3. fromNode (here): checkPacket (else malformed); the longest match of the source in the
 *      announced routes must be this very session (else spoofed_source); an ICMP error must
 *      quote a packet sent to this session's own routes (else foreign_icmp_error).
 *   4. TunDevice.write: exactly one packet per write into the kernel (tun_error if refused), an
 *      Offload frame's with the virtio header that lets the kernel segment it.
 *   5. The kernel: the server's nftables table (flow-filter.ts) passes only packets of flows the
 *      control plane opened; the rest is counted there as node_initiated and dropped.
 *
 * The TUN's offloads are on while every connected session agreed to them: a node that predates
 * them turns them off for all, so packets for it are rarely finished here.
 *
 * Kernel routes for every allowedIP of the peers file stay on the TUN whether its peer is online
 * or not, so traffic for an offline node reaches step 3 and is answered, never leaking to the
 * default route.
 */
import {
  DST_OFFSET_V4,
  DST_OFFSET_V6,
  buildUnreachable,
  checkPacket,
  icmpErrorQuotesPeer,
  type PeerAddressCheck,
} from '../routing/index.js';
import type { TunDevice } from '../tun/index.js';
import { TrafficCounters } from '../link/counters.js';
import type { Peers, Session } from './peers.js';

/** ICMP errors answer traffic to offline nodes; cap them so a flood cannot turn into one. */
const ICMP_ERRORS_PER_SECOND = 100;

export class Forwarder {
  readonly unattributed = new TrafficCounters(); // drops no peer is to blame for; status shows them
  private icmpBudget = ICMP_ERRORS_PER_SECOND; // ICMP errors left this second; spent by fromTun
  private icmpRefillTimer: NodeJS.Timeout | undefined; // refills the budget; from start to stop
  private quoting: Session | undefined; // the session fromNode checks an ICMP error of, for ownsQuote
  /** Whether an address lies in the routes `quoting` announced; one function, so no per-packet closure. */
  private readonly ownsQuote: PeerAddressCheck = (family, bytes, offset) =>
    this.peers.announced.lookup(family, bytes, offset) === this.quoting;

  /** Sessions that did not agree to offloads; the TUN's offloads are on only while there are none. */
  private readonly plainSessions = new Set<Session>();
  private offloadsOn = false;

  constructor(
    private readonly peers: Peers,
    private readonly tun: TunDevice,
  ) {}

  /** Whether this server's TUN can take offloaded packets: what a session may agree to. */
  get offloads(): boolean {
    return this.tun.offloads === true;
  }

  /** Takes the TUN's packets from now on. */
  attach(): void {
    this.tun.onPacket((packet, offload) => this.fromTun(packet, offload));
    this.updateOffloads();
  }

  sessionOpened(session: Session): void {
    if (session.connection.offloads) return;
    this.plainSessions.add(session);
    this.updateOffloads();
  }

  sessionClosed(session: Session): void {
    if (this.plainSessions.delete(session)) this.updateOffloads();
  }

  private updateOffloads(): void {
    const on = this.offloads && this.plainSessions.size === 0;
    if (on === this.offloadsOn) return;
    this.offloadsOn = on;
    this.tun.setOffloads?.(on);
  }

  startIcmpRefill(): void {
    this.icmpRefillTimer = setInterval(() => {
      this.icmpBudget = ICMP_ERRORS_PER_SECOND;
    }, 1000);
  }

  stop(): void {
    if (this.icmpRefillTimer) clearInterval(this.icmpRefillTimer);
  }

  fromTun(packet: Buffer, offload = 0): void {
    if (checkPacket(packet) !== null) {
      this.unattributed.drop('malformed');
      return;
    }
    const session = this.peers.announced.lookupDestination(packet);
    if (session) {
      session.connection.sendData(packet, offload);
      return;
    }
    const peer = this.peers.authorized.lookupDestination(packet);
    if (peer) peer.counters.drop(peer.session ? 'no_route' : 'peer_offline');
    else this.unattributed.drop('no_route');
    this.answerUnreachable(packet);
  }

  fromNode(session: Session, packet: Buffer, offload = 0): void {
    if (checkPacket(packet) !== null) {
      session.peer.counters.drop('malformed');
      return;
    }
    if (this.peers.announced.lookupSource(packet) !== session) {
      session.peer.counters.drop('spoofed_source');
      return;
    }
    this.quoting = session;
    const ownQuote = icmpErrorQuotesPeer(packet, this.ownsQuote);
    this.quoting = undefined;
    if (!ownQuote) {
      session.peer.counters.drop('foreign_icmp_error');
      return;
    }
    if (!this.tun.write(packet, offload)) session.peer.counters.drop('tun_error');
  }

  /**
   * The error comes from the unreachable destination's own address: one of the server's tunnel
   * addresses would be a local address arriving from outside, which the kernel drops as martian.
   */
  private answerUnreachable(packet: Buffer): void {
    if (this.icmpBudget <= 0) return;
    const from =
      packet[0]! >> 4 === 6
        ? packet.subarray(DST_OFFSET_V6, DST_OFFSET_V6 + 16)
        : packet.subarray(DST_OFFSET_V4, DST_OFFSET_V4 + 4);
    const reply = buildUnreachable(packet, from);
    if (!reply) return;
    this.icmpBudget--;
    this.tun.write(reply);
  }
}
