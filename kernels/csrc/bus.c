/* Bus transactions: a request, then status packets picked out of the byte stream until a deadline.
 *
 * A reply is only ever taken from an id the request addressed, with the LEN the request implies, an ERR
 * byte with STS bits only and a good checksum. An exact copy of the request is the adapter's echo wherever
 * it appears in the stream, however many there are: a reply byte-identical to its request (a PING answered
 * with ERR=0x01) cannot be told from one, so the caller hears FE_EECHO instead (Bus.ping then asks READ). Behind
 * an adapter that has echoed, a copy of a PING or ACTION once sent is an echo however late it comes. */
#include <errno.h>
#include <string.h>

#include "feetech.h"

#define RX_CAP 4096

int fe_bus_open(fe_bus *bus, const char *path, int baud, double timeout_ms, int retries, char *err,
                size_t err_size) {
    memset(bus, 0, sizeof *bus);
    bus->fd = -1;
    pthread_mutex_init(&bus->lock, NULL);
    strncpy(bus->path, path, sizeof bus->path - 1);
    int fd = fe_serial_open(path, baud, err, err_size);
    if (fd < 0) return fd;
    bus->fd = fd;
    bus->baud = baud;
    bus->timeout_ns = (int64_t)(timeout_ms * 1e6);
    bus->retries = retries < 0 ? 0 : retries;
    return 0;
}

int fe_bus_close(fe_bus *bus) {
    pthread_mutex_lock(&bus->lock);
    int busy = bus->loops > 0;
    if (!busy && bus->fd >= 0) {
        fe_serial_close(bus->fd);
        bus->fd = -1;
    }
    pthread_mutex_unlock(&bus->lock);
    return busy ? -EBUSY : 0;
}

void fe_bus_free(fe_bus *bus) {
    if (bus->fd >= 0) fe_serial_close(bus->fd);
    bus->fd = -1;
    pthread_mutex_destroy(&bus->lock);
}

int fe_bus_acquire(fe_bus *bus) {
    pthread_mutex_lock(&bus->lock);
    int open = bus->fd >= 0;
    if (open) bus->loops++;
    pthread_mutex_unlock(&bus->lock);
    return open ? 0 : -EBADF;
}

void fe_bus_release(fe_bus *bus) {
    pthread_mutex_lock(&bus->lock);
    bus->loops--;
    pthread_mutex_unlock(&bus->lock);
}

int64_t fe_bus_wire_ns(const fe_bus *bus, size_t n_bytes) {
    return (int64_t)((double)n_bytes * 10.0 * 1e9 / (double)bus->baud);
}

/* Flushes what is left of earlier exchanges and writes a request, remembering it: an adapter echoes it, maybe
 * late enough to land in a later exchange, where it must not pass for a reply either. */
static int send_request(fe_bus *bus, const uint8_t *packet, size_t n, int64_t deadline_ns) {
    int known = 0; /* a retry, a second ping: the history keeps distinct requests */
    for (int h = 0; h < FE_ECHO_HISTORY && !known; h++)
        known = bus->recent_len[h] == n && memcmp(bus->recent[h], packet, n) == 0;
    if (n == 6 && packet[4] < 8) bus->bare_sent[packet[2]] |= (uint8_t)(1u << packet[4]);
    if (!known) {
        memcpy(bus->recent[bus->recent_next], packet, n);
        bus->recent_len[bus->recent_next] = n;
        bus->recent_next = (bus->recent_next + 1) % FE_ECHO_HISTORY;
    }
    fe_serial_flush_input(bus->fd);
    return fe_serial_write_all(bus->fd, packet, n, deadline_ns);
}

int fe_bus_send(fe_bus *bus, const uint8_t *packet, size_t n) {
    return send_request(bus, packet, n, fe_now_ns() + fe_bus_wire_ns(bus, n) + bus->timeout_ns);
}

/* One exchange: what was sent, who may answer with how many data bytes, and what came back. */
typedef struct {
    const uint8_t *sent;
    size_t n_sent;
    const uint8_t *ids;
    size_t n_ids;
    uint8_t length;
    uint8_t *data, *valid; /* data: n_ids * length */
    int *errors;           /* ERR byte, -1 nothing, -2 only corrupted frames */
    size_t n_valid;
    int echoed; /* a copy of `sent` came back (and was dropped) */
    size_t n;
    uint8_t buf[RX_CAP];
} exchange;

/* Where a copy of packet[0..len) starts in buf[0..limit) of x, complete or still arriving (a tail that is a prefix
 * of it); limit if there is none. */
static size_t copy_at(const exchange *x, const uint8_t *packet, size_t len, size_t limit) {
    for (size_t j = 0; j < limit; j++) {
        size_t m = x->n - j < len ? x->n - j : len;
        if (memcmp(x->buf + j, packet, m) == 0) return j;
    }
    return limit;
}

