// A bounded UDP flood for the backpressure test, run inside a namespace by the harness:
//
//   node udp-flood.js HOST PORT MBIT SECONDS [PAYLOAD_BYTES]
//
// Sends PAYLOAD_BYTES datagrams (default 8192) to HOST:PORT at MBIT Mbit/s for SECONDS (at most
// 120), then prints one summary line and exits. Paced in 5 ms slots; send errors (ENOBUFS, ICMP
// port unreachable reported back as ECONNREFUSED) are counted, never fatal.

import { createSocket } from 'node:dgram';
import { isIP } from 'node:net';

const [host, portText, mbitText, secondsText, sizeText] = process.argv.slice(2);
const port = Number(portText);
const rateMbit = Number(mbitText);
const seconds = Math.min(Number(secondsText), 120);
const size = Number(sizeText ?? 8192);
if (!host || !isIP(host) || !(port > 0) || !(rateMbit > 0) || !(seconds > 0) || !(size > 0 && size <= 65_000)) {
  process.stderr.write('usage: udp-flood.js HOST PORT MBIT SECONDS [PAYLOAD_BYTES]\n');
  process.exit(2);
}

const SLOT_MS = 5;
const perSecond = (rateMbit * 1e6) / 8 / size;
const payload = Buffer.alloc(size, 0x5a);
const socket = createSocket(isIP(host) === 6 ? 'udp6' : 'udp4');
let queued = 0;
let sent = 0;
let errors = 0;
const started = Date.now();
socket.on('error', () => {
  errors++;
});

const timer = setInterval(() => {
  if (Date.now() - started >= seconds * 1000) {
    clearInterval(timer);
    process.stdout.write(
      `udp-flood: sent ${sent} datagrams (${((sent * size) / 1e6).toFixed(1)} MB) in ${((Date.now() - started) / 1000).toFixed(1)} s, ${errors} errors\n`,
    );
    socket.close();
    return;
  }
  // Paced by elapsed time, so a late tick catches up; at most one second behind.
  const due = Math.floor(((Date.now() - started) / 1000) * perSecond);
  queued = Math.max(queued, due - Math.ceil(perSecond));
  for (; queued < due; queued++) {
    socket.send(payload, port, host, (err) => {
      if (err) errors++;
      else sent++;
    });
  }
}, SLOT_MS);
