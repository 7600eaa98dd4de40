import { NodelinkError } from '../errors.js';

export type ProtocolErrorCode =
  | 'bad_version' //      header version is not PROTOCOL_VERSION
  | 'unknown_type' //     header type is not a FrameType
  | 'frame_too_large' //  header length exceeds the current limit
  | 'bad_payload' //      a payload does not match its frame type's layout
  | 'unexpected_frame'; // a valid frame at the wrong point of the flow

/** The peer broke the wire protocol; the only remedy is to close the stream with ProtocolError. */
export class ProtocolError extends NodelinkError {
  declare readonly code: ProtocolErrorCode;

  constructor(code: ProtocolErrorCode, message: string) {
    super(code, message);
  }
}
