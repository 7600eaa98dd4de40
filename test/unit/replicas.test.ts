// The client's view of several server replicas behind one address: which replica a reply goes
// back to (ReplyFlows), which replicas a node holds and misses (ReplicaSet), and when it dials the
// address again (DialPolicy). Pure modules: no sockets, no timers.

import { expect } from 'chai';
import { ReplyFlows, WAYS } from '../../src/link-client/reply-flows.js';
import { DialPolicy, MAX_REPLICAS, ReplicaSet } from '../../src/link-client/replica-set.js';
import { internetChecksum } from '../../src/routing/index.js';
import { ipv4, ipv6 } from '../support/packets.js';
import { prng } from '../support/random.js';

const TUNNEL = '198.18.255.1';
const TUNNEL6 = 'fd00:18:ff::1';
const NODE = '198.19.0.11';
const NODE6 = 'fd00:19::b';
const POD = '198.19.1.2';

const TCP = 6;
const UDP = 17;

/** A packet of a port-carrying protocol: the ports, then a few bytes. */
function ports(sport: number, dport: number, proto = TCP): { payload: Buffer; proto: number } {
  const payload = Buffer.alloc(20);
  payload.writeUInt16BE(sport, 0);
  payload.writeUInt16BE(dport, 2);
  return { payload, proto };
}

function flow4(src: string, sport: number, dst: string, dport: number, proto = TCP): Buffer {
  const { payload } = ports(sport, dport, proto);
  return ipv4(src, dst, payload, proto);
}

function flow6(src: string, sport: number, dst: string, dport: number, proto = TCP): Buffer {
  const { payload } = ports(sport, dport, proto);
  return ipv6(src, dst, payload, proto);
}

function icmp4(src: string, dst: string, type: number, id: number, quoted: Uint8Array = Buffer.alloc(0)): Buffer {
  const icmp = Buffer.alloc(8 + quoted.length);
  icmp[0] = type;
  icmp.writeUInt16BE(id, 4);
  icmp.set(quoted, 8);
  icmp.writeUInt16BE(internetChecksum(icmp, 0, icmp.length), 2);
  return ipv4(src, dst, icmp, 1);
}

function icmp6(src: string, dst: string, type: number, id: number, quoted: Uint8Array = Buffer.alloc(0)): Buffer {
  const icmp = Buffer.alloc(8 + quoted.length);
  icmp[0] = type;
  icmp.writeUInt16BE(id, 4);
  icmp.set(quoted, 8);
  return ipv6(src, dst, icmp, 58);
}

