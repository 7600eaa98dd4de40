import { connect as tcpConnect, type OnReadOpts, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions as TlsConnectOptions, type TLSSocket } from 'node:tls';
import { EXPORTER_BYTES, EXPORTER_LABEL, encodeHello, type HelloBody, type KeyPair } from '../auth/index.js';
import { CloseCode, FrameType, closeCodeName, decodeWelcome, type Welcome } from '../protocol/index.js';
import { formatEndpoint } from '../routing/index.js';
import type { DialFailure, HandshakeFailure } from '../reasons.js';
import { FramedConnection, type ConnectionOptions } from '../link/connection.js';
import type { Logger } from '../log.js';
import { userMessage } from '../errors.js';
import { DialError, dialFailureOf } from './dial-error.js';
import { checkServer, clientTlsOptions, serverIdentity } from './trust.js';

/** TLS hands the cleartext over one record at a time, and a record holds at most 16 KiB. */
const readBuffer = Buffer.alloc(16 * 1024);

/**
 * A server under a reconnect storm holds the connections it cannot handshake yet accepted and
 * unread, first come first served, for up to two handshake deadlines (see the server's
 * admission). A dial the server accepted and has not answered at all when its deadline comes is
 * taken to wait in that line, and waits that much longer: giving up would throw away its place
 * and cost both ends a redial. Once the server answers, the handshake gets a full deadline
 * again, as the server gives it one from the moment it leaves the line.
 */
export const HELD_DEADLINES = 2;

export interface SessionOptions {
  readonly host: string;
  readonly port: number;
  /** Pinned Ed25519 key of the server; optional when `ca` is set (see trust.ts). */
  readonly serverKey?: Uint8Array;
  /** PEM CA certificates the server's chain must verify against (--ca). */
  readonly ca?: string;
  /** Name to send as SNI and to find in the server's certificate, instead of `host` (--server-name). */
  readonly serverName?: string;
  readonly keyPair: KeyPair;
  readonly connection: ConnectionOptions;
  /**
   * TCP connect + TLS + welcome must finish within this, not counting up to HELD_DEADLINES more
   * of it spent accepted but unanswered (held in the server's line of waiting connections).
   */
  readonly handshakeTimeoutMs: number;
  readonly log: Logger;
}

/**
 * A TLS session ticket from a server this node trusted, to resume with at the next dial, and who
 * the server was (a resumed session shows no certificate: status keeps naming it).
 */
export interface SessionTicket {
  readonly ticket: Buffer;
  readonly identity: string | undefined;
}

export interface SessionEvents {
  /** What the hello says, asked when TLS is up (the routes and held replicas may have changed). */
  hello(): HelloBody;
  /** The server accepted the hello. Until this returns, no packet flows either way. */
  welcomed(session: ClientSession, welcome: Welcome): void;
  /** A packet from the server, after the welcome; `offload` as in tun/device.ts. */
  data(session: ClientSession, packet: Buffer, offload: number): void;
  /**
   * The dial or the session ended. `failure` names why a dial that got no welcome failed (a
   * close code name when the server sent one).
   */
  closed(session: ClientSession, code: CloseCode, reason: string, byPeer: boolean, failure: HandshakeFailure): void;
  pong?(session: ClientSession, rttMs: number): void;
  /** A ticket to resume with, asked as the dial starts. */
  resume?(): SessionTicket | undefined;
  /** The server, trusted, gave a ticket to resume with. */
  ticket?(session: ClientSession, ticket: SessionTicket): void;
}

/**
 * One dial to the server and, if its hello is welcomed, the session on it. It never redials:
 * whoever holds it (LinkClient) decides when to dial again and where packets go.
 *
 * TLS starts only once TCP is up: a dial refused while nothing listens (a server restarting)
 * then costs a socket, not a TLS context and the parse of a session ticket; and the TCP socket
 * tells a server that accepted the dial and has not answered it (held in its line) apart.
 */
export class ClientSession {
  /** The server's address as connected; the dialed one until TLS is up. */
  endpoint: string;
  /** The server's IP address as connected, once TLS is up. */
  remoteAddress: string | undefined;
  /** The server's key or certificate fingerprint as presented (status in --ca mode). */
  presentedIdentity: string | undefined;
  welcome: Welcome | undefined;
  /** When the welcome arrived (Date.now()); 0 before. */
  welcomedAt = 0;
  /** TLS resumed a session from a ticket (no certificate was sent). */
  resumed = false;

  private readonly tcp: Socket;
  /** The framed TLS stream, from the moment TCP is up. */
  private framed: FramedConnection | undefined;
  /** Why this dial failed, from the first error a socket reports: a DialError raised here, or its errno. */
  private failure: DialFailure | undefined;
  private deadline: NodeJS.Timeout;
  /** How long the deadline was pushed back while the server held the dial unanswered. */
  private heldFor = 0;
  private ended = false; // `closed` was reported

  constructor(
    private readonly options: SessionOptions,
    private readonly events: SessionEvents,
  ) {
    this.endpoint = formatEndpoint(options);
    this.deadline = setTimeout(() => this.onDeadline(), options.handshakeTimeoutMs);
    const tcp = tcpConnect({ host: options.host, port: options.port });
    this.tcp = tcp;
    tcp.setNoDelay(true);
    // Registered first, so the cause is known when the dial closes, before TLS or after.
    tcp.on('error', (err) => {
      this.failure ??= dialFailureOf(err);
    });
    const closedBeforeTls = (): void => this.end(CloseCode.Normal, 'connection closed', false);
    tcp.once('close', closedBeforeTls);
    tcp.once('connect', () => {
      tcp.removeListener('close', closedBeforeTls);
      this.startTls(tcp);
    });
  }

