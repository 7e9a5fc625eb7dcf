/* The C core's protocol and bus receive path without Python: a plain executable that also runs under
 * qemu-aarch64-static (`make ctest-aarch64`), where plain `char` is unsigned and the ABI differs.
 *
 * Byte values >= 0x80 appear in every packet (the FF FF header, positions, checksums) and buffers are parsed
 * at odd offsets, so a signed-char or alignment assumption in the core shows up as a wrong value here.
 * The bus half talks to a real pseudo-terminal: a responder thread plays the servos (and the echoing
 * adapter) on the master side. Exit status 0 when every check holds; each failure is printed. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "feetech.h"

static int failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                               \
        }                                                                             \
    } while (0)

static int same(const uint8_t *a, const uint8_t *b, size_t n) { return memcmp(a, b, n) == 0; }

static void test_encoding(void) {
    const uint8_t ping[] = {0xFF, 0xFF, 0x01, 0x02, 0x01, 0xFB};
    uint8_t out[FE_MAX_PACKET];
    CHECK(fe_checksum(ping + 2, 3) == 0xFB);
    CHECK(fe_encode_packet(out, 1, FE_PING, NULL, 0) == 6 && same(out, ping, 6));

    const uint8_t read_params[] = {56, 2}; /* Present_Position, 2 bytes */
    const uint8_t read[] = {0xFF, 0xFF, 0x01, 0x04, 0x02, 0x38, 0x02, 0xBE};
    CHECK(fe_encode_packet(out, 1, FE_READ, read_params, 2) == 8 && same(out, read, 8));

    /* Goals 4095 (0x0FFF) and -1 (sign bit 15: 0x8001) for ids 1 and 2. */
    const uint8_t ids[] = {1, 2};
    const uint8_t goals[] = {0xFF, 0x0F, 0x01, 0x80};
    const uint8_t sync_write[] = {0xFF, 0xFF, 0xFE, 0x0A, 0x83, 0x2A, 0x02, 0x01,
                                  0xFF, 0x0F, 0x02, 0x01, 0x80, 0xB6};
    CHECK(fe_encode_sync_write(out, 42, 2, ids, 2, goals) == 14 && same(out, sync_write, 14));
    const uint8_t sync_read[] = {0xFF, 0xFF, 0xFE, 0x06, 0x82, 0x38, 0x02, 0x01, 0x02, 0x3C};
    CHECK(fe_encode_sync_read(out, 56, 2, ids, 2) == 10 && same(out, sync_read, 10));

    uint8_t too_many[FE_MAX_PACKET] = {0};
    CHECK(fe_encode_packet(out, 1, FE_WRITE, too_many, FE_MAX_PACKET - 5) == -1);
}

static void test_sign_magnitude(void) {
    CHECK(fe_encode_sign_magnitude(-1, 15) == 0x8001);
    CHECK(fe_encode_sign_magnitude(4095, 15) == 0x0FFF);
    CHECK(fe_encode_sign_magnitude(-2047, 11) == 0x0FFF);
    CHECK(fe_decode_sign_magnitude(0x8001, 15) == -1);
    CHECK(fe_decode_sign_magnitude(0x0FFF, 11) == -2047);
    CHECK(fe_decode_sign_magnitude(0x07FF, 11) == 2047);
    CHECK(fe_decode_sign_magnitude(0xFFFF, 15) == -32767);
}

/* Status of id 3, ERR 0x20 (overload), data FF 0F (position 4095): FF FF 03 04 20 FF 0F CA. */
static const uint8_t STATUS3[] = {0xFF, 0xFF, 0x03, 0x04, 0x20, 0xFF, 0x0F, 0xCA};

static void test_parse(void) {
    CHECK(fe_checksum(STATUS3 + 2, 5) == STATUS3[7]);
    /* At every offset 0..7 of a buffer (alignment), after garbage that looks like half a header. */
    for (size_t offset = 0; offset < 8; offset++) {
        uint8_t storage[64] = {0};
        uint8_t *buf = storage + offset;
        const uint8_t garbage[] = {0x80, 0xFE, 0xFF, 0x7F, 0xFF};
        memcpy(buf, garbage, sizeof garbage);
        memcpy(buf + sizeof garbage, STATUS3, sizeof STATUS3);
        size_t n = sizeof garbage + sizeof STATUS3;
        fe_status st;
        size_t consumed = 0;
        uint8_t bad_id = 0;
        CHECK(fe_parse_status(buf, n, 4, &st, &consumed, &bad_id) == FE_PARSE_PACKET);
        CHECK(st.id == 3 && st.error == 0x20 && st.n_data == 2 && consumed == n);
        CHECK(fe_decode_sign_magnitude((uint32_t)st.data[0] | (uint32_t)st.data[1] << 8, 15) == 4095);
        /* Cut short: need more, the garbage consumed, the partial header kept. */
        CHECK(fe_parse_status(buf, n - 2, 4, &st, &consumed, &bad_id) == FE_PARSE_NEED_MORE);
        CHECK(consumed == sizeof garbage);
        /* Wrong LEN for this exchange: garbage. */
        CHECK(fe_parse_status(buf, n, 3, &st, &consumed, &bad_id) == FE_PARSE_NEED_MORE);
        /* A flipped checksum: reported with its id, one byte skipped. */
        buf[n - 1] ^= 0x80;
        CHECK(fe_parse_status(buf, n, 4, &st, &consumed, &bad_id) == FE_PARSE_BAD_CHECKSUM);
        CHECK(bad_id == 3 && consumed == sizeof garbage + 1);
    }
    /* An echoed SYNC_READ (instruction 0x82 in the ERR place) is never a status packet. */
    const uint8_t sync_read[] = {0xFF, 0xFF, 0xFE, 0x06, 0x82, 0x38, 0x02, 0x01, 0x02, 0x3C};
    fe_status st;
    size_t consumed = 0;
    uint8_t bad_id = 0;
    CHECK(fe_parse_status(sync_read, sizeof sync_read, 0, &st, &consumed, &bad_id) == FE_PARSE_NEED_MORE);
}

