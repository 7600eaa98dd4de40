// Offloaded packets (tun/device.ts): finished for a peer that did not agree to them (checksums
// completed, TCP cut into segments, checked against a full recomputation), and carried as
// Offload frames only on a session that agreed, both ways.

import { expect } from 'chai';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CloseCode,
  FrameDecoder,
  FrameType,
  MIN_OFFLOAD_SEGMENT,
  decodeWelcome,
  encodeWelcome,
} from '../../src/protocol/index.js';
import { encodeHello, verifyHello } from '../../src/auth/index.js';
import { finishOffloaded, internetChecksum } from '../../src/routing/index.js';
import { FramedConnection, type ConnectionEvents, type ConnectionOptions } from '../../src/link/connection.js';
import { newPair } from '../support/link-rig.js';
import { ipv4, ipv6 } from '../support/packets.js';
import { prng } from '../support/random.js';
import { duplexPair } from '../support/streams.js';
import { waitFor } from '../support/wait.js';

const TCP = 6;
const UDP = 17;
const FIN = 0x01;
const PSH = 0x08;
const ACK = 0x10;
const CWR = 0x80;

function bytes(n: number, seed: number): Buffer {
  const rand = prng(seed);
  return Buffer.from(Array.from({ length: n }, () => Math.floor(rand() * 256)));
}

/** A TCP header (with 12 bytes of options) and `data`, its checksum still zero. */
function tcp(data: Buffer, flags: number, seq = 0xfffff000): Buffer {
  const header = Buffer.alloc(32);
  header.writeUInt16BE(40000, 0);
  header.writeUInt16BE(10250, 2);
  header.writeUInt32BE(seq, 4);
  header.writeUInt32BE(7, 8);
  header[12] = (32 / 4) << 4;
  header[13] = flags;
  header.writeUInt16BE(512, 14);
  header[20] = 1; // NOP NOP timestamp
  header[21] = 1;
  header[22] = 8;
  header[23] = 10;
  return Buffer.concat([header, data]);
}

function udp(data: Buffer): Buffer {
  const header = Buffer.alloc(8);
  header.writeUInt16BE(5353, 0);
  header.writeUInt16BE(53, 2);
  header.writeUInt16BE(8 + data.length, 4);
  return Buffer.concat([header, data]);
}

function pseudoSum(packet: Buffer, protocol: number, length: number): number {
  const v4 = packet[0]! >> 4 === 4;
  let sum = protocol + (length >>> 16) + (length & 0xffff);
  for (let i = v4 ? 12 : 8; i < (v4 ? 20 : 40); i += 2) sum += packet.readUInt16BE(i);
  return sum;
}

/** As the kernel hands it over with a partial checksum: the pseudo-header sum in the field. */
function partial(packet: Buffer, field: number, protocol: number): Buffer {
  const start = packet[0]! >> 4 === 4 ? 20 : 40;
  let sum = pseudoSum(packet, protocol, packet.length - start);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  packet.writeUInt16BE(sum, start + field);
  return packet;
}

/** Whether the transport checksum of `packet` verifies (the sum over pseudo-header and data is all ones). */
function transportChecksumOk(packet: Buffer, protocol: number): boolean {
  const start = packet[0]! >> 4 === 4 ? 20 : 40;
  return internetChecksum(packet, start, packet.length, pseudoSum(packet, protocol, packet.length - start)) === 0;
}

function finish(packet: Buffer, offload: number): Buffer[] {
  const out: Buffer[] = [];
  expect(finishOffloaded(packet, offload, (p) => out.push(Buffer.from(p)))).to.equal(true);
  return out;
}

