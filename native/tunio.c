/*
 * tunio: event-driven, batched I/O on a TUN file descriptor for nodelink.
 *
 * Why: the tuntap addon reads through fs streams, so every packet costs a libuv threadpool
 * round trip, a 64 KiB buffer and a copy. Here the fd is made non-blocking and watched with
 * uv_poll on the event loop thread; when it is readable, up to BATCH_PACKETS packets are read
 * in a loop into one area and handed to JavaScript in ONE call, as one Buffer plus the packet
 * lengths. Writes are one write(2) per packet (a TUN write is exactly one packet), issued
 * synchronously: a non-blocking TUN write never waits, the kernel queues or drops.
 *
 * The area is the memory of one Buffer made at attach, refilled by every batch: no allocation
 * and no copy per batch. A fresh Buffer per batch made V8 count its memory as external and run
 * major collections over and over at line rate, and cost a cold allocation for a lone packet on
 * an idle link. So a packet is only valid during the call that hands it over (with the
 * process.nextTick and microtask queues napi_make_callback runs before returning): whoever
 * needs it later copies it (connection.ts does, for packets that wait behind unsent bytes).
 *
 * Offloads: a TUN opened here (open) carries a virtio_net_hdr before every packet
 * (IFF_VNET_HDR). With the offloads on (setOffload), the kernel hands over TCP packets of up to
 * 64 KiB that it would otherwise have cut to the MTU (TSO), and TCP/UDP packets whose checksum
 * holds only the pseudo-header sum (CHECKSUM_PARTIAL); written back with the same header, the
 * other kernel takes them whole. A packet's "offload" number says which it is:
 *   0      a plain packet, checksum complete
 *   1      checksum partial (TCP or UDP, at the standard offset after a bare IP header)
 *   n > 1  checksum partial, a TCP packet to be cut into segments of n - 1 payload bytes
 * A partial packet in any other layout is completed here, so JS only ever sees these three.
 *
 * JS API:
 *   open(name)        -> fd of a new TUN device with virtio headers, or -errno
 *   setOffload(fd, on) -> 0 or -errno: TSO and partial checksums on or off
 *   attach(fd, mtu, vnet, onPackets(buffer, lengths: Uint32Array, count, offloads: Uint32Array)) -> handle
 *                     `buffer` (the packets back to back from its start), `lengths` and
 *                     `offloads` are the handle's, refilled for every batch: read them during
 *                     the call, copy what must outlive it.
 *   write(fd, buffer) -> bytes written, or -errno (a TUN without virtio headers)
 *   writeOffload(fd, buffer, offload) -> packet bytes written, or -errno (a TUN from open);
 *                     -EINVAL when an offloaded packet is not a TCP/UDP packet of that layout
 *   detach(handle)    stops polling (the fd itself is closed by its owner)
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <uv.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>

#define BATCH_PACKETS 64
/* The largest packet a virtio-header read may return: a 64 KiB GSO packet and its IP header. */
#define MAX_PACKET (65535 + 64)
/* Room for the packets of one batch, read back to back; a read needs MAX_PACKET free. */
#define VNET_AREA (512 * 1024 + MAX_PACKET)
#define OFFLOAD_FLAGS (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
/* Segments smaller than this are refused (MIN_OFFLOAD_SEGMENT in frame.ts): a tiny gso_size
 * would make the kernel cut a 64 KiB packet from a peer into thousands. */
#define MIN_GSO_SIZE 256

typedef struct {
  uv_poll_t poll;
  int fd;
  size_t mtu;
  napi_env env;
  napi_ref callback;
  napi_async_context async_context;
  int vnet;                 /* the fd carries a virtio_net_hdr before each packet */
  size_t area_size;
  unsigned char *area;      /* packets read back to back: the memory of `area_buffer` */
  napi_ref area_buffer;     /* the one Buffer every batch is handed over in */
  uint32_t *lengths;        /* the data of `lengths_array`: BATCH_PACKETS lengths, then BATCH_PACKETS offloads */
  napi_ref lengths_array;   /* a Uint32Array made once: no allocation per batch for it */
  napi_ref offloads_array;  /* a view of its second half */
  int active;
} tun_poller;

static napi_value throw_error(napi_env env, const char *message) {
  napi_throw_error(env, NULL, message);
  return NULL;
}

static void on_closed(uv_handle_t *handle) {
  free(handle->data);
}

