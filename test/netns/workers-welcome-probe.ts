// A node's side of the handshake, spoken by hand, for the workers' route-claim test: the moment
// its Welcome arrives (before anything else runs in this process) it asks the control plane's
// kernel which device carries the node's address, and again once everything has settled. Each
// round dials anew while the previous session is still open, so the route must move from the
// worker holding that one to the worker welcoming this one. Run inside a node namespace:
//
//   node workers-welcome-probe.js --server HOST:PORT --key FILE --name NODE --route CIDR,…
//        --control-plane NETNS --address IP --rounds N
//
// Prints one JSON line per round: {"round":1,"atWelcome":"nl0-1","settled":"nl0-1"}.
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type TLSSocket } from 'node:tls';
import { EXPORTER_BYTES, EXPORTER_LABEL, encodeHello, readKeyFile } from '../../src/auth/index.js';
import { FrameDecoder, FrameType, encodeFrame } from '../../src/protocol/index.js';

function arg(name: string): string {
  const at = process.argv.indexOf(`--${name}`);
  const value = at >= 0 ? process.argv[at + 1] : undefined;
  if (value === undefined) throw new Error(`--${name} is required`);
  return value;
}

const server = arg('server');
const colon = server.lastIndexOf(':');
const pair = readKeyFile(arg('key'));
const name = arg('name');
const routes = arg('route').split(',');
const controlPlane = arg('control-plane');
const address = arg('address');
const rounds = Number(arg('rounds'));

/** The device the control plane's kernel picks for the node's address now. */
function routeDevice(): string {
  const out = execFileSync('ip', ['-n', controlPlane, '-j', 'route', 'get', address], { encoding: 'utf8' });
  return (JSON.parse(out) as Array<{ dev?: string; type?: string }>)[0]?.dev ?? 'none';
}

/** Dials, says hello, and resolves with the device read the moment the Welcome arrived. */
async function session(): Promise<{ socket: TLSSocket; atWelcome: string }> {
  const socket = connect({
    host: server.slice(0, colon),
    port: Number(server.slice(colon + 1)),
    rejectUnauthorized: false,
    minVersion: 'TLSv1.3',
  });
  await once(socket, 'secureConnect');
  const exporter = socket.exportKeyingMaterial(EXPORTER_BYTES, EXPORTER_LABEL, Buffer.alloc(0));
  const atWelcome = await new Promise<string>((resolve, reject) => {
    const decoder = new FrameDecoder((type) => {
      if (type === FrameType.Welcome) resolve(routeDevice());
      else if (type === FrameType.Reject || type === FrameType.Close) reject(new Error(`${FrameType[type]} frame`));
    });
    socket.on('data', (chunk: Buffer) => decoder.push(chunk));
    socket.once('close', () => reject(new Error('closed before its Welcome')));
    socket.write(encodeFrame(FrameType.Hello, encodeHello(pair, exporter, { name, routes })));
  });
  return { socket, atWelcome };
}

let previous: TLSSocket | undefined;
for (let round = 1; round <= rounds; round++) {
  const { socket, atWelcome } = await session();
  await sleep(300);
  const settled = routeDevice();
  process.stdout.write(`${JSON.stringify({ round, atWelcome, settled })}\n`);
  previous?.destroy();
  previous = socket;
  await sleep(200);
}
previous?.destroy();
process.stdout.write('probe done\n');