describe('offloaded packets', function () {
  describe('finishOffloaded, for a peer that did not agree to offloads', function () {
    for (const family of [4, 6] as const) {
      it(`cuts an IPv${family} TCP packet into segments with correct checksums, sequence numbers and flags`, () => {
        const data = bytes(5000, family);
        const segment = tcp(data, ACK | PSH | FIN | CWR);
        const packet =
          family === 4
            ? ipv4('198.18.255.1', '198.19.1.10', segment, TCP)
            : ipv6('fd00:18:ff::1', 'fd00:19:1::10', segment, TCP);
        const start = family === 4 ? 20 : 40;
        const mss = 1448;
        const segments = finish(partial(packet, 16, TCP), mss + 1);
        expect(segments).to.have.length(Math.ceil(data.length / mss));
        const joined: Buffer[] = [];
        segments.forEach((s, i) => {
          const last = i === segments.length - 1;
          expect(s.length).to.equal(start + 32 + (last ? data.length - i * mss : mss));
          if (family === 4) {
            expect(s.readUInt16BE(2)).to.equal(s.length);
            expect(s.readUInt16BE(4)).to.equal((packet.readUInt16BE(4) + i) & 0xffff);
            expect(internetChecksum(s, 0, 20), 'IPv4 header checksum').to.equal(0);
          } else {
            expect(s.readUInt16BE(4)).to.equal(s.length - 40);
          }
          expect(s.readUInt32BE(start + 4)).to.equal((0xfffff000 + i * mss) >>> 0); // wraps past 2^32
          const flags = s[start + 13]!;
          expect(flags & (FIN | PSH), `FIN/PSH on segment ${i}`).to.equal(last ? FIN | PSH : 0);
          expect(flags & CWR, `CWR on segment ${i}`).to.equal(i === 0 ? CWR : 0);
          expect(flags & ACK).to.equal(ACK);
          expect(s.subarray(start + 20, start + 32)).to.deep.equal(segment.subarray(20, 32)); // options kept
          expect(transportChecksumOk(s, TCP), `TCP checksum of segment ${i}`).to.equal(true);
          joined.push(s.subarray(start + 32));
        });
        expect(Buffer.concat(joined)).to.deep.equal(data);
      });
    }

    it('completes a partial TCP or UDP checksum in place (UDP never 0), IPv4 and IPv6', () => {
      const cases: Array<[Buffer, number, number]> = [
        [ipv4('198.18.255.1', '198.19.1.10', tcp(bytes(999, 1), ACK), TCP), 16, TCP],
        [ipv6('fd00:18:ff::1', 'fd00:19:1::10', tcp(bytes(17, 2), ACK), TCP), 16, TCP],
        [ipv4('198.18.255.1', '198.19.1.10', udp(bytes(301, 3)), UDP), 6, UDP],
        [ipv6('fd00:18:ff::1', 'fd00:19:1::10', udp(bytes(64, 4)), UDP), 6, UDP],
      ];
      for (const [packet, field, protocol] of cases) {
        const out = finish(partial(packet, field, protocol), 1);
        expect(out).to.have.length(1);
        expect(transportChecksumOk(out[0]!, protocol)).to.equal(true);
        // A TCP packet no longer than one segment is only completed.
        if (protocol === TCP) expect(finish(partial(Buffer.from(packet), field, protocol), 1449)).to.have.length(1);
      }
      // A UDP datagram whose checksum computes to 0 carries 0xffff (0 would mean "no checksum"):
      // two data bytes equal to the checksum of the datagram with them zero make the sum all ones.
      const zero = ipv4('198.18.255.1', '198.19.1.10', udp(Buffer.alloc(2)), UDP);
      zero.writeUInt16BE(internetChecksum(zero, 20, zero.length, pseudoSum(zero, UDP, zero.length - 20)), 28);
      const [done] = finish(partial(zero, 6, UDP), 1);
      expect(done!.readUInt16BE(26)).to.equal(0xffff);
      expect(transportChecksumOk(done!, UDP)).to.equal(true);
    });

    it('refuses what tunio never hands over: a fragment, a wrong length, segments of UDP, ICMP', () => {
      const fragment = ipv4('198.18.255.1', '198.19.1.10', tcp(bytes(100, 5), ACK), TCP);
      fragment[6] = 0x20; // more fragments
      const short = ipv4('198.18.255.1', '198.19.1.10', tcp(bytes(100, 6), ACK), TCP).subarray(0, 100);
      const udpSegments = ipv4('198.18.255.1', '198.19.1.10', udp(bytes(3000, 7)), UDP);
      const icmp = ipv4('198.18.255.1', '198.19.1.10', Buffer.alloc(16), 1);
      for (const [packet, offload] of [
        [fragment, 1],
        [short, 1],
        [udpSegments, 1449],
        [icmp, 1],
      ] as const) {
        expect(finishOffloaded(packet, offload, () => expect.fail('no packet from a refused one'))).to.equal(false);
      }
    });
  });

  describe('the offer and the agreement', function () {
    it('the hello offers offloads only when asked, and reads absent as not offered', () => {
      const pair = newPair();
      const exporter = Buffer.alloc(32, 7);
      const offered = verifyHello(encodeHello(pair, exporter, { name: 'n', routes: [], offload: true }), exporter);
      const plain = verifyHello(encodeHello(pair, exporter, { name: 'n', routes: [] }), exporter);
      expect(offered.offload).to.equal(true);
      expect(plain.offload).to.equal(undefined);
    });

    it('the welcome carries the agreement, and reads an older server as not agreeing', () => {
      const base = {
        tunnelCidrs: ['198.18.255.0/24'],
        serverAddresses: ['198.18.255.1'],
        serverId: '',
        serverCount: 1,
      };
      expect(decodeWelcome(encodeWelcome({ ...base, offload: true })).offload).to.equal(true);
      expect(decodeWelcome(encodeWelcome({ ...base, offload: false })).offload).to.equal(undefined);
      expect(JSON.parse(encodeWelcome(base).toString())).to.not.have.property('offload');
    });
  });

  describe('FramedConnection', function () {
    const OPTIONS: ConnectionOptions = {
      maxQueueBytes: 4 * 1024 * 1024,
      keepaliveIntervalMs: 60_000,
      deadAfterMs: 60_000,
    };

    function recorder() {
      const data: Array<[Buffer, number]> = [];
      const closes: Array<[CloseCode, string]> = [];
      const events: ConnectionEvents = {
        onData: (packet, offload) => data.push([Buffer.from(packet), offload]),
        onControl: () => undefined,
        onClose: (code, reason) => closes.push([code, reason]),
      };
      return { data, closes, events };
    }

    function gsoPacket(): Buffer {
      return partial(ipv4('198.18.255.1', '198.19.1.10', tcp(bytes(4000, 9), ACK | PSH), TCP), 16, TCP);
    }

    it('sends an offloaded packet as one Offload frame on a session that agreed, and the peer gets it whole', async () => {
      const [a, b] = duplexPair();
      const near = new FramedConnection(a, recorder().events, OPTIONS);
      const far = recorder();
      const farConnection = new FramedConnection(b, far.events, OPTIONS);
      near.agreeOffloads();
      farConnection.agreeOffloads();
      const packet = gsoPacket();
      expect(near.sendData(packet, 1449)).to.equal(true);
      await waitFor('the Offload frame', () => far.data.length === 1, 2000);
      expect(far.data[0]![0]).to.deep.equal(packet);
      expect(far.data[0]![1]).to.equal(1449);
      near.destroy('test over');
      farConnection.destroy('test over');
    });

    for (const agreed of [false, true]) {
      const title = agreed
        ? 'finishes a packet cut into segments smaller than a peer takes into plain Data frames'
        : 'finishes it into plain Data frames on a session that did not agree: the peer never sees an Offload frame';
      it(title, async () => {
        const [a, b] = duplexPair();
        const near = new FramedConnection(a, recorder().events, OPTIONS);
        if (agreed) near.agreeOffloads();
        const types: FrameType[] = [];
        const packets: Buffer[] = [];
        const decoder = new FrameDecoder((type, payload) => {
          types.push(type);
          packets.push(Buffer.from(payload));
        });
        b.on('data', (chunk: Buffer) => decoder.push(chunk));
        const segment = agreed ? MIN_OFFLOAD_SEGMENT - 1 : 1448;
        const expected = Math.ceil(4000 / segment);
        expect(near.sendData(gsoPacket(), segment + 1)).to.equal(true);
        await waitFor(`${expected} Data frames`, () => types.length === expected, 2000);
        await sleep(20);
        expect(types).to.deep.equal(Array.from({ length: expected }, () => FrameType.Data));
        for (const p of packets) expect(transportChecksumOk(p, TCP)).to.equal(true);
        near.destroy('test over');
        b.destroy();
      });
    }

    it('closes with protocol_error on an Offload frame it did not agree to', async () => {
      const [a, b] = duplexPair();
      const sender = new FramedConnection(a, recorder().events, OPTIONS);
      sender.agreeOffloads();
      const receiver = recorder();
      const receiving = new FramedConnection(b, receiver.events, OPTIONS);
      sender.sendData(gsoPacket(), 1449);
      await waitFor('the close', () => receiver.closes.length === 1, 2000);
      expect(receiver.closes[0]![0]).to.equal(CloseCode.ProtocolError);
      expect(receiver.closes[0]![1]).to.match(/did not agree to offloads/);
      expect(receiver.data).to.have.length(0);
      sender.destroy('test over');
      receiving.destroy('test over');
    });
  });
});