static void deliver(tun_poller *p, int count) {
  napi_env env = p->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value buffer, lengths, offloads, callback, global, argv[4], result;
  napi_get_reference_value(env, p->area_buffer, &buffer);
  napi_get_reference_value(env, p->lengths_array, &lengths);
  napi_get_reference_value(env, p->offloads_array, &offloads);
  argv[0] = buffer;
  argv[1] = lengths;
  napi_create_uint32(env, (uint32_t)count, &argv[2]);
  argv[3] = offloads;
  napi_get_reference_value(env, p->callback, &callback);
  napi_get_global(env, &global);
  /* make_callback runs the microtask/nextTick queues afterwards, like any libuv callback. */
  napi_make_callback(env, p->async_context, global, callback, 4, argv, &result);
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) {
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    napi_fatal_exception(env, exception);
  }
  napi_close_handle_scope(env, scope);
}

/* The RFC 1071 sum of p[0, len), added to `sum` (not folded, not complemented). */
static uint64_t sum_bytes(const unsigned char *p, size_t len, uint64_t sum) {
  while (len >= 4) {
    sum += ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    p += 4;
    len -= 4;
  }
  if (len >= 2) {
    sum += ((uint32_t)p[0] << 8) | p[1];
    p += 2;
    len -= 2;
  }
  if (len) sum += (uint32_t)p[0] << 8;
  return sum;
}

static uint16_t fold(uint64_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)sum;
}

/*
 * Where a packet's transport header starts and which protocol it is, for a bare IP header only:
 * IPv4 without fragmentation, IPv6 whose next header is the transport; the IP length must be
 * the packet's. Returns 0 when the packet is not of that layout.
 */
static int transport_of(const unsigned char *p, size_t len, size_t *start, int *protocol) {
  if (len < 20) return 0;
  if (p[0] >> 4 == 4) {
    size_t ihl = (size_t)(p[0] & 15) * 4;
    if (ihl < 20 || ihl > len || (((size_t)p[2] << 8) | p[3]) != len) return 0;
    if ((p[6] & 0x3f) || p[7]) return 0; /* a fragment: more fragments, or an offset */
    *start = ihl;
    *protocol = p[9];
    return 1;
  }
  if (p[0] >> 4 == 6) {
    if (len < 40 || (((size_t)p[4] << 8) | p[5]) + 40 != len) return 0;
    *start = 40;
    *protocol = p[6];
    return 1;
  }
  return 0;
}

/* The checksum field's offset in the transport header, for the protocols the kernel leaves partial. */
static size_t checksum_offset(int protocol) {
  return protocol == IPPROTO_TCP ? 16 : protocol == IPPROTO_UDP ? 6 : 0;
}

/*
 * The offload number (see the top) of a packet read with its virtio header, completing a
 * partial checksum of an unusual layout here. -1: a packet to drop (a GSO type never enabled).
 */
static int64_t offload_of_read(const struct virtio_net_hdr *h, unsigned char *p, size_t len) {
  size_t start, csum_start = h->csum_start, csum_offset = h->csum_offset;
  int protocol;
  int standard = (h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) && transport_of(p, len, &start, &protocol) &&
                 start == csum_start && checksum_offset(protocol) == csum_offset &&
                 start + csum_offset + 2 <= len;
  int gso = h->gso_type & ~VIRTIO_NET_HDR_GSO_ECN;
  if (gso != VIRTIO_NET_HDR_GSO_NONE) {
    if ((gso != VIRTIO_NET_HDR_GSO_TCPV4 && gso != VIRTIO_NET_HDR_GSO_TCPV6) || !standard || protocol != IPPROTO_TCP ||
        h->gso_size == 0)
      return -1;
    return (int64_t)h->gso_size + 1;
  }
  if (!(h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)) return 0;
  if (standard) return 1;
  if (csum_start + csum_offset + 2 > len) return -1;
  /* The field holds the pseudo-header sum: the sum from csum_start on, complemented, is the checksum. */
  uint16_t csum = (uint16_t)~fold(sum_bytes(p + csum_start, len - csum_start, 0));
  p[csum_start + csum_offset] = (unsigned char)(csum >> 8);
  p[csum_start + csum_offset + 1] = (unsigned char)csum;
  return 0;
}

