/* Bus transactions: request, then collect status packets from a byte stream until a deadline. */
#include <errno.h>
#include <string.h>

#include "feetech.h"

#define RX_CAP 4096

int fe_bus_open(fe_bus *bus, const char *path, int baud, double timeout_ms, int retries, char *err,
                size_t err_size) {
    memset(bus, 0, sizeof *bus);
    bus->fd = -1;
    int fd = fe_serial_open(path, baud, err, err_size);
    if (fd < 0) return fd;
    bus->fd = fd;
    bus->baud = baud;
    strncpy(bus->path, path, sizeof bus->path - 1);
    bus->timeout_ns = (int64_t)(timeout_ms * 1e6);
    bus->retries = retries < 0 ? 0 : retries;
    pthread_mutex_init(&bus->lock, NULL);
    atomic_init(&bus->loops, 0);
    return 0;
}

void fe_bus_close(fe_bus *bus) {
    if (bus->fd >= 0) {
        fe_serial_close(bus->fd);
        bus->fd = -1;
        pthread_mutex_destroy(&bus->lock);
    }
}

int64_t fe_bus_wire_ns(const fe_bus *bus, size_t n_bytes) {
    return (int64_t)((double)n_bytes * 10.0 * 1e9 / (double)bus->baud);
}

/* Some adapters echo the host's bytes into RX: drop one leading exact copy of what we sent. */
typedef struct {
    const uint8_t *sent;
    size_t n_sent;
    int done, echoed;
} echo_filter;

/* Returns 1 if parsing must wait for more bytes. */
static int echo_step(echo_filter *ef, uint8_t *buf, size_t *n) {
    if (ef->done) return 0;
    size_t m = *n < ef->n_sent ? *n : ef->n_sent;
    if (memcmp(buf, ef->sent, m) != 0) {
        ef->done = 1;
        return 0;
    }
    if (m < ef->n_sent) return 1;
    memmove(buf, buf + ef->n_sent, *n - ef->n_sent);
    *n -= ef->n_sent;
    ef->done = ef->echoed = 1;
    return 0;
}

int fe_bus_send(fe_bus *bus, const uint8_t *packet, size_t n) {
    fe_serial_flush_input(bus->fd);
    return fe_serial_write_all(bus->fd, packet, n, fe_now_ns() + fe_bus_wire_ns(bus, n) + bus->timeout_ns);
}

/* One attempt of a unicast exchange. */
static int transact_once(fe_bus *bus, const uint8_t *packet, size_t n_packet, uint8_t id, uint8_t *data,
                         size_t n_data, uint8_t *error) {
    uint8_t buf[RX_CAP];
    size_t n = 0;
    fe_id_stats *st = &bus->stats[id];
    fe_serial_flush_input(bus->fd);
    int64_t start = fe_now_ns();
    int64_t deadline = start + fe_bus_wire_ns(bus, n_packet + 6 + n_data) + bus->timeout_ns;
    int rc = fe_serial_write_all(bus->fd, packet, n_packet, deadline);
    if (rc != 0) return rc;
    echo_filter ef = {.sent = packet, .n_sent = n_packet};
    int result = FE_ETIMEOUT;
    for (;;) {
        ssize_t got = fe_serial_read_until(bus->fd, buf + n, RX_CAP - n, deadline);
        if (got < 0) return (int)got;
        if (got == 0) break;
        n += (size_t)got;
        if (echo_step(&ef, buf, &n)) continue;
        for (;;) {
            fe_status status;
            size_t consumed = 0;
            uint8_t bad_id = 0;
            int p = fe_parse_status(buf, n, &status, &consumed, &bad_id);
            if (p == FE_PARSE_BAD_CHECKSUM) {
                if (bad_id == id) st->checksum_errors++;
                else bus->bad_checksum_other++;
                result = FE_ECHECKSUM;
            } else if (p == FE_PARSE_PACKET && status.id == id) {
                if (status.n_data != n_data) {
                    result = FE_EPACKET;
                } else {
                    memcpy(data, status.data, n_data);
                    *error = status.error;
                    if (ef.echoed) bus->echo_seen = 1;
                    return FE_OK;
                }
            } else if (p == FE_PARSE_NEED_MORE) {
                bus->garbage_bytes += consumed;
            }
            memmove(buf, buf + consumed, n - consumed);
            n -= consumed;
            if (p == FE_PARSE_NEED_MORE) break;
        }
        if (n == RX_CAP) n = 0; /* flooded with garbage: start over */
    }
    /* Nothing but a copy of our request arrived, and this adapter has never echoed: the copy was the reply
     * (a PING answered with ERR=0x01 is byte-identical to the PING itself). */
    if (ef.echoed && !bus->echo_seen && result == FE_ETIMEOUT) {
        fe_status status;
        size_t consumed;
        uint8_t bad_id;
        if (fe_parse_status(packet, n_packet, &status, &consumed, &bad_id) == FE_PARSE_PACKET &&
            status.id == id && status.n_data == n_data) {
            memcpy(data, status.data, n_data);
            *error = status.error;
            return FE_OK;
        }
    }
    return result;
}

