/**
 * A layer-3 packet device. The link code only sees this interface: the real one is a kernel
 * TUN device, the fake an in-memory pair. Each `write` and each `onPacket` call is exactly one
 * IP packet; a TUN write is never merged with another.
 *
 * Offloads: a device that can (`offloads`) may, once `setOffloads(true)`, hand over packets the
 * kernel left unfinished, and takes them back the same way. A packet's `offload` number says
 * which it is:
 *   0      a plain packet, its checksum complete (always, with the offloads off)
 *   1      its TCP or UDP checksum holds only the pseudo-header sum (the receiving kernel
 *          completes it, or needs none for a local socket)
 *   n > 1  as 1, and a TCP packet of up to 64 KiB that the receiving kernel cuts into segments
 *          of n - 1 payload bytes (TSO), whatever the MTU
 * Only a peer that agreed to them is sent such packets (frame.ts, Offload); for any other the
 * packet is finished first (routing/offload.ts).
 */
export interface TunDevice {
  readonly name: string;
  /** Whether this device can take and hand over offloaded packets at all. */
  readonly offloads?: boolean;
  /** Lets the kernel hand over offloaded packets, or stops it (packets already queued may still be). */
  setOffloads?(on: boolean): void;
  /**
   * Installs the one receiver of packets read from the device. A packet may be a view of memory
   * the device reuses for later reads: it is valid during the call and the nextTick and
   * microtask queues that follow; a receiver that keeps it longer copies it.
   */
  onPacket(handler: (packet: Buffer, offload?: number) => void): void;
  /** Writes one packet; returns false when the device's write queue is over its mark. */
  write(packet: Buffer, offload?: number): boolean;
  close(): Promise<void>;
}