static void on_readable(uv_poll_t *handle, int status, int events) {
  tun_poller *p = (tun_poller *)handle->data;
  if (status < 0 || !(events & UV_READABLE) || !p->active) return;
  uint32_t *offloads = p->lengths + BATCH_PACKETS;
  /* Bounded per wakeup so a flood from the TUN cannot starve the TLS sockets. */
  for (int rounds = 0; rounds < 4 && p->active; rounds++) {
    int count = 0, again = 1, reads = 0;
    size_t total = 0;
    while (count < BATCH_PACKETS && reads++ < 2 * BATCH_PACKETS && p->area_size - total >= p->mtu) {
      unsigned char *at = p->area + total;
      ssize_t n;
      if (p->vnet) {
        struct virtio_net_hdr h;
        struct iovec iov[2] = { { &h, sizeof h }, { at, p->mtu } };
        n = readv(p->fd, iov, 2);
        if (n <= 0) { again = 0; break; }
        if ((size_t)n <= sizeof h) continue;
        n -= (ssize_t)sizeof h;
        int64_t offload = offload_of_read(&h, at, (size_t)n);
        if (offload < 0) continue;
        offloads[count] = (uint32_t)offload;
      } else {
        n = read(p->fd, at, p->mtu);
        if (n <= 0) { again = 0; break; }
        offloads[count] = 0;
      }
      p->lengths[count++] = (uint32_t)n;
      total += (size_t)n;
    }
    if (count > 0) deliver(p, count);
    if (!again) return;
  }
}

static napi_value attach(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], this_arg;
  napi_get_cb_info(env, info, &argc, argv, &this_arg, NULL);
  if (argc < 4) return throw_error(env, "attach(fd, mtu, vnet, callback)");
  int32_t fd, mtu;
  bool vnet;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) return throw_error(env, "bad fd");
  if (napi_get_value_int32(env, argv[1], &mtu) != napi_ok || mtu < 576 || mtu > 65535) return throw_error(env, "bad mtu");
  if (napi_get_value_bool(env, argv[2], &vnet) != napi_ok) return throw_error(env, "bad vnet flag");
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return throw_error(env, "cannot make the TUN fd non-blocking");
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  tun_poller *p = calloc(1, sizeof(tun_poller));
  if (!p) return throw_error(env, "out of memory");
  p->vnet = vnet;
  /* With offloads a read may be a 64 KiB packet whatever the MTU. */
  p->mtu = vnet ? MAX_PACKET : (size_t)mtu;
  p->area_size = vnet ? VNET_AREA : (size_t)BATCH_PACKETS * (size_t)mtu;
  p->fd = fd;
  p->env = env;
  p->active = 1;
  // Before the callback reference and async context: a failure here has nothing else to release.
  if (uv_poll_init(loop, &p->poll, fd) != 0) {
    free(p);
    return throw_error(env, "uv_poll_init failed on the TUN fd");
  }
  p->poll.data = p;
  napi_value lengths_buffer, lengths, offloads, area;
  void *lengths_data, *area_data;
  if (napi_create_buffer(env, p->area_size, &area_data, &area) != napi_ok ||
      napi_create_arraybuffer(env, 2 * sizeof(uint32_t) * BATCH_PACKETS, &lengths_data, &lengths_buffer) != napi_ok ||
      napi_create_typedarray(env, napi_uint32_array, BATCH_PACKETS, lengths_buffer, 0, &lengths) != napi_ok ||
      napi_create_typedarray(env, napi_uint32_array, BATCH_PACKETS, lengths_buffer, sizeof(uint32_t) * BATCH_PACKETS,
                             &offloads) != napi_ok) {
    uv_close((uv_handle_t *)&p->poll, on_closed);
    return throw_error(env, "out of memory");
  }
  p->lengths = lengths_data;
  p->area = area_data;
  napi_create_reference(env, area, 1, &p->area_buffer);
  napi_create_reference(env, lengths, 1, &p->lengths_array);
  napi_create_reference(env, offloads, 1, &p->offloads_array);
  napi_create_reference(env, argv[3], 1, &p->callback);
  napi_value resource_name;
  napi_create_string_utf8(env, "nodelink.tunio", NAPI_AUTO_LENGTH, &resource_name);
  napi_async_init(env, NULL, resource_name, &p->async_context);
  uv_poll_start(&p->poll, UV_READABLE, on_readable);
  napi_value handle;
  napi_create_external(env, p, NULL, NULL, &handle);
  return handle;
}

