import { FrameType, HEADER_SIZE, MAX_CODE_FRAME_SIZE, PROTOCOL_VERSION } from './frame.js';
import { ProtocolError } from './errors.js';

/** Lets a sender place the header in front of a payload it already holds in the same buffer. */
export function writeHeader(target: Buffer, offset: number, type: FrameType, payloadLength: number): void {
  target[offset] = PROTOCOL_VERSION;
  target[offset + 1] = type;
  target.writeUInt32BE(payloadLength, offset + 2);
}

export function encodeFrame(type: FrameType, payload?: Uint8Array): Buffer {
  const length = payload?.length ?? 0;
  const frame = Buffer.allocUnsafe(HEADER_SIZE + length);
  writeHeader(frame, 0, type, length);
  if (payload) frame.set(payload, HEADER_SIZE);
  return frame;
}

/** Builds a Reject or Close frame; a long reason is cut at a character boundary. */
export function encodeCode(type: FrameType.Reject | FrameType.Close, code: number, reason: string): Buffer {
  const frame = Buffer.allocUnsafe(MAX_CODE_FRAME_SIZE);
  frame.writeUInt16BE(code, HEADER_SIZE);
  // Buffer#write never writes a partial UTF-8 sequence, so the cut stays valid text.
  const reasonLength = frame.write(reason, HEADER_SIZE + 2, 'utf8');
  writeHeader(frame, 0, type, 2 + reasonLength);
  return frame.subarray(0, HEADER_SIZE + 2 + reasonLength);
}

export function decodeCodePayload(payload: Uint8Array): { code: number; reason: string } {
  if (payload.length < 2) {
    throw new ProtocolError(
      'bad_payload',
      `reject/close payload of ${payload.length} bytes is too short for its 2-byte code`,
    );
  }
  const buf = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  return { code: buf.readUInt16BE(0), reason: buf.toString('utf8', 2) };
}
