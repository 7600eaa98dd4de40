/*
 * tunio: event-driven, batched I/O on a TUN file descriptor for nodelink.
 *
 * Why: the tuntap addon reads through fs streams, so every packet costs a libuv threadpool
 * round trip, a 64 KiB buffer and a copy. Here the fd is made non-blocking and watched with
 * uv_poll on the event loop thread; when it is readable, up to BATCH_PACKETS packets are read
 * in a loop into one scratch area and handed to JavaScript in ONE call, as one Buffer plus the
 * packet lengths. Writes are one write(2) per packet (a TUN write is exactly one packet),
 * issued synchronously: a non-blocking TUN write never waits, the kernel queues or drops.
 *
 * JS API:
 *   attach(fd, mtu, onPackets(buffer, lengths: Uint32Array, count)) -> handle
 *                     `lengths` is one array per handle, refilled for every batch: read it
 *                     during the call, never keep it.
 *   write(fd, buffer) -> bytes written, or -errno
 *   detach(handle)    stops polling (the fd itself is closed by its owner)
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <uv.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BATCH_PACKETS 64

typedef struct {
  uv_poll_t poll;
  int fd;
  size_t mtu;
  napi_env env;
  napi_ref callback;
  napi_async_context async_context;
  unsigned char *scratch;   /* BATCH_PACKETS * mtu bytes */
  uint32_t *lengths;        /* the data of `lengths_array`, BATCH_PACKETS entries */
  napi_ref lengths_array;   /* a Uint32Array made once: no allocation per batch for it */
  int active;
} tun_poller;

static napi_value throw_error(napi_env env, const char *message) {
  napi_throw_error(env, NULL, message);
  return NULL;
}

static void on_closed(uv_handle_t *handle) {
  tun_poller *p = (tun_poller *)handle->data;
  free(p->scratch);
  free(p);
}

static void deliver(tun_poller *p, int count, size_t total) {
  napi_env env = p->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value buffer, lengths, callback, global, argv[3], result;
  void *data;
  /* One allocation per batch: packets become views into it and may be retained by writers. */
  napi_create_buffer(env, total, &data, &buffer);
  size_t offset = 0;
  for (int i = 0; i < count; i++) {
    memcpy((unsigned char *)data + offset, p->scratch + (size_t)i * p->mtu, p->lengths[i]);
    offset += p->lengths[i];
  }
  napi_get_reference_value(env, p->lengths_array, &lengths);
  argv[0] = buffer;
  argv[1] = lengths;
  napi_create_uint32(env, (uint32_t)count, &argv[2]);
  napi_get_reference_value(env, p->callback, &callback);
  napi_get_global(env, &global);
  /* make_callback runs the microtask/nextTick queues afterwards, like any libuv callback. */
  napi_make_callback(env, p->async_context, global, callback, 3, argv, &result);
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) {
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    napi_fatal_exception(env, exception);
  }
  napi_close_handle_scope(env, scope);
}

static void on_readable(uv_poll_t *handle, int status, int events) {
  tun_poller *p = (tun_poller *)handle->data;
  if (status < 0 || !(events & UV_READABLE) || !p->active) return;
  /* Bounded per wakeup so a flood from the TUN cannot starve the TLS sockets. */
  for (int rounds = 0; rounds < 4 && p->active; rounds++) {
    int count = 0;
    size_t total = 0;
    while (count < BATCH_PACKETS) {
      ssize_t n = read(p->fd, p->scratch + (size_t)count * p->mtu, p->mtu);
      if (n <= 0) break;
      p->lengths[count++] = (uint32_t)n;
      total += (size_t)n;
    }
    if (count == 0) return;
    deliver(p, count, total);
    if (count < BATCH_PACKETS) return;
  }
}

static napi_value attach(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], this_arg;
  napi_get_cb_info(env, info, &argc, argv, &this_arg, NULL);
  if (argc < 3) return throw_error(env, "attach(fd, mtu, callback)");
  int32_t fd, mtu;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) return throw_error(env, "bad fd");
  if (napi_get_value_int32(env, argv[1], &mtu) != napi_ok || mtu < 576 || mtu > 65535) return throw_error(env, "bad mtu");
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return throw_error(env, "cannot make the TUN fd non-blocking");
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  tun_poller *p = calloc(1, sizeof(tun_poller));
  if (!p) return throw_error(env, "out of memory");
  p->scratch = malloc((size_t)BATCH_PACKETS * (size_t)mtu);
  if (!p->scratch) { free(p); return throw_error(env, "out of memory"); }
  p->fd = fd;
  p->mtu = (size_t)mtu;
  p->env = env;
  p->active = 1;
  // Before the callback reference and async context: a failure here has nothing else to release.
  if (uv_poll_init(loop, &p->poll, fd) != 0) {
    free(p->scratch); free(p);
    return throw_error(env, "uv_poll_init failed on the TUN fd");
  }
  p->poll.data = p;
  napi_value lengths_buffer, lengths;
  void *lengths_data;
  if (napi_create_arraybuffer(env, sizeof(uint32_t) * BATCH_PACKETS, &lengths_data, &lengths_buffer) != napi_ok ||
      napi_create_typedarray(env, napi_uint32_array, BATCH_PACKETS, lengths_buffer, 0, &lengths) != napi_ok) {
    uv_close((uv_handle_t *)&p->poll, on_closed);
    return throw_error(env, "out of memory");
  }
  p->lengths = lengths_data;
  napi_create_reference(env, lengths, 1, &p->lengths_array);
  napi_create_reference(env, argv[2], 1, &p->callback);
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

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    { "attach", NULL, attach, NULL, NULL, NULL, napi_default, NULL },
    { "detach", NULL, detach, NULL, NULL, NULL, napi_default, NULL },
    { "write", NULL, write_packet, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}