  /** The framed stream of a welcomed session (LinkClient uses it only after the welcome). */
  get connection(): FramedConnection {
    return this.framed!;
  }

  private onDeadline(): void {
    const { options, tcp } = this;
    const timeoutMs = options.handshakeTimeoutMs;
    if (this.heldFor === 0 && !tcp.connecting && tcp.bytesRead === 0 && !tcp.destroyed) {
      this.heldFor = timeoutMs * HELD_DEADLINES;
      this.deadline = setTimeout(() => this.onDeadline(), this.heldFor);
      return;
    }
    const message = `no welcome within ${timeoutMs + this.heldFor} ms`;
    options.log.warn({ server: this.endpoint }, message);
    (this.framed ? this.tls! : tcp).destroy(new DialError('handshake_timeout', message));
  }

  private tls: TLSSocket | undefined;

  private startTls(tcp: Socket): void {
    const { options, events } = this;
    const server = this.endpoint;
    const resume = events.resume?.();
    // Decrypted bytes go straight to the frame decoder, without the stream's push and 'data'
    // machinery, which an idle packet would otherwise go through on its way to the TUN. Node
    // documents `onread` for tls.connect; its type declarations do not have it yet.
    const tlsOptions: TlsConnectOptions & { onread: OnReadOpts } = {
      ...clientTlsOptions(options.host, options.port, options),
      socket: tcp,
      session: resume?.ticket,
      onread: { buffer: readBuffer, callback: (length, buffer) => this.onRead(length, buffer) },
    };
    const socket: TLSSocket = tlsConnect(tlsOptions);
    this.tls = socket;
    socket.on('error', (err) => {
      this.failure ??= dialFailureOf(err);
    });
    let trusted = false;
    let offered = false; // the hello offered offloads: a welcome may agree to them
    // Only a ticket from a server checked here may ever be offered to one (see checkServer).
    socket.on('session', (ticket: Buffer) => {
      if (trusted) events.ticket?.(this, { ticket, identity: this.presentedIdentity });
    });
    socket.once('secureConnect', () => {
      if (this.heldFor > 0) {
        // Out of the server's line: the rest of the handshake has a full deadline.
        clearTimeout(this.deadline);
        this.deadline = setTimeout(() => this.onDeadline(), options.handshakeTimeoutMs);
      }
      const untrusted = checkServer(socket, options);
      if (untrusted) {
        options.log.error({ server, presented: serverIdentity(socket) ?? null }, untrusted.message);
        socket.destroy(new DialError(untrusted.failure, untrusted.message));
        return;
      }
      trusted = true;
      this.resumed = socket.isSessionReused();
      // Status shows the pinned key when there is one; only --ca mode needs what was presented.
      if (!options.serverKey) this.presentedIdentity = this.resumed ? resume?.identity : serverIdentity(socket);
      this.remoteAddress = socket.remoteAddress;
      this.endpoint = formatEndpoint({
        host: socket.remoteAddress ?? options.host,
        port: socket.remotePort ?? options.port,
      });
      let hello: HelloBody;
      try {
        hello = events.hello();
      } catch (err) {
        // The token file could not be read: this dial fails, and the next one reads it again.
        options.log.error({ err: userMessage(err) }, 'cannot build the hello');
        socket.destroy(new DialError('connection_error', userMessage(err)));
        return;
      }
      offered = hello.offload === true;
      const exporter = socket.exportKeyingMaterial(EXPORTER_BYTES, EXPORTER_LABEL, Buffer.alloc(0));
      this.connection.sendControl(FrameType.Hello, encodeHello(options.keyPair, exporter, hello));
    });
    this.framed = new FramedConnection(
      socket,
      {
        onData: (packet, offload) => {
          if (this.welcome) events.data(this, packet, offload);
        },
        onControl: (type, payload) => {
          if (type !== FrameType.Welcome || this.welcome) {
            this.connection.close(CloseCode.ProtocolError, `unexpected ${FrameType[type] ?? type} frame`);
            return;
          }
          clearTimeout(this.deadline);
          let welcome: Welcome;
          try {
            welcome = decodeWelcome(payload);
          } catch (err) {
            this.connection.close(CloseCode.ProtocolError, `malformed welcome: ${userMessage(err)}`);
            return;
          }
          this.welcome = welcome;
          this.welcomedAt = Date.now();
          if (welcome.offload && offered) this.connection.agreeOffloads();
          this.connection.startKeepalive();
          events.welcomed(this, welcome);
        },
        onClose: (code, reason, byPeer) => this.end(code, reason, byPeer),
        onPong: (rttMs) => events.pong?.(this, rttMs),
      },
      options.connection,
    );
  }

  /** Reports the end of the dial or session, once. */
  private end(code: CloseCode, reason: string, byPeer: boolean): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.deadline);
    // A code the server sent, or one this end closed with, names the cause; a stream that
    // merely ended does not, and the socket's error does.
    const cause = byPeer || code !== CloseCode.Normal ? closeCodeName(code) : (this.failure ?? 'connection_error');
    this.events.closed(this, code, reason, byPeer, cause);
  }

  /**
   * The read buffer is shared by every session of the process and reused at the next read: the
   * decoder may keep what it was given (a frame's first part, waiting for the rest), so it gets a
   * copy.
   */
  private onRead(length: number, buffer: Uint8Array): boolean {
    this.connection.receive(Buffer.from(buffer.subarray(0, length)));
    return true; // keep reading, as the stream did for its 'data' listener
  }

  get isWelcomed(): boolean {
    return this.welcome !== undefined && !this.connection.isClosed;
  }

  close(code: CloseCode, reason: string): void {
    if (this.framed) {
      this.framed.close(code, reason);
      return;
    }
    // Still connecting: there is no stream to say goodbye on.
    this.end(code, reason, false);
    this.tcp.destroy();
  }
}
