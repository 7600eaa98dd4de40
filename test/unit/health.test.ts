// Readiness (/readyz, nodelink_ready) from status, the peer event log and the TUN check, and the
// event log itself: what each event leaves behind for status.

import { expect } from 'chai';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  PeerEventLog,
  cached,
  clientReadiness,
  serverReadiness,
  type PeerStatus,
  type ReplicaStatus,
} from '../../src/admin/index.js';
import { idlePeerStatus } from '../support/status.js';

const TUN_UP = { ok: true, detail: 'nl0 is up' };
const TUN_DOWN = { ok: false, detail: 'nl0 does not exist' };
const NOW = Date.parse('2030-01-01T00:00:00Z');

function server(overrides: Partial<PeerStatus> = {}): PeerStatus {
  return idlePeerStatus({
    name: 'server',
    connected: true,
    endpoint: '198.18.0.2:8443',
    routes: ['198.18.255.0/24'],
    connectedSince: '2029-12-31T23:59:00.000Z',
    lastPongMs: 1,
    ...overrides,
  });
}

function replicas(overrides: Partial<ReplicaStatus> = {}): ReplicaStatus {
  return {
    server: '198.18.0.2:8443',
    count: 1,
    held: ['a'],
    missing: [],
    unseen: 0,
    complete: true,
    flows: 0,
    ...overrides,
  };
}

/** A log in which `peer` connected and got its last pong `ageMs` before NOW. */
function ponged(peer: string, ageMs: number): PeerEventLog {
  const events = new PeerEventLog();
  events.connected(peer);
  events.pong(peer, 1);
  events.get(peer)!.lastPongAt = NOW - ageMs;
  return events;
}

describe('health', function () {
  describe('serverReadiness', function () {
    it('is ready once listening with the TUN up, and names what is missing otherwise', function () {
      expect(serverReadiness('198.18.0.2:8443', TUN_UP)).to.deep.equal({
        ok: true,
        checks: { listening: { ok: true, detail: 'accepting nodes on 198.18.0.2:8443' }, tun: TUN_UP },
      });
      const early = serverReadiness(undefined, TUN_UP);
      expect(early.ok).to.equal(false);
      expect(early.checks.listening).to.deep.equal({ ok: false, detail: 'not listening yet' });
      expect(serverReadiness('198.18.0.2:8443', TUN_DOWN).ok).to.equal(false);
    });
  });

  describe('clientReadiness', function () {
    const input = { deadAfterMs: 3000, tun: TUN_UP, now: NOW };

    it('is ready with a session, a recent pong, the TUN up and every replica held', function () {
      const health = clientReadiness({
        ...input,
        status: { peers: [server()], replicas: [replicas()] },
        events: ponged('server', 500),
      });
      expect(health.ok).to.equal(true);
      expect(health.checks.authenticated!.detail).to.equal(
        'session with 198.18.0.2:8443 since 2029-12-31T23:59:00.000Z',
      );
      expect(health.checks.pong).to.deep.equal({ ok: true, detail: 'last pong 500 ms ago' });
      expect(health.checks.replicas).to.deep.equal({
        ok: true,
        detail: 'server replicas held: 1/1 at 198.18.0.2:8443',
      });
    });

    it('is not ready when the last pong is older than --dead-after-ms', function () {
      const health = clientReadiness({ ...input, status: { peers: [server()] }, events: ponged('server', 3001) });
      expect(health.ok).to.equal(false);
      expect(health.checks.pong).to.deep.equal({ ok: false, detail: 'last pong 3001 ms ago (limit 3000 ms)' });
    });

    it('without a session says why from the event log, and that no pong came', function () {
      const events = new PeerEventLog();
      events.handshakeFailed('server_key_mismatch', 'server', 'the server presented another key');
      const health = clientReadiness({ ...input, status: { peers: [server({ connected: false })] }, events });
      expect(health.checks.authenticated).to.deep.equal({
        ok: false,
        detail: 'server_key_mismatch: the server presented another key',
      });
      expect(health.checks.pong).to.deep.equal({ ok: false, detail: 'no pong yet' });
      const fresh = clientReadiness({ ...input, status: { peers: [] }, events: new PeerEventLog() });
      expect(fresh.checks.authenticated).to.deep.equal({ ok: false, detail: 'not connected to the server yet' });
    });

    it('with several servers, judges by the connected one', function () {
      const peers = [server({ name: 'server a', connected: false }), server({ name: 'server b' })];
      const health = clientReadiness({ ...input, status: { peers }, events: ponged('server b', 10) });
      expect(health.ok).to.equal(true);
    });

    it('is not ready while a replica the count promises is missing or unseen', function () {
      const short = replicas({
        count: 3,
        held: ['a'],
        missing: [{ id: 'b', since: '2029-12-31T23:59:30.000Z' }],
        unseen: 1,
        complete: false,
      });
      const health = clientReadiness({
        ...input,
        status: { peers: [server()], replicas: [short] },
        events: ponged('server', 10),
      });
      expect(health.ok).to.equal(false);
      expect(health.checks.replicas).to.deep.equal({
        ok: false,
        detail: 'server replicas held: 1/3 at 198.18.0.2:8443, missing b, 1 not reached yet',
      });
    });

    it('is not ready with the TUN down', function () {
      const health = clientReadiness({
        ...input,
        tun: TUN_DOWN,
        status: { peers: [server()] },
        events: ponged('server', 10),
      });
      expect(health.ok).to.equal(false);
      expect(health.checks.tun).to.equal(TUN_DOWN);
    });
  });

  describe('PeerEventLog', function () {
    it('counts sessions after the first as reconnects and clears the last error on a session', function () {
      const events = new PeerEventLog();
      events.handshakeFailed('unknown_key', 'node-a');
      expect(events.get('node-a')).to.include({ handshakes: 0, lastError: 'unknown_key' });
      events.connected('node-a');
      expect(events.get('node-a')).to.include({ handshakes: 1, reconnects: 0, lastError: null });
      events.disconnected('node-a', 'timeout');
      expect(events.get('node-a')!.lastError).to.equal('disconnected: timeout');
      events.connected('node-a');
      expect(events.get('node-a')).to.include({ handshakes: 2, reconnects: 1, lastError: null });
      // A failure not tied to a peer (a stranger's key) leaves no record.
      events.handshakeFailed('unknown_key');
      expect([...events.entries()].map(([peer]) => peer)).to.deep.equal(['node-a']);
    });

    it("writes a peer's events into its status entry; the last pong only while connected", function () {
      const events = new PeerEventLog();
      events.connected('node-a');
      events.pong('node-a', 2.5);
      const connected = server({ name: 'node-a' });
      events.addTo(connected);
      expect(connected).to.include({ handshakes: 1, reconnects: 0, lastError: null });
      expect(Date.parse(connected.lastPongAt!)).to.be.closeTo(Date.now(), 5000);
      const gone = server({ name: 'node-a', connected: false });
      events.addTo(gone);
      expect(gone.lastPongAt).to.equal(null);
      const unknown = server({ name: 'node-z' });
      events.addTo(unknown);
      expect(unknown).to.include({ handshakes: 0, reconnects: 0, lastError: null, lastPongAt: null });
    });
  });

  describe('cached', function () {
    it('reads once per window, then again', async function () {
      let reads = 0;
      const read = cached(50, async () => ++reads);
      expect(await read()).to.equal(1);
      expect(await read()).to.equal(1);
      await sleep(80);
      expect(await read()).to.equal(2);
    });
  });
});
