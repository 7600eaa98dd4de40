// In-memory byte streams for driving a FramedConnection without sockets.

import { Duplex, PassThrough } from 'node:stream';

/** Two Duplex ends joined crosswise, as a socket pair is: what one writes, the other reads. */
export function duplexPair(): [Duplex, Duplex] {
  const aToB = new PassThrough();
  const bToA = new PassThrough();
  const ends: [Duplex, Duplex] = [
    Duplex.from({ readable: bToA, writable: aToB }),
    Duplex.from({ readable: aToB, writable: bToA }),
  ];
  // Destroying one Duplex.from() end destroys the inner streams with an AbortError, which then
  // reaches the other end too; a test end without a FramedConnection on it must not crash on it.
  for (const stream of [aToB, bToA, ...ends]) stream.on('error', () => {});
  return ends;
}