typedef struct {
    size_t at, len; /* at == x->n: none */
    int complete, ours; /* ours: a copy of this exchange's own request */
} echo_copy;

/* Is copy a to be preferred to b: earlier; at one place, complete, then longer. */
static int better(const echo_copy *a, const echo_copy *b) {
    if (a->at != b->at) return a->at < b->at;
    if (a->complete != b->complete) return a->complete;
    return a->len > b->len;
}

/* The first copy of any recent request in buf. */
static echo_copy find_echo(const fe_bus *bus, const exchange *x) {
    echo_copy best = {.at = x->n};
    for (int h = 0; h < FE_ECHO_HISTORY; h++) {
        size_t len = bus->recent_len[h];
        if (!len) continue;
        echo_copy c = {.at = copy_at(x, bus->recent[h], len, best.at < x->n ? best.at + 1 : x->n), .len = len};
        if (c.at == x->n) continue;
        c.complete = c.at + len <= x->n;
        c.ours = len == x->n_sent && memcmp(bus->recent[h], x->sent, len) == 0;
        if (better(&c, &best)) best = c;
    }
    return best;
}

static void drop(exchange *x, size_t m) {
    memmove(x->buf, x->buf + m, x->n - m);
    x->n -= m;
}

static int index_of(const exchange *x, uint8_t id) {
    for (size_t k = 0; k < x->n_ids; k++)
        if (x->ids[k] == id) return (int)k;
    return -1;
}

static void accept_status(fe_bus *bus, exchange *x, const fe_status *st) {
    int k = index_of(x, st->id);
    if (k < 0 || x->valid[k]) return;
    memcpy(x->data + (size_t)k * x->length, st->data, x->length);
    x->valid[k] = 1;
    x->errors[k] = st->error;
    if (st->error) bus->stats[st->id].errors_reported++;
    x->n_valid++;
}

static void count_bad_checksum(fe_bus *bus, exchange *x, uint8_t id) {
    int k = index_of(x, id);
    if (k < 0) {
        bus->bad_checksum_other++;
        return;
    }
    bus->stats[id].checksum_errors++;
    if (!x->valid[k]) x->errors[k] = -2;
}

/* Could a reply to `sent` be byte-identical to (a part of) it? Then a copy of it proves neither an echoing
 * adapter nor a silent servo. */
static int request_looks_like_reply(const exchange *x) {
    fe_status st;
    size_t consumed;
    uint8_t bad_id;
    return fe_parse_status(x->sent, x->n_sent, (size_t)x->length + 2, &st, &consumed, &bad_id) ==
               FE_PARSE_PACKET &&
           index_of(x, st.id) >= 0;
}

/* Behind an adapter that has echoed, a data-less status identical to a PING or ACTION we once sent to that id may
 * be its echo come back after leaving the history (a fabricated ERR 1 / ERR 5 reply): it is never taken. */
static int old_bare_request(const fe_bus *bus, const fe_status *st) {
    return bus->echo_proven && st->n_data == 0 && st->error < 8 && (bus->bare_sent[st->id] >> st->error & 1);
}

static size_t frame_start(int p, const fe_status *st, const uint8_t *buf, size_t consumed) {
    return p == FE_PARSE_PACKET ? (size_t)(st->data - buf) - 5 : consumed - 1; /* bad checksum: skips 1 */
}

/* Takes every complete reply out of buf. Every complete copy of a recent request is an echo (an adapter may
 * echo a timed-out attempt late, in a later exchange): no packet may contain a byte of it, and it goes
 * with everything before it. A copy still arriving may hide a status-shaped packet in its params, so no
 * packet that starts inside it is taken yet; one that starts before it is (a reply ending in FF). */
static void take_replies(fe_bus *bus, exchange *x) {
    for (;;) {
        echo_copy copy = find_echo(bus, x);
        fe_status st;
        size_t consumed = 0;
        uint8_t bad_id = 0;
        /* Behind an adapter known to echo, nothing before our own echo is a reply (it is stale). */
        int waiting = bus->echo_seen && !x->echoed;
        size_t window = waiting ? 0 : copy.complete ? copy.at : x->n;
        int p = fe_parse_status(x->buf, window, (size_t)x->length + 2, &st, &consumed, &bad_id);
        if (p != FE_PARSE_NEED_MORE && frame_start(p, &st, x->buf, consumed) < copy.at) {
            if (p != FE_PARSE_PACKET) count_bad_checksum(bus, x, bad_id);
            else if (old_bare_request(bus, &st)) bus->garbage_bytes += consumed;
            else accept_status(bus, x, &st);
            drop(x, consumed);
            continue;
        }
        if (copy.complete) {
            bus->garbage_bytes += copy.at;
            drop(x, copy.at + copy.len);
            x->echoed |= copy.ours;
            bus->echo_seen |= copy.ours && !request_looks_like_reply(x); /* no servo sends that: proof */
            bus->echo_proven |= bus->echo_seen;
            continue;
        }
        if (waiting || consumed > copy.at) consumed = copy.at;
        bus->garbage_bytes += consumed;
        drop(x, consumed);
        return;
    }
}

