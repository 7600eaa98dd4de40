import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { EXPORTER_BYTES, EXPORTER_LABEL, encodeHello, encodeKey, keysEqual, type KeyPair } from '../auth/index.js';
import {
  CloseCode,
  FrameDecoder,
  FrameType,
  closeCodeName,
  decodeCodePayload,
  encodeCode,
  encodeFrame,
} from '../protocol/index.js';
import { serverPublicKey, sniFor } from './trust.js';

/**
 * One handshake with a server, the way the client does it, stopped after the answer — for
 * `nodelink diagnose`. It says how far the handshake got: TLS, the server's key, and whether
 * the server accepted our key and routes. On a welcome the session is closed at once (Close,
 * normal), so the probe costs the server one log line, not a lasting session.
 */
export interface ProbeOptions {
  readonly host: string;
  readonly port: number;
  readonly serverKey: Uint8Array;
  /** Our identity for the hello; without it the probe stops after the server key. */
  readonly keyPair?: KeyPair;
  readonly name?: string;
  readonly routes?: readonly string[];
  readonly timeoutMs: number;
  /** Stop after checking the server key (no hello): used when a running client already holds the session. */
  readonly skipHello?: boolean;
}

export type ProbeResult =
  | { stage: 'tls'; error: string }
  | { stage: 'server_key'; presented: string | null }
  | { stage: 'key_ok' }
  | { stage: 'welcome'; tunnelCidrs: string[]; serverAddresses: string[] }
  | { stage: 'rejected'; code: string; reason: string }
  | { stage: 'no_answer'; error: string };

export function probeHandshake(options: ProbeOptions): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let settled = false;
    let socket: TLSSocket | undefined;
    let keyChecked = false;
    const done = (result: ProbeResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket?.destroy();
      resolve(result);
    };
    const timer = setTimeout(
      () =>
        done(
          keyChecked
            ? { stage: 'no_answer', error: `no welcome or reject within ${options.timeoutMs} ms` }
            : { stage: 'tls', error: `TLS handshake did not finish within ${options.timeoutMs} ms` },
        ),
      options.timeoutMs,
    );
    socket = tlsConnect({
      host: options.host,
      port: options.port,
      servername: sniFor(options.host),
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      rejectUnauthorized: false,
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      done(
        keyChecked
          ? { stage: 'no_answer', error: err.code ?? err.message }
          : { stage: 'tls', error: err.code ?? err.message },
      );
    });
    socket.on('close', () =>
      done(
        keyChecked
          ? { stage: 'no_answer', error: 'the server closed the connection without an answer' }
          : { stage: 'tls', error: 'the connection closed during the TLS handshake' },
      ),
    );
    socket.once('secureConnect', () => {
      const s = socket!;
      const presented = serverPublicKey(s);
      if (!presented || !keysEqual(presented, options.serverKey)) {
        done({ stage: 'server_key', presented: presented ? encodeKey(presented) : null });
        return;
      }
      keyChecked = true;
      if (options.skipHello || !options.keyPair || !options.name) {
        done({ stage: 'key_ok' });
        return;
      }
      const decoder = new FrameDecoder((type, payload) => {
        if (type === FrameType.Welcome) {
          let welcome: { tunnelCidrs?: string[]; serverAddresses?: string[] } = {};
          try {
            welcome = JSON.parse(payload.toString('utf8')) as typeof welcome;
          } catch {
            // an answer all the same
          }
          // Say goodbye properly (the Close must be flushed, not cut off by destroy).
          socket = undefined;
          s.end(encodeCode(FrameType.Close, CloseCode.Normal, 'nodelink diagnose: probe done'));
          setTimeout(() => s.destroy(), 1000).unref();
          done({
            stage: 'welcome',
            tunnelCidrs: welcome.tunnelCidrs ?? [],
            serverAddresses: welcome.serverAddresses ?? [],
          });
        } else if (type === FrameType.Reject || type === FrameType.Close) {
          const { code, reason } = decodeCodePayload(payload);
          done({ stage: 'rejected', code: closeCodeName(code), reason });
        }
      });
      s.on('data', (chunk: Buffer) => {
        try {
          decoder.push(chunk);
        } catch (err) {
          done({ stage: 'no_answer', error: `protocol error: ${(err as Error).message}` });
        }
      });
      const exporter = s.exportKeyingMaterial(EXPORTER_BYTES, EXPORTER_LABEL, Buffer.alloc(0));
      s.write(
        encodeFrame(
          FrameType.Hello,
          encodeHello(options.keyPair, exporter, { name: options.name, routes: [...(options.routes ?? [])] }),
        ),
      );
    });
  });
}