describe('ReplyFlows: the replica a reply goes back to', function () {
  it('sends a TCP reply back to the replica its flow came in from, and nothing else', function () {
    const flows = new ReplyFlows({ capacity: 64, idleMs: 1000 });
    flows.learn(flow4(TUNNEL, 40000, NODE, 10250), 2, 0);
    flows.learn(flow4(TUNNEL, 40001, NODE, 10250), 0, 0);
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40000), 1)).to.equal(2);
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40001), 1)).to.equal(0);
    // Another port, another address, another protocol, the same direction as learned: unknown.
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40002), 1)).to.equal(-1);
    expect(flows.lookup(flow4(POD, 10250, TUNNEL, 40000), 1)).to.equal(-1);
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40000, UDP), 1)).to.equal(-1);
    expect(flows.lookup(flow4(TUNNEL, 40000, NODE, 10250), 1)).to.equal(-1);
  });

  it('keys IPv6 flows by the whole address, and UDP flows by their ports', function () {
    const flows = new ReplyFlows({ capacity: 64, idleMs: 1000 });
    flows.learn(flow6(TUNNEL6, 50000, NODE6, 10250), 1, 0);
    flows.learn(flow6(TUNNEL6, 53, 'fd00:19:1::2', 8080, UDP), 3, 0);
    expect(flows.lookup(flow6(NODE6, 10250, TUNNEL6, 50000), 0)).to.equal(1);
    expect(flows.lookup(flow6('fd00:19:1::2', 8080, TUNNEL6, 53, UDP), 0)).to.equal(3);
    expect(flows.lookup(flow6('fd00:19::c', 10250, TUNNEL6, 50000), 0)).to.equal(-1);
    // The IPv4 flow with the same ports is another flow.
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 50000), 0)).to.equal(-1);
  });

  it('finds the ports behind IPv6 extension headers', function () {
    const flows = new ReplyFlows({ capacity: 64, idleMs: 1000 });
    flows.learn(flow6(TUNNEL6, 50000, NODE6, 10250), 4, 0);
    // Hop-by-hop options (8 bytes), then TCP.
    const tcp = ports(10250, 50000).payload;
    const withOptions = Buffer.concat([Buffer.from([TCP, 0, 1, 4, 0, 0, 0, 0]), tcp]);
    expect(flows.lookup(ipv6(NODE6, TUNNEL6, withOptions, 0), 0)).to.equal(4);
  });

  it('pairs an ICMP echo reply with its request by identifier, IPv4 and IPv6', function () {
    const flows = new ReplyFlows({ capacity: 64, idleMs: 1000 });
    flows.learn(icmp4(TUNNEL, NODE, 8, 0x4e4c), 1, 0);
    flows.learn(icmp6(TUNNEL6, NODE6, 128, 0x4e4c), 2, 0);
    expect(flows.lookup(icmp4(NODE, TUNNEL, 0, 0x4e4c), 0)).to.equal(1);
    expect(flows.lookup(icmp4(NODE, TUNNEL, 0, 0x4e4d), 0)).to.equal(-1);
    expect(flows.lookup(icmp6(NODE6, TUNNEL6, 129, 0x4e4c), 0)).to.equal(2);
  });

  it('sends an ICMP error from the node to the replica of the flow it quotes', function () {
    const flows = new ReplyFlows({ capacity: 64, idleMs: 1000 });
    const probe = flow4(TUNNEL, 41000, POD, 9999, UDP);
    flows.learn(probe, 5, 0);
    // Port unreachable from the pod: IPv4 quotes the header and the first 8 bytes after it.
    expect(flows.lookup(icmp4(POD, TUNNEL, 3, 0, probe.subarray(0, 28)), 0)).to.equal(5);
    const probe6 = flow6(TUNNEL6, 41000, NODE6, 9999, UDP);
    flows.learn(probe6, 6, 0);
    expect(flows.lookup(icmp6(NODE6, TUNNEL6, 1, 0, probe6), 0)).to.equal(6);
    // Packet too big, quoting an unknown flow: unknown.
    expect(flows.lookup(icmp6(NODE6, TUNNEL6, 2, 0, flow6(TUNNEL6, 1, NODE6, 2)), 0)).to.equal(-1);
  });

  it('learns no flow from an ICMP error the server sends', function () {
    const flows = new ReplyFlows({ capacity: 64, idleMs: 1000 });
    const quoted = flow4(NODE, 10250, TUNNEL, 40000).subarray(0, 28);
    flows.learn(icmp4(TUNNEL, NODE, 3, 0, quoted), 1, 0);
    expect(flows.countByReplica(0).size).to.equal(0);
  });

  it('forgets a flow idle for longer than idleMs; traffic either way keeps it', function () {
    const flows = new ReplyFlows({ capacity: 64, idleMs: 1000 });
    flows.learn(flow4(TUNNEL, 40000, NODE, 10250), 1, 0);
    flows.learn(flow4(TUNNEL, 40001, NODE, 10250), 1, 0);
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40000), 900)).to.equal(1); // a reply refreshes it
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40000), 1800)).to.equal(1);
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40001), 1001)).to.equal(-1);
    flows.learn(flow4(TUNNEL, 40001, NODE, 10250), 2, 1500); // back, from another replica
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40001), 1600)).to.equal(2);
    expect(flows.takeovers).to.equal(0);
  });

  it('gives a live flow that comes in from another replica to the newer one', function () {
    const flows = new ReplyFlows({ capacity: 64, idleMs: 1000 });
    flows.learn(flow4(TUNNEL, 40000, NODE, 10250), 1, 0);
    flows.learn(flow4(TUNNEL, 40000, NODE, 10250), 2, 10);
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40000), 20)).to.equal(2);
    expect(flows.takeovers).to.equal(1);
  });

  it('evicts the flow idle the longest when a bucket is full', function () {
    // One bucket: every flow competes with every other.
    const flows = new ReplyFlows({ capacity: WAYS, idleMs: 10_000 });
    for (let i = 0; i < WAYS; i++) flows.learn(flow4(TUNNEL, 40000 + i, NODE, 10250), i, i);
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40000), 100)).to.equal(0); // 40000 is used again
    flows.learn(flow4(TUNNEL, 50000, NODE, 10250), 9, 101);
    expect(flows.evictions).to.equal(1);
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40001), 102), 'the stalest flow').to.equal(-1);
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40000), 102)).to.equal(0);
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 50000), 102)).to.equal(9);
    for (let i = 2; i < WAYS; i++) expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40000 + i), 102)).to.equal(i);
  });

  it('drops every flow of a forgotten replica and only those', function () {
    const flows = new ReplyFlows({ capacity: 64, idleMs: 1000 });
    for (let i = 0; i < 10; i++) flows.learn(flow4(TUNNEL, 40000 + i, NODE, 10250), i % 2, 0);
    expect(flows.forget(1)).to.equal(5);
    expect(Object.fromEntries(flows.countByReplica(0))).to.deep.equal({ 0: 5 });
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40001), 0)).to.equal(-1);
    expect(flows.lookup(flow4(NODE, 10250, TUNNEL, 40002), 0)).to.equal(0);
  });

  it('never names a wrong replica, against a Map of every flow, over random traffic', function () {
    const seed = 20261130;
    const random = prng(seed);
    for (const capacity of [16, 4096]) {
      const flows = new ReplyFlows({ capacity, idleMs: 1e9 });
      const reference = new Map<string, number>();
      let found = 0;
      // Few enough flows for the large table that no bucket overflows: there it must know them all.
      for (let i = 0; i < (capacity === 16 ? 5000 : 1500); i++) {
        const v6 = random() < 0.5;
        const node = v6 ? `fd00:19:1::${2 + Math.floor(random() * 2)}` : NODE;
        const sport = 30000 + Math.floor(random() * 40);
        const dport = [10250, 8080, 443][Math.floor(random() * 3)]!;
        const proto = random() < 0.7 ? TCP : UDP;
        const key = `${node} ${sport} ${dport} ${proto}`;
        const tunnel = v6 ? TUNNEL6 : TUNNEL;
        const build = v6 ? flow6 : flow4;
        if (random() < 0.5) {
          const replica = Math.floor(random() * 3);
          flows.learn(build(tunnel, sport, node, dport, proto), replica, i);
          reference.set(key, replica);
        } else {
          const answer = flows.lookup(build(node, dport, tunnel, sport, proto), i);
          const expected = reference.get(key) ?? -1;
          if (answer !== -1) found++;
          // A full table may have evicted the flow; it must never answer another replica.
          if (capacity === 4096 || answer !== -1) expect(answer, `seed ${seed}, ${key}`).to.equal(expected);
        }
      }
      expect(found, `capacity ${capacity} found some flows`).to.be.greaterThan(capacity === 16 ? 0 : 300);
      if (capacity === 4096) expect(flows.evictions).to.equal(0);
      else expect(flows.evictions).to.be.greaterThan(0);
    }
  });

  it('treats what is not an IP packet as no flow, without throwing', function () {
    const flows = new ReplyFlows({ capacity: 64, idleMs: 1000 });
    flows.learn(Buffer.alloc(0), 1, 0);
    flows.learn(Buffer.from([0x55, 0, 0, 0]), 1, 0);
    expect(flows.lookup(Buffer.alloc(10), 0)).to.equal(-1);
    expect(flows.lookup(flow4(NODE, 1, TUNNEL, 2).subarray(0, 19), 0)).to.equal(-1);
    // An ICMP error quoting garbage, or quoting nothing.
    expect(flows.lookup(icmp4(NODE, TUNNEL, 3, 0, Buffer.from([0x45, 1, 2])), 0)).to.equal(-1);
    expect(flows.lookup(icmp4(NODE, TUNNEL, 3, 0), 0)).to.equal(-1);
    expect(flows.countByReplica(0).size).to.equal(0);
  });

  it('refuses a capacity that is not a power of two, or an idle time of zero', function () {
    expect(() => new ReplyFlows({ capacity: 100, idleMs: 1000 })).to.throw(RangeError, /power of two/);
    expect(() => new ReplyFlows({ capacity: 4, idleMs: 1000 })).to.throw(RangeError, /power of two/);
    expect(() => new ReplyFlows({ capacity: 64, idleMs: 0 })).to.throw(RangeError, /positive/);
  });
});