/* Flushes, writes the request, collects replies until every id answered or the deadline. 0 or -errno. */
static int run_exchange(fe_bus *bus, exchange *x, int64_t deadline_ns) {
    for (size_t k = 0; k < x->n_ids; k++) {
        x->valid[k] = 0;
        x->errors[k] = -1;
    }
    x->n_valid = 0;
    x->echoed = 0;
    x->n = 0;
    int rc = send_request(bus, x->sent, x->n_sent, deadline_ns);
    if (rc != 0) return rc;
    while (x->n_valid < x->n_ids) {
        if (x->n == RX_CAP) x->n = 0; /* take_replies leaves < 2 packets' worth: a guard, not a path */
        ssize_t got = fe_serial_read_until(bus->fd, x->buf + x->n, RX_CAP - x->n, deadline_ns);
        if (got < 0) return (int)got;
        if (got == 0) break;
        x->n += (size_t)got;
        take_replies(bus, x);
    }
    if (bus->echo_seen && !x->echoed) bus->echo_seen = 0; /* it did not echo this time: believe that next time */
    return 0;
}

/* One attempt of a unicast exchange. */
static int transact_once(fe_bus *bus, const uint8_t *packet, size_t n_packet, uint8_t id, uint8_t *data,
                         size_t n_data, uint8_t *error) {
    uint8_t valid;
    int err_or_none;
    exchange x = {.sent = packet, .n_sent = n_packet, .ids = &id, .n_ids = 1, .length = (uint8_t)n_data,
                  .data = data, .valid = &valid, .errors = &err_or_none};
    int64_t deadline = fe_now_ns() + fe_bus_wire_ns(bus, n_packet + 6 + n_data) + bus->timeout_ns;
    int rc = run_exchange(bus, &x, deadline);
    if (rc != 0) return rc;
    if (valid) {
        *error = (uint8_t)err_or_none;
        return FE_OK;
    }
    if (err_or_none == -2) return FE_ECHECKSUM;
    return x.echoed && request_looks_like_reply(&x) ? FE_EECHO : FE_ETIMEOUT;
}

int fe_bus_transact(fe_bus *bus, uint8_t id, uint8_t instruction, const uint8_t *params, size_t n_params,
                    uint8_t *data, size_t n_data, uint8_t *error) {
    uint8_t packet[FE_MAX_PACKET];
    int n_packet = fe_encode_packet(packet, id, instruction, params, n_params);
    if (n_packet < 0 || n_data + 6 > FE_MAX_PACKET) return -EMSGSIZE;
    fe_id_stats *st = &bus->stats[id];
    st->requests++;
    if (id == FE_BROADCAST_ID) return fe_bus_send(bus, packet, (size_t)n_packet);
    int rc = FE_ETIMEOUT;
    for (int attempt = 0; attempt <= bus->retries; attempt++) {
        if (attempt > 0) st->retries++;
        rc = transact_once(bus, packet, (size_t)n_packet, id, data, n_data, error);
        if (rc == FE_OK) return FE_OK;
        if (rc == FE_ETIMEOUT || rc == FE_EECHO) st->timeouts++;
        if (rc > FE_ETIMEOUT && rc < 0) return rc; /* OS error: retrying will not help */
    }
    return rc;
}

int fe_bus_sync_read_once(fe_bus *bus, const uint8_t *prefix, size_t n_prefix, const uint8_t *ids, size_t n_ids,
                          uint8_t addr, uint8_t length, uint8_t *data, uint8_t *valid, int *errors,
                          int64_t deadline_ns) {
    uint8_t packet[2 * FE_MAX_PACKET];
    if (n_prefix > FE_MAX_PACKET) return -EMSGSIZE;
    if (n_prefix) memcpy(packet, prefix, n_prefix);
    int n_req = fe_encode_sync_read(packet + n_prefix, addr, length, ids, n_ids);
    if (n_req < 0 || (size_t)length + 6 > FE_MAX_PACKET) return -EMSGSIZE;
    exchange x = {.sent = packet, .n_sent = n_prefix + (size_t)n_req, .ids = ids, .n_ids = n_ids,
                  .length = length, .data = data, .valid = valid, .errors = errors};
    for (size_t k = 0; k < n_ids; k++) bus->stats[ids[k]].requests++;
    int rc = run_exchange(bus, &x, deadline_ns);
    if (rc != 0) return rc;
    for (size_t k = 0; k < n_ids; k++)
        if (!valid[k]) bus->stats[ids[k]].timeouts++;
    return FE_OK;
}
