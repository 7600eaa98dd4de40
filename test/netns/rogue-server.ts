// A rogue nodelink server for the route-ownership tests: it holds the real server key (so a
// client's pin accepts it), answers every hello with a welcome naming the tunnel CIDRs it is
// told to, and keeps the stream open. Run inside a namespace:
//
//   node rogue-server.js --listen HOST:PORT --key FILE --tunnel-cidrs 0.0.0.0/0,::/0
//
// Prints "listening on" when ready and "welcome sent" after each welcome.

import { createServer } from 'node:tls';
import { readKeyFile } from '../../src/auth/index.js';
import { createServerCertificate } from '../../src/link-server/index.js';
import { FrameDecoder, FrameType, encodeFrame } from '../../src/protocol/index.js';

function arg(name: string): string {
  const at = process.argv.indexOf(`--${name}`);
  const value = at >= 0 ? process.argv[at + 1] : undefined;
  if (value === undefined) throw new Error(`--${name} is required`);
  return value;
}

const listen = arg('listen');
const colon = listen.lastIndexOf(':');
const host = listen.slice(0, colon);
const port = Number(listen.slice(colon + 1));
const tunnelCidrs = arg('tunnel-cidrs').split(',');
const certificate = await createServerCertificate(readKeyFile(arg('key')));
const server = createServer(
  { cert: certificate.certPem, key: certificate.keyPem, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' },
  (socket) => {
    const decoder = new FrameDecoder((type) => {
      if (type !== FrameType.Hello) return;
      const welcome = { tunnelCidrs, serverAddresses: [] };
      socket.write(encodeFrame(FrameType.Welcome, Buffer.from(JSON.stringify(welcome))));
      process.stdout.write('welcome sent\n');
    });
    socket.on('data', (chunk: Buffer) => {
      try {
        decoder.push(chunk);
      } catch {
        socket.destroy();
      }
    });
    socket.on('error', () => socket.destroy());
  },
);
server.listen(port, host, () => process.stdout.write(`listening on ${listen}\n`));
for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => process.exit(0));