describe('ReplicaSet: the replicas a node holds and misses', function () {
  it('holds one session per replica and learns the count from the welcomes', function () {
    const set = new ReplicaSet(60_000);
    expect(set.count).to.equal(0);
    expect(set.wanted).to.equal(1);
    expect(set.complete).to.equal(false);
    expect(set.admit('a', 3, 0)).to.equal(0);
    expect(set.unseen).to.equal(2);
    expect(set.admit('a', 3, 1)).to.equal('already_held');
    expect(set.admit('b', 3, 2)).to.equal(1);
    expect(set.complete).to.equal(false);
    expect(set.admit('c', 3, 3)).to.equal(2);
    expect(set.complete).to.equal(true);
    expect(set.heldIds()).to.deep.equal(['a', 'b', 'c']);
    expect(set.unseen).to.equal(0);
  });

  it('keeps a lost replica, and its slot, until the forget time has passed', function () {
    const set = new ReplicaSet(1000);
    set.admit('a', 2, 0);
    set.admit('b', 2, 0);
    set.lost('b', 100);
    expect(set.held).to.equal(1);
    expect(set.complete).to.equal(false);
    expect(set.get('b')).to.deep.include({ connected: false, since: 100, slot: 1 });
    expect(set.nextExpiry()).to.equal(1100);
    expect(set.expire(1100)).to.deep.equal([]);
    expect(set.admit('b', 2, 500)).to.equal(1); // back in time: same slot
    set.lost('b', 600);
    const forgotten = set.expire(1601);
    expect(forgotten.map((replica) => [replica.id, replica.slot])).to.deep.equal([['b', 1]]);
    expect(set.get('b')).to.equal(undefined);
    expect(set.nextExpiry()).to.equal(undefined);
    expect(set.admit('b2', 2, 1700)).to.equal(1); // the restarted replica takes the free slot
  });

  it('follows the highest count a held replica announced, up and down', function () {
    const set = new ReplicaSet(1000);
    set.admit('a', 2, 0);
    set.admit('b', 2, 0);
    expect(set.complete).to.equal(true);
    // 'a' restarts as 'a2' with count 3: the node looks for a third.
    set.lost('a', 10);
    set.admit('a2', 3, 20);
    expect(set.count).to.equal(3);
    expect(set.complete).to.equal(false);
    set.admit('c', 3, 30);
    expect(set.complete).to.equal(true);
    // Lowered to 2: 'c' is stopped, the others restarted with count 2.
    set.lost('c', 35);
    expect(set.count, "'a2', held, still says 3").to.equal(3);
    set.lost('b', 40);
    set.admit('b2', 2, 50);
    expect(set.count).to.equal(3); // 'a2' still announces 3
    set.lost('a2', 60);
    set.admit('a3', 2, 70);
    expect(set.count, 'every held replica says 2; the missing ones are not asked').to.equal(2);
    expect(set.complete).to.equal(true);
    // With nothing held, the last word of the known ones stands.
    set.lost('a3', 80);
    set.lost('b2', 80);
    expect(set.count).to.equal(3);
  });

  it('refuses more distinct replicas than it keeps state for', function () {
    const set = new ReplicaSet(1000);
    for (let i = 0; i < MAX_REPLICAS; i++) expect(set.admit(`r${i}`, 1, 0)).to.equal(i);
    expect(set.admit('one-more', 1, 0)).to.equal('too_many_replicas');
  });
});

