/**
 * A layer-3 packet device. The link code only sees this interface: the real one is a kernel
 * TUN device, the fake an in-memory pair. Each `write` and each `onPacket` call is exactly one
 * IP packet; a TUN write is never merged with another.
 */
export interface TunDevice {
  readonly name: string;
  /** Installs the one receiver of packets read from the device. */
  onPacket(handler: (packet: Buffer) => void): void;
  /** Writes one packet; returns false when the device's write queue is over its mark. */
  write(packet: Buffer): boolean;
  close(): Promise<void>;
}