int fe_bus_transact(fe_bus *bus, uint8_t id, uint8_t instruction, const uint8_t *params, size_t n_params,
                    uint8_t *data, size_t n_data, uint8_t *error) {
    uint8_t packet[FE_MAX_PACKET];
    int n_packet = fe_encode_packet(packet, id, instruction, params, n_params);
    if (n_packet < 0) return -EMSGSIZE;
    fe_id_stats *st = &bus->stats[id];
    st->requests++;
    if (id == FE_BROADCAST_ID) return fe_bus_send(bus, packet, (size_t)n_packet);
    int rc = FE_ETIMEOUT;
    for (int attempt = 0; attempt <= bus->retries; attempt++) {
        if (attempt > 0) st->retries++;
        rc = transact_once(bus, packet, (size_t)n_packet, id, data, n_data, error);
        if (rc == FE_OK) {
            if (*error) st->errors_reported++;
            return FE_OK;
        }
        if (rc == FE_ETIMEOUT) st->timeouts++;
        if (rc > FE_ETIMEOUT && rc < 0) return rc; /* OS error: retrying will not help */
    }
    return rc;
}

int fe_bus_sync_read_once(fe_bus *bus, const uint8_t *prefix, size_t n_prefix, const uint8_t *ids, size_t n_ids,
                          uint8_t addr, uint8_t length, uint8_t *data, uint8_t *valid, int *errors,
                          int64_t deadline_ns) {
    uint8_t packet[2 * FE_MAX_PACKET];
    uint8_t buf[RX_CAP];
    if (n_prefix > FE_MAX_PACKET) return -EMSGSIZE;
    if (n_prefix) memcpy(packet, prefix, n_prefix);
    int n_req = fe_encode_sync_read(packet + n_prefix, addr, length, ids, n_ids);
    if (n_req < 0) return -EMSGSIZE;
    size_t n_packet = n_prefix + (size_t)n_req;
    int index_of[256];
    for (int i = 0; i < 256; i++) index_of[i] = -1;
    for (size_t k = 0; k < n_ids; k++) {
        index_of[ids[k]] = (int)k;
        valid[k] = 0;
        errors[k] = -1;
        bus->stats[ids[k]].requests++;
    }
    size_t n_valid = 0, n = 0;
    fe_serial_flush_input(bus->fd);
    int rc = fe_serial_write_all(bus->fd, packet, n_packet, deadline_ns);
    if (rc != 0) return rc;
    echo_filter ef = {.sent = packet, .n_sent = n_packet};
    while (n_valid < n_ids) {
        ssize_t got = fe_serial_read_until(bus->fd, buf + n, RX_CAP - n, deadline_ns);
        if (got < 0) return (int)got;
        if (got == 0) break;
        n += (size_t)got;
        if (echo_step(&ef, buf, &n)) continue;
        for (;;) {
            fe_status status;
            size_t consumed = 0;
            uint8_t bad_id = 0;
            int p = fe_parse_status(buf, n, &status, &consumed, &bad_id);
            if (p == FE_PARSE_BAD_CHECKSUM) {
                int k = index_of[bad_id];
                if (k >= 0) {
                    bus->stats[bad_id].checksum_errors++;
                    if (!valid[k]) errors[k] = -2;
                } else {
                    bus->bad_checksum_other++;
                }
            } else if (p == FE_PARSE_PACKET) {
                int k = index_of[status.id];
                if (k >= 0 && !valid[k]) {
                    if (status.n_data == length) {
                        memcpy(data + (size_t)k * length, status.data, length);
                        valid[k] = 1;
                        errors[k] = status.error;
                        if (status.error) bus->stats[status.id].errors_reported++;
                        n_valid++;
                    } else {
                        errors[k] = -2;
                    }
                }
            } else {
                bus->garbage_bytes += consumed;
            }
            memmove(buf, buf + consumed, n - consumed);
            n -= consumed;
            if (p == FE_PARSE_NEED_MORE) break;
        }
        if (n == RX_CAP) n = 0;
    }
    if (ef.echoed) bus->echo_seen = 1;
    for (size_t k = 0; k < n_ids; k++)
        if (!valid[k]) bus->stats[ids[k]].timeouts++;
    return FE_OK;
}
