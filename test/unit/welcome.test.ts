// The Welcome payload (src/protocol/welcome.ts) and the address helpers it travels with.

import { expect } from 'chai';
import { ProtocolError, decodeWelcome, encodeWelcome } from '../../src/protocol/index.js';
import { Prefix, formatEndpoint } from '../../src/routing/index.js';

const json = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));

describe('Welcome payload', function () {
  it('round-trips what the server sends, and nothing else', function () {
    const welcome = {
      tunnelCidrs: ['198.18.255.0/24', 'fd00:18:ff::/64'],
      serverAddresses: ['198.18.255.1', 'fd00:18:ff::1'],
      serverId: 'nodelink-7d9f-abc123',
      serverCount: 3,
    };
    const payload = encodeWelcome(welcome);
    expect(JSON.parse(payload.toString('utf8'))).to.deep.equal(welcome);
    expect(decodeWelcome(payload)).to.deep.equal(welcome);
  });

  it('reads what an older server leaves out as it meant it, and ignores fields it does not know', function () {
    expect(decodeWelcome(json({ tunnelCidrs: ['198.18.255.0/24'], later: ['198.19.0.11/32'] }))).to.deep.equal({
      tunnelCidrs: ['198.18.255.0/24'],
      serverAddresses: [],
      serverId: '',
      serverCount: 1,
    });
    expect(decodeWelcome(json({ tunnelCidrs: ['198.18.255.0/24'], routes: ['198.19.0.11/32'] })).routes).to.deep.equal([
      '198.19.0.11/32',
    ]);
  });

  it('refuses, naming the field, whatever is not a Welcome', function () {
    const cases: Array<[string, Buffer, RegExp]> = [
      ['not JSON', Buffer.from('{"tunnelCidrs": '), /not JSON/],
      ['an array', json([]), /not a JSON object/],
      ['null', json(null), /not a JSON object/],
      ['no tunnelCidrs', json({ serverAddresses: [] }), /tunnelCidrs is not a list/],
      ['tunnelCidrs a string', json({ tunnelCidrs: '198.18.255.0/24' }), /tunnelCidrs is not a list/],
      ['too many tunnelCidrs', json({ tunnelCidrs: Array(17).fill('198.18.255.0/24') }), /at most 16/],
      ['a CIDR without length', json({ tunnelCidrs: ['198.18.255.0'] }), /tunnelCidrs holds "198.18.255.0"/],
      ['a length too long', json({ tunnelCidrs: ['198.18.255.0/33'] }), /tunnelCidrs holds/],
      ['a number', json({ tunnelCidrs: [24] }), /tunnelCidrs holds 24/],
      ['a host name', json({ tunnelCidrs: ['cp.example/24'] }), /tunnelCidrs holds/],
      [
        'a server address with a length',
        json({ tunnelCidrs: [], serverAddresses: ['198.18.255.1/32'] }),
        /serverAddresses holds/,
      ],
      [
        'a server address that is no address',
        json({ tunnelCidrs: [], serverAddresses: ['localhost'] }),
        /serverAddresses holds "localhost"/,
      ],
      ['serverAddresses an object', json({ tunnelCidrs: [], serverAddresses: {} }), /serverAddresses is not a list/],
      ['an empty serverId', json({ tunnelCidrs: [], serverId: '' }), /serverId "" is not/],
      ['a serverId with a space', json({ tunnelCidrs: [], serverId: 'a b' }), /serverId "a b" is not/],
      ['a serverId of 64 characters', json({ tunnelCidrs: [], serverId: 'a'.repeat(64) }), /serverId/],
      ['a serverCount of 0', json({ tunnelCidrs: [], serverCount: 0 }), /serverCount 0 is not/],
      ['a serverCount of 1.5', json({ tunnelCidrs: [], serverCount: 1.5 }), /serverCount 1.5/],
      ['a serverCount of 17', json({ tunnelCidrs: [], serverCount: 17 }), /from 1 to 16/],
      ['a serverCount in text', json({ tunnelCidrs: [], serverCount: '3' }), /serverCount "3"/],
    ];
    for (const [what, payload, message] of cases) {
      let caught: unknown;
      try {
        decodeWelcome(payload);
      } catch (err) {
        caught = err;
      }
      expect(caught, what).to.be.instanceOf(ProtocolError);
      expect((caught as ProtocolError).code, what).to.equal('bad_payload');
      expect((caught as ProtocolError).message, what).to.match(message);
    }
  });
});

describe('address text', function () {
  it('Prefix.address is the network address without its length', function () {
    expect(Prefix.parse('198.19.1.0/24').address).to.equal('198.19.1.0');
    expect(Prefix.fromAddress('198.18.255.1').address).to.equal('198.18.255.1');
    expect(Prefix.parse('FD00:18:FF::/64').address).to.equal('fd00:18:ff::');
  });

  it('formatEndpoint brackets an IPv6 host and nothing else', function () {
    expect(formatEndpoint({ host: '198.18.0.2', port: 8443 })).to.equal('198.18.0.2:8443');
    expect(formatEndpoint({ host: 'fd00::2', port: 8443 })).to.equal('[fd00::2]:8443');
    expect(formatEndpoint({ host: 'cp.example', port: '9476' })).to.equal('cp.example:9476');
  });
});