static napi_value detach(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  tun_poller *p;
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&p) != napi_ok || !p) return throw_error(env, "detach(handle)");
  if (!p->active) return NULL;
  p->active = 0;
  uv_poll_stop(&p->poll);
  napi_delete_reference(env, p->callback);
  napi_delete_reference(env, p->lengths_array);
  napi_delete_reference(env, p->offloads_array);
  napi_delete_reference(env, p->area_buffer);
  napi_async_destroy(env, p->async_context);
  uv_close((uv_handle_t *)&p->poll, on_closed);
  return NULL;
}

static napi_value write_packet(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  void *data;
  size_t length;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok) {
    return throw_error(env, "write(fd, buffer)");
  }
  ssize_t n = write(fd, data, length);
  napi_value result;
  napi_create_int32(env, n < 0 ? -errno : (int32_t)n, &result);
  return result;
}

static napi_value int_result(napi_env env, int64_t value) {
  napi_value result;
  napi_create_int32(env, (int32_t)value, &result);
  return result;
}

/*
 * The virtio header that hands `p` to the kernel: none needed for a plain packet (its checksum
 * is checked as from any wire); for an offloaded one, built here from the packet itself after
 * checking its layout, so a peer controls nothing but the segment size.
 */
static int header_for_write(struct virtio_net_hdr *h, const unsigned char *p, size_t len, uint32_t offload) {
  memset(h, 0, sizeof *h);
  if (offload == 0) return 0;
  size_t start;
  int protocol;
  if (!transport_of(p, len, &start, &protocol)) return -EINVAL;
  size_t offset = checksum_offset(protocol);
  if (offset == 0 || start + offset + 2 > len) return -EINVAL;
  h->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  h->csum_start = (uint16_t)start;
  h->csum_offset = (uint16_t)offset;
  if (offload == 1) return 0;
  uint32_t gso_size = offload - 1;
  if (protocol != IPPROTO_TCP || start + 20 > len || gso_size < MIN_GSO_SIZE || gso_size > 65535) return -EINVAL;
  size_t header = start + (size_t)(p[start + 12] >> 4) * 4;
  if (header < start + 20 || header >= len) return -EINVAL;
  h->gso_type = p[0] >> 4 == 4 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6;
  if (p[start + 13] & 0x80) h->gso_type |= VIRTIO_NET_HDR_GSO_ECN; /* CWR: only the first segment keeps it */
  h->hdr_len = (uint16_t)header;
  h->gso_size = (uint16_t)gso_size;
  return 0;
}

static napi_value write_offload(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  uint32_t offload;
  void *data;
  size_t length;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &offload) != napi_ok) {
    return throw_error(env, "writeOffload(fd, buffer, offload)");
  }
  struct virtio_net_hdr h;
  int bad = header_for_write(&h, data, length, offload);
  if (bad) return int_result(env, bad);
  struct iovec iov[2] = { { &h, sizeof h }, { data, length } };
  ssize_t n = writev(fd, iov, 2);
  if (n < 0) return int_result(env, -errno);
  return int_result(env, n >= (ssize_t)sizeof h ? n - (ssize_t)sizeof h : 0);
}

static napi_value open_tun(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  size_t copied;
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], ifr.ifr_name, IFNAMSIZ, &copied) != napi_ok || copied == 0 ||
      copied >= IFNAMSIZ - 1) {
    return throw_error(env, "open(name): a name of 1 to 14 bytes");
  }
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) return int_result(env, -errno);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    return int_result(env, -err);
  }
  return int_result(env, fd);
}

static napi_value set_offload(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  bool on;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_bool(env, argv[1], &on) != napi_ok)
    return throw_error(env, "setOffload(fd, on)");
  return int_result(env, ioctl(fd, TUNSETOFFLOAD, on ? OFFLOAD_FLAGS : 0) < 0 ? -errno : 0);
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    { "attach", NULL, attach, NULL, NULL, NULL, napi_default, NULL },
    { "detach", NULL, detach, NULL, NULL, NULL, napi_default, NULL },
    { "write", NULL, write_packet, NULL, NULL, NULL, napi_default, NULL },
    { "writeOffload", NULL, write_offload, NULL, NULL, NULL, napi_default, NULL },
    { "open", NULL, open_tun, NULL, NULL, NULL, napi_default, NULL },
    { "setOffload", NULL, set_offload, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}