describe('DialPolicy: when to dial the load-balanced address again', function () {
  const options = { baseMs: 100, capMs: 10_000, searchCapMs: 800, random: () => 0.999999 };

  it('redials with the connect backoff while it holds nothing', function () {
    const set = new ReplicaSet(1000);
    const policy = new DialPolicy(options);
    expect([1, 2, 3, 4].map(() => policy.next(set, 'failed'))).to.deep.equal([99, 199, 399, 799]);
  });

  it('searches with its own, lower-capped backoff while some replicas are missing', function () {
    const set = new ReplicaSet(1000);
    const policy = new DialPolicy(options);
    policy.next(set, 'failed');
    set.admit('a', 3, 0);
    expect(policy.next(set, 'new_replica')).to.equal(99);
    const waits = [1, 2, 3, 4, 5].map(() => policy.next(set, 'already_held'));
    expect(waits).to.deep.equal([199, 399, 799, 799, 799]);
    set.admit('b', 3, 0);
    expect(policy.next(set, 'new_replica'), 'a new replica starts the search over').to.equal(99);
    set.admit('c', 3, 0);
    expect(policy.next(set, 'new_replica'), 'all held: no dial').to.equal(undefined);
    set.lost('c', 1);
    expect(policy.next(set, 'lost'), 'a lost session starts the search over').to.equal(99);
  });

  it('polls a server that refuses (nothing listens) with waits that stop growing at 8 bases, apart from the connect backoff', function () {
    const set = new ReplicaSet(1000);
    const shortest = new DialPolicy({ ...options, random: () => 0 });
    expect(
      [1, 2, 3, 4].map(() => shortest.next(set, 'refused')),
      'at least half of 2, 4, 8, 8 bases',
    ).to.deep.equal([100, 200, 400, 400]);
    const policy = new DialPolicy(options);
    expect([1, 2, 3, 4, 5, 6].map(() => policy.next(set, 'refused'))).to.deep.equal([199, 399, 799, 799, 799, 799]);
    expect(policy.next(set, 'failed'), 'refusals did not grow the connect backoff').to.equal(99);
    expect(policy.next(set, 'refused'), 'nor a failure the refused one').to.equal(799);
    set.admit('a', 1, 0);
    expect(policy.next(set, 'new_replica')).to.equal(undefined);
    set.lost('a', 1);
    policy.next(set, 'lost', 60_000);
    expect(policy.next(set, 'refused'), 'a lost session starts it over').to.equal(199);
    const capped = new DialPolicy({ ...options, capMs: 300 });
    expect(
      [1, 2, 3].map(() => capped.next(set, 'refused')),
      'never above the cap',
    ).to.deep.equal([199, 299, 299]);
  });

  it('goes back to the connect backoff when every session is lost', function () {
    const set = new ReplicaSet(1000);
    const policy = new DialPolicy(options);
    set.admit('a', 1, 0);
    expect(policy.next(set, 'new_replica')).to.equal(undefined);
    set.lost('a', 1);
    expect(policy.next(set, 'lost')).to.equal(99);
    expect(policy.next(set, 'failed')).to.equal(199);
  });

  it("after the server's goodbye (shutdown) polls on the refused schedule at once: 1 to 2 bases, then 2 to 4", function () {
    const set = new ReplicaSet(1000);
    const shortest = new DialPolicy({ ...options, random: () => 0 });
    set.admit('a', 1, 0);
    set.lost('a', 1);
    expect(shortest.next(set, 'shutdown', 60_000), 'not at once: a restarting server takes a moment').to.equal(100);
    expect(shortest.next(set, 'refused')).to.equal(200);
    const longest = new DialPolicy(options);
    expect(longest.next(set, 'shutdown', 60_000)).to.equal(199);
    expect(longest.next(set, 'failed'), 'the connect backoff starts over after a stable session').to.equal(99);
    set.admit('a', 2, 0);
    expect(longest.next(set, 'new_replica'), 'of two replicas one held: the search goes on').to.equal(99);
    expect(
      longest.next(set, 'shutdown', 60_000),
      'the other still held: the search, not the refused schedule',
    ).to.equal(99);
  });
});