/* ---- the bus on a pseudo-terminal ------------------------------------------------------------------ */

typedef struct {
    int master;
    size_t request_len;   /* bytes to read before answering */
    int echo;             /* copy the request back first, as a half-duplex adapter does */
    const uint8_t *reply; /* sent in two pieces, 2 ms apart */
    size_t reply_len;
    uint8_t request[FE_MAX_PACKET];
} responder;

static void sleep_ms(long ms) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = ms * 1000000L};
    nanosleep(&ts, NULL);
}

static void *respond(void *arg) {
    responder *r = arg;
    size_t got = 0;
    while (got < r->request_len) {
        ssize_t n = read(r->master, r->request + got, r->request_len - got);
        if (n > 0) got += (size_t)n;
        else if (n < 0 && errno != EAGAIN && errno != EINTR) return NULL;
        else sleep_ms(1);
    }
    if (r->echo && write(r->master, r->request, got) != (ssize_t)got) return NULL;
    size_t half = r->reply_len / 2;
    if (half && write(r->master, r->reply, half) != (ssize_t)half) return NULL;
    sleep_ms(2);
    if (r->reply_len > half && write(r->master, r->reply + half, r->reply_len - half) < 0) return NULL;
    return NULL;
}

/* One unicast READ of Present_Position from id 3 against a scripted responder. */
static int exchange(fe_bus *bus, int master, int echo, const uint8_t *reply, size_t reply_len, uint8_t *data,
                    uint8_t *error) {
    responder r = {.master = master, .request_len = 8, .echo = echo, .reply = reply, .reply_len = reply_len};
    pthread_t thread;
    pthread_create(&thread, NULL, respond, &r);
    pthread_mutex_lock(&bus->lock);
    const uint8_t params[] = {56, 2};
    int rc = fe_bus_transact(bus, 3, FE_READ, params, 2, data, 2, error);
    pthread_mutex_unlock(&bus->lock);
    pthread_join(thread, NULL);
    const uint8_t expected[] = {0xFF, 0xFF, 0x03, 0x04, 0x02, 0x38, 0x02, 0xBC};
    CHECK(same(r.request, expected, sizeof expected));
    return rc;
}

static void test_bus(void) {
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    CHECK(master >= 0 && grantpt(master) == 0 && unlockpt(master) == 0);
    if (master < 0) return;
    fe_bus bus;
    char err[256] = "";
    /* 40 ms of slack: qemu-user on a busy 2-core machine is slow. */
    int rc = fe_bus_open(&bus, ptsname(master), 1000000, 40.0, 0, err, sizeof err);
    CHECK(rc == 0);
    if (rc != 0) {
        fprintf(stderr, "fe_bus_open: %s\n", err);
        close(master);
        return;
    }
    uint8_t data[2] = {0}, error = 0;

    /* Garbage, then the reply split in two pieces. */
    uint8_t noisy[3 + sizeof STATUS3] = {0x00, 0xFF, 0x80};
    memcpy(noisy + 3, STATUS3, sizeof STATUS3);
    CHECK(exchange(&bus, master, 0, noisy, sizeof noisy, data, &error) == FE_OK);
    CHECK(error == 0x20 && data[0] == 0xFF && data[1] == 0x0F);

    /* Behind an echoing adapter: the copy of the request is dropped, the reply taken. */
    memset(data, 0, sizeof data);
    CHECK(exchange(&bus, master, 1, STATUS3, sizeof STATUS3, data, &error) == FE_OK);
    CHECK(error == 0x20 && data[0] == 0xFF && data[1] == 0x0F);

    /* Only a corrupted reply: a checksum error, counted for id 3. */
    uint8_t corrupt[sizeof STATUS3];
    memcpy(corrupt, STATUS3, sizeof corrupt);
    corrupt[sizeof corrupt - 1] ^= 0xFF;
    uint64_t before = bus.stats[3].checksum_errors;
    CHECK(exchange(&bus, master, 0, corrupt, sizeof corrupt, data, &error) == FE_ECHECKSUM);
    CHECK(bus.stats[3].checksum_errors == before + 1);

    /* Silence: a timeout. */
    CHECK(exchange(&bus, master, 0, NULL, 0, data, &error) == FE_ETIMEOUT);

    fe_bus_free(&bus);
    close(master);
}

int main(void) {
    test_encoding();
    test_sign_magnitude();
    test_parse();
    test_bus();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("feetech_test: all checks passed (char is %s)\n", (char)0x80 < 0 ? "signed" : "unsigned");
    return 0;
}
