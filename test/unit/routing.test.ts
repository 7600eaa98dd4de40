import { expect } from 'chai';
import {
  Prefix,
  PrefixTable,
  RoutingError,
  buildUnreachable,
  checkPacket,
  formatAddress,
  internetChecksum,
  parseAddress,
  packetFamily,
} from '../../src/routing/index.js';
import { ipv4, ipv6 } from '../support/packets.js';
import { prng } from '../support/random.js';

function expectRoutingError(fn: () => unknown, code: string, message: RegExp | string): void {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(RoutingError);
    expect((err as RoutingError).code).to.equal(code);
    const text = (err as RoutingError).message;
    if (typeof message === 'string') expect(text).to.include(message);
    else expect(text).to.match(message);
    return;
  }
  expect.fail('expected a RoutingError');
}

function bytesOf(...values: number[]): Uint8Array {
  return Uint8Array.from(values);
}

describe('routing', () => {
  describe('Prefix.parse', () => {
    it('parses IPv4 and IPv6 CIDRs into network bytes', () => {
      const v4 = Prefix.parse('198.19.1.0/24');
      expect(v4.family).to.equal(4);
      expect(Array.from(v4.bytes)).to.deep.equal([198, 19, 1, 0]);
      expect(v4.length).to.equal(24);

      const v6 = Prefix.parse('fd00:0:0:1::/64');
      expect(v6.family).to.equal(6);
      expect(v6.bytes.length).to.equal(16);
      expect(Array.from(v6.bytes.subarray(0, 8))).to.deep.equal([0xfd, 0, 0, 0, 0, 0, 0, 1]);
      expect(v6.length).to.equal(64);
    });

    it('prints the canonical form', () => {
      expect(Prefix.parse('FD00:0000:0:0::/8').toString()).to.equal('fd00::/8');
      // RFC 5952: the longest run of zero groups is the one compressed.
      expect(Prefix.parse('2001:db8:0:0:1:0:0:0/80').toString()).to.equal('2001:db8:0:0:1::/80');
      expect(Prefix.parse('0.0.0.0/0').toString()).to.equal('0.0.0.0/0');
      expect(Prefix.parse('::/0').toString()).to.equal('::/0');
      expect(Prefix.parse('198.18.255.1/32').toString()).to.equal('198.18.255.1/32');
    });

    it('rejects host bits set and suggests the network', () => {
      expectRoutingError(
        () => Prefix.parse('198.19.1.5/24'),
        'host_bits_set',
        /"198\.19\.1\.5\/24" has host bits set: did you mean 198\.19\.1\.0\/24\?/,
      );
      expectRoutingError(() => Prefix.parse('fd00::1/64'), 'host_bits_set', /did you mean fd00::\/64\?/);
      expectRoutingError(() => Prefix.parse('0.0.0.1/0'), 'host_bits_set', /0\.0\.0\.0\/0/);
    });

    it('rejects a bare address, suggesting a host route', () => {
      expectRoutingError(() => Prefix.parse('198.19.0.10'), 'bad_cidr', /198\.19\.0\.10\/32/);
      expectRoutingError(() => Prefix.parse('fd00::10'), 'bad_cidr', /fd00::10\/128/);
    });

    it('rejects garbage', () => {
      for (const bad of [
        '',
        '/',
        '/24',
        '198.19.1.0/',
        '198.19.1.0/33',
        'fd00::/129',
        '198.19.1.0/08',
        '198.19.1.0/-1',
        '198.19.1/24',
        '198.19.1.0.0/24',
        '256.0.0.0/8',
        'nodes/24',
        ' 198.19.1.0/24',
        '198.19.1.0/24 ',
        'fe80::%eth0/64',
        '198.19.1.0/24/24',
        '1::2::3/64',
      ]) {
        expectRoutingError(() => Prefix.parse(bad), 'bad_cidr', `"${bad}"`);
      }
    });

    it('parses addresses and host routes', () => {
      expect(Prefix.fromAddress('198.19.0.10').toString()).to.equal('198.19.0.10/32');
      expect(Prefix.fromAddress('FD00::A').toString()).to.equal('fd00::a/128');
      expect(parseAddress('::1').family).to.equal(6);
      expectRoutingError(() => parseAddress('198.19.0.10/32'), 'bad_address', /"198\.19\.0\.10\/32"/);
      expectRoutingError(() => Prefix.fromAddress('nope'), 'bad_address', /not an IP address/);
    });

    it('gives the first host address', () => {
      expect(Prefix.parse('198.18.255.0/24').firstHost()).to.equal('198.18.255.1');
      expect(Prefix.parse('fd00:ff::/64').firstHost()).to.equal('fd00:ff::1');
      expect(Prefix.parse('10.0.0.0/31').firstHost()).to.equal('10.0.0.1');
      expectRoutingError(() => Prefix.parse('10.0.0.1/32').firstHost(), 'bad_cidr', /no room/);
    });
  });

  describe('Prefix relations', () => {
    const p = (s: string) => Prefix.parse(s);

    it('contains', () => {
      expect(p('198.19.0.0/16').contains(p('198.19.1.0/24'))).to.equal(true);
      expect(p('198.19.1.0/24').contains(p('198.19.0.0/16'))).to.equal(false);
      expect(p('198.19.1.0/24').contains(p('198.19.1.0/24'))).to.equal(true);
      expect(p('198.19.1.0/24').contains(p('198.19.2.0/24'))).to.equal(false);
      expect(p('198.19.1.128/25').contains(p('198.19.1.0/25'))).to.equal(false);
      expect(p('0.0.0.0/0').contains(p('255.255.255.255/32'))).to.equal(true);
      expect(p('::/0').contains(p('198.19.1.0/24'))).to.equal(false);
      expect(p('fd00::/8').contains(p('fd12:3456::/32'))).to.equal(true);
    });

    it('overlaps', () => {
      expect(p('198.19.0.0/16').overlaps(p('198.19.1.0/24'))).to.equal(true);
      expect(p('198.19.1.0/24').overlaps(p('198.19.0.0/16'))).to.equal(true);
      expect(p('198.19.1.0/24').overlaps(p('198.19.2.0/24'))).to.equal(false);
      expect(p('198.19.1.0/25').overlaps(p('198.19.1.128/25'))).to.equal(false);
      expect(p('fd00::/64').overlaps(p('fd00::1/128'))).to.equal(true);
      expect(p('0.0.0.0/0').overlaps(p('::/0'))).to.equal(false);
    });

    it('containsAddress and equals', () => {
      const net = p('198.19.0.0/23');
      expect(net.containsAddress(bytesOf(198, 19, 1, 255))).to.equal(true);
      expect(net.containsAddress(bytesOf(198, 19, 2, 0))).to.equal(false);
      expect(net.containsAddress(bytesOf(9, 9, 198, 19, 0, 1), 2)).to.equal(true);
      expect(net.containsAddress(bytesOf(198, 19, 0), 0)).to.equal(false);
      expect(p('198.19.0.0/23').equals(p('198.19.0.0/23'))).to.equal(true);
      expect(p('198.19.0.0/23').equals(p('198.19.0.0/24'))).to.equal(false);
      expect(p('::/0').equals(p('0.0.0.0/0'))).to.equal(false);
    });
  });

  describe('PrefixTable', () => {
    /** The slow reference: scan every route, keep the longest that contains the address. */
    function naiveLookup<T>(routes: Map<string, [Prefix, T]>, family: 4 | 6, addr: Uint8Array): T | undefined {
      let best: [Prefix, T] | undefined;
      for (const [prefix, value] of routes.values()) {
        if (prefix.family !== family || !prefix.containsAddress(addr)) continue;
        if (!best || prefix.length > best[0].length) best = [prefix, value];
      }
      return best?.[1];
    }

    function randomPrefix(rand: () => number, family: 4 | 6): Prefix {
      const size = family === 4 ? 4 : 16;
      const bits = size * 8;
      // Mostly realistic lengths, some very short ones so routes nest deeply.
      const length = rand() < 0.1 ? Math.floor(rand() * 9) : Math.floor(rand() * (bits + 1));
      const bytes = new Uint8Array(size);
      // Share leading bytes often, so prefixes overlap instead of being scattered.
      const shared = family === 4 ? [198, 19] : [0xfd, 0x00, 0x12];
      for (let i = 0; i < size; i++) {
        bytes[i] = i < shared.length && rand() < 0.8 ? shared[i] : Math.floor(rand() * 256);
      }
      for (let i = 0; i < size; i++) {
        const keep = Math.min(8, Math.max(0, length - i * 8));
        bytes[i] &= (0xff << (8 - keep)) & 0xff;
      }
      return Prefix.parse(`${formatAddress(family, bytes)}/${length}`);
    }

    /** Most addresses fall inside some route, with their host bits randomised. */
    function randomAddress(rand: () => number, family: 4 | 6, prefixes: Prefix[]): Uint8Array {
      const size = family === 4 ? 4 : 16;
      const addr = new Uint8Array(size);
      for (let i = 0; i < size; i++) addr[i] = Math.floor(rand() * 256);
      if (prefixes.length > 0 && rand() < 0.8) {
        const base = prefixes[Math.floor(rand() * prefixes.length)];
        for (let i = 0; i < base.length; i++) {
          const mask = 0x80 >> (i & 7);
          addr[i >> 3] = (addr[i >> 3] & ~mask) | (base.bytes[i >> 3] & mask);
        }
      }
      return addr;
    }

    for (const family of [4, 6] as const) {
      it(`matches a naive longest-prefix matcher on random IPv${family} lookups`, () => {
        const seed = 0x5eed0000 + family;
        const rand = prng(seed);
        const table = new PrefixTable<number>();
        const routes = new Map<string, [Prefix, number]>();
        for (let i = 0; i < 400; i++) {
          const prefix = randomPrefix(rand, family);
          table.insert(prefix, i);
          routes.set(prefix.toString(), [prefix, i]);
        }
        // The other family's routes must never answer.
        table.insert(Prefix.parse(family === 4 ? '::/0' : '0.0.0.0/0'), -1);
        expect(table.size).to.equal(routes.size + 1);

        const check = (round: string) => {
          const prefixes = [...routes.values()].map(([prefix]) => prefix);
          let hits = 0;
          for (let i = 0; i < 5000; i++) {
            const addr = randomAddress(rand, family, prefixes);
            const want = naiveLookup(routes, family, addr);
            const got = table.lookup(family, addr);
            if (got !== want) {
              expect.fail(`seed ${seed} ${round} lookup ${i} ${formatAddress(family, addr)}: got ${got}, want ${want}`);
            }
            if (want !== undefined) hits++;
          }
          expect(hits, 'most lookups should hit a route').to.be.greaterThan(2500);
          for (const [key, [prefix, value]] of routes) {
            expect(table.get(prefix), key).to.equal(value);
          }
        };
        check('full table');

        for (const [key, [prefix]] of [...routes]) {
          if (rand() < 0.5) {
            expect(table.delete(prefix), key).to.equal(true);
            expect(table.delete(prefix), key).to.equal(false);
            expect(table.get(prefix), key).to.equal(undefined);
            routes.delete(key);
          }
        }
        expect(table.size).to.equal(routes.size + 1);
        check('after deletes');

        const listed = table.entries().filter(([prefix]) => prefix.family === family);
        expect(listed.map(([prefix, value]) => [prefix.toString(), value])).to.have.deep.members(
          [...routes].map(([key, [, value]]) => [key, value]),
        );
      });
    }

    it('handles /0 and host routes', () => {
      const table = new PrefixTable<string>();
      table.insert(Prefix.parse('0.0.0.0/0'), 'default4');
      table.insert(Prefix.parse('::/0'), 'default6');
      table.insert(Prefix.parse('198.19.0.10/32'), 'host4');
      table.insert(Prefix.parse('255.255.255.255/32'), 'ones4');
      table.insert(Prefix.parse('fd00::10/128'), 'host6');
      table.insert(Prefix.parse('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128'), 'ones6');

      const v4 = (s: string) => table.lookup(4, parseAddress(s).bytes);
      const v6 = (s: string) => table.lookup(6, parseAddress(s).bytes);
      expect(v4('198.19.0.10')).to.equal('host4');
      expect(v4('198.19.0.11')).to.equal('default4');
      expect(v4('0.0.0.0')).to.equal('default4');
      expect(v4('255.255.255.255')).to.equal('ones4');
      expect(v6('fd00::10')).to.equal('host6');
      expect(v6('fd00::11')).to.equal('default6');
      expect(v6('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff')).to.equal('ones6');

      table.insert(Prefix.parse('0.0.0.0/0'), 'replaced');
      expect(table.size).to.equal(6);
      expect(v4('1.1.1.1')).to.equal('replaced');
      expect(table.delete(Prefix.parse('0.0.0.0/0'))).to.equal(true);
      expect(v4('1.1.1.1')).to.equal(undefined);
      expect(v4('198.19.0.10')).to.equal('host4');
      expect(table.delete(Prefix.parse('198.19.0.0/24'))).to.equal(false);
      expect(table.size).to.equal(5);
    });

    it('returns nothing for an empty table or an address past the buffer end', () => {
      const table = new PrefixTable<number>();
      expect(table.lookup(4, bytesOf(1, 2, 3, 4))).to.equal(undefined);
      table.insert(Prefix.parse('0.0.0.0/0'), 1);
      expect(table.lookup(4, bytesOf(1, 2, 3, 4))).to.equal(1);
      expect(table.lookup(4, bytesOf(1, 2, 3, 4), 1)).to.equal(undefined);
      expect(table.lookup(4, bytesOf(1, 2, 3))).to.equal(undefined);
    });

    it('looks up the destination and source of IPv4 and IPv6 packets', () => {
      const table = new PrefixTable<string>();
      table.insert(Prefix.parse('198.19.1.0/24'), 'node1');
      table.insert(Prefix.parse('198.18.255.0/24'), 'tunnel');
      table.insert(Prefix.parse('fd00:1::/64'), 'node1-v6');
      table.insert(Prefix.parse('fd00:ff::/64'), 'tunnel-v6');

      const v4 = ipv4('198.18.255.1', '198.19.1.7', new Uint8Array(8), 17);
      expect(checkPacket(v4)).to.equal(null);
      expect(table.lookupDestination(v4)).to.equal('node1');
      expect(table.lookupSource(v4)).to.equal('tunnel');

      const v6 = ipv6('fd00:ff::1', 'fd00:1::7', new Uint8Array(8), 17);
      expect(checkPacket(v6)).to.equal(null);
      expect(packetFamily(v6)).to.equal(6);
      expect(table.lookupDestination(v6)).to.equal('node1-v6');
      expect(table.lookupSource(v6)).to.equal('tunnel-v6');

      expect(table.lookupDestination(bytesOf(0x50, 0, 0, 0))).to.equal(undefined);
      expect(table.lookupDestination(new Uint8Array(0))).to.equal(undefined);
    });
  });

  describe('checkPacket', () => {
    const udp4 = () => ipv4('198.18.255.1', '198.19.1.7', new Uint8Array(12), 17);
    const udp6 = () => ipv6('fd00:ff::1', 'fd00:1::7', new Uint8Array(12), 17);

    it('accepts well-formed packets', () => {
      expect(checkPacket(udp4())).to.equal(null);
      expect(checkPacket(udp6())).to.equal(null);
      expect(packetFamily(udp4())).to.equal(4);
    });

    it('reports truncated packets', () => {
      expect(checkPacket(new Uint8Array(0))).to.equal('truncated');
      expect(checkPacket(udp4().subarray(0, 19))).to.equal('truncated');
      expect(checkPacket(udp6().subarray(0, 39))).to.equal('truncated');
      const longHeader = udp4().subarray(0, 20);
      longHeader[0] = 0x4f; // 60-byte header in a 20-byte packet
      expect(checkPacket(longHeader)).to.equal('truncated');
    });

    it('reports a wrong version', () => {
      const p = udp4();
      p[0] = 0x55;
      expect(checkPacket(p)).to.equal('bad_version');
      expect(checkPacket(bytesOf(0))).to.equal('bad_version');
      expect(() => packetFamily(p)).to.throw(RangeError);
    });

    it('reports length mismatches', () => {
      expect(checkPacket(udp4().subarray(0, 30))).to.equal('length_mismatch');
      expect(checkPacket(Buffer.concat([udp4(), Buffer.alloc(1)]))).to.equal('length_mismatch');
      expect(checkPacket(udp6().subarray(0, 50))).to.equal('length_mismatch');
      expect(checkPacket(Buffer.concat([udp6(), Buffer.alloc(1)]))).to.equal('length_mismatch');
      const shortIhl = udp4();
      shortIhl[0] = 0x44;
      expect(checkPacket(shortIhl)).to.equal('length_mismatch');
    });
  });

  describe('buildUnreachable', () => {
    const server4 = parseAddress('198.18.255.1').bytes;
    const server6 = parseAddress('fd00:ff::1').bytes;
    const payload = (n: number) => Uint8Array.from({ length: n }, (_, i) => i & 0xff);

    /** Sum of the IPv6 pseudo-header, to verify a checksum the way a receiver does. */
    function pseudoHeaderSum(p: Buffer): number {
      const addresses = ~internetChecksum(p, 8, 40) & 0xffff;
      return addresses + p.readUInt16BE(4) + p[6];
    }

    it('computes the RFC 1071 example checksum', () => {
      // RFC 1071 section 3: these words sum to 0xddf2, so the checksum is its complement.
      const words = bytesOf(0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7);
      expect(internetChecksum(words, 0, words.length)).to.equal(~0xddf2 & 0xffff);
      expect(internetChecksum(bytesOf(0xab), 0, 1)).to.equal(~0xab00 & 0xffff);
    });

    it('answers an IPv4 packet with host unreachable quoting its header and 8 bytes', () => {
      const original = ipv4('198.18.0.5', '198.19.9.9', payload(40), 6);
      const reply = buildUnreachable(original, server4);
      expect(reply).to.not.equal(null);
      const r = reply!;
      expect(checkPacket(r)).to.equal(null);
      expect(r.length).to.equal(20 + 8 + 28);
      expect(r[0]).to.equal(0x45);
      expect(r[8]).to.equal(64);
      expect(r[9]).to.equal(1);
      expect(formatAddress(4, r, 12)).to.equal('198.18.255.1');
      expect(formatAddress(4, r, 16)).to.equal('198.18.0.5');
      expect(internetChecksum(r, 0, 20)).to.equal(0);
      expect(r[20]).to.equal(3);
      expect(r[21]).to.equal(1);
      expect(internetChecksum(r, 20, r.length)).to.equal(0);
      expect(r.subarray(28).equals(original.subarray(0, 28))).to.equal(true);
    });

    it('quotes the whole of a short IPv4 packet and options in the header', () => {
      const original = ipv4('198.18.0.5', '198.19.9.9', payload(3), 17);
      const r = buildUnreachable(original, server4)!;
      expect(r.subarray(28).equals(original)).to.equal(true);
      expect(internetChecksum(r, 20, r.length)).to.equal(0);

      // A 24-byte header (one word of options): the quote is 24 + 8 bytes.
      const withOptions = Buffer.alloc(24 + 16);
      withOptions[0] = 0x46;
      withOptions.writeUInt16BE(withOptions.length, 2);
      withOptions[8] = 64;
      withOptions[9] = 17;
      withOptions.set(parseAddress('198.18.0.5').bytes, 12);
      withOptions.set(parseAddress('198.19.9.9').bytes, 16);
      const r2 = buildUnreachable(withOptions, server4)!;
      expect(r2.length).to.equal(28 + 32);
      expect(r2.subarray(28).equals(withOptions.subarray(0, 32))).to.equal(true);
    });

    it('answers an ICMP echo request but never an ICMP error', () => {
      const echo = ipv4('198.18.0.5', '198.19.9.9', bytesOf(8, 0, 0, 0, 0, 1, 0, 1), 1);
      expect(buildUnreachable(echo, server4)).to.not.equal(null);
      for (const type of [3, 4, 5, 11, 12]) {
        const error = ipv4('198.18.0.5', '198.19.9.9', bytesOf(type, 0, 0, 0, 0, 0, 0, 0), 1);
        expect(buildUnreachable(error, server4), `type ${type}`).to.equal(null);
      }
      const echo6 = ipv6('fd00::5', 'fd00:9::9', bytesOf(128, 0, 0, 0, 0, 1, 0, 1), 58);
      expect(buildUnreachable(echo6, server6)).to.not.equal(null);
      for (const type of [1, 2, 3, 4, 127]) {
        const error6 = ipv6('fd00::5', 'fd00:9::9', bytesOf(type, 0, 0, 0, 0, 0, 0, 0), 58);
        expect(buildUnreachable(error6, server6), `type ${type}`).to.equal(null);
      }
      // An ICMPv6 error behind a destination-options header is still an error.
      const behindOptions = ipv6('fd00::5', 'fd00:9::9', bytesOf(58, 0, 1, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0), 60);
      expect(buildUnreachable(behindOptions, server6)).to.equal(null);
    });

    it('never answers an unspecified or multicast source, nor a malformed packet', () => {
      expect(buildUnreachable(ipv4('0.0.0.0', '198.19.9.9', payload(8), 17), server4)).to.equal(null);
      expect(buildUnreachable(ipv4('224.0.0.1', '198.19.9.9', payload(8), 17), server4)).to.equal(null);
      expect(buildUnreachable(ipv4('198.18.0.5', '255.255.255.255', payload(8), 17), server4)).to.equal(null);
      expect(buildUnreachable(ipv6('::', 'fd00:9::9', payload(8), 17), server6)).to.equal(null);
      expect(buildUnreachable(ipv6('ff02::1', 'fd00:9::9', payload(8), 17), server6)).to.equal(null);
      expect(buildUnreachable(ipv6('fd00::5', 'ff02::1', payload(8), 17), server6)).to.equal(null);
      const good = ipv4('198.18.0.5', '198.19.9.9', payload(8), 17);
      expect(buildUnreachable(good.subarray(0, 27), server4)).to.equal(null);
      expect(buildUnreachable(good, server6), 'family mismatch').to.equal(null);
      const fragment = ipv4('198.18.0.5', '198.19.9.9', payload(8), 17);
      fragment.writeUInt16BE(0x0001, 6);
      expect(buildUnreachable(fragment, server4), 'non-first fragment').to.equal(null);
    });

    it('answers IPv6 with address unreachable and a correct pseudo-header checksum', () => {
      const original = ipv6('fd00::5', 'fd00:9::9', payload(100), 17);
      const r = buildUnreachable(original, server6)!;
      expect(checkPacket(r)).to.equal(null);
      expect(r.length).to.equal(40 + 8 + original.length);
      expect(r[0] >> 4).to.equal(6);
      expect(r[6]).to.equal(58);
      expect(r[7]).to.equal(64);
      expect(formatAddress(6, r, 8)).to.equal('fd00:ff::1');
      expect(formatAddress(6, r, 24)).to.equal('fd00::5');
      expect(r[40]).to.equal(1);
      expect(r[41]).to.equal(3);
      expect(r.subarray(48).equals(original)).to.equal(true);
      expect(internetChecksum(r, 40, r.length, pseudoHeaderSum(r))).to.equal(0);
      // Without the pseudo-header the checksum must not verify: it really is included.
      expect(internetChecksum(r, 40, r.length)).to.not.equal(0);
    });

    it('produces an ICMPv6 checksum that verifies independently of our helper', () => {
      // Independent of internetChecksum: lay out the RFC 8200 pseudo-header in front of the
      // message and sum it the way a receiver does; a correct message sums to 0xffff.
      const original = ipv6('fd00::5', 'fd00:9::9', payload(20), 6);
      const r = buildUnreachable(original, server6)!;
      const icmp = Buffer.from(r.subarray(40));
      const pseudo = Buffer.alloc(40);
      r.copy(pseudo, 0, 8, 40);
      pseudo.writeUInt32BE(icmp.length, 32);
      pseudo[39] = 58;
      const whole = Buffer.concat([pseudo, icmp]);
      let sum = 0;
      for (let i = 0; i < whole.length; i += 2) sum += whole.readUInt16BE(i);
      while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
      expect(sum).to.equal(0xffff);
    });

    it('truncates an IPv6 quote to fit in 1280 bytes', () => {
      const original = ipv6('fd00::5', 'fd00:9::9', payload(1400), 17);
      const r = buildUnreachable(original, server6)!;
      expect(r.length).to.equal(1280);
      expect(checkPacket(r)).to.equal(null);
      expect(r.subarray(48).equals(original.subarray(0, 1232))).to.equal(true);
      expect(internetChecksum(r, 40, r.length, pseudoHeaderSum(r))).to.equal(0);
    });
  });
});
