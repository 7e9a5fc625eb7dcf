/* Feetech packet encoding, status-packet parsing and sign-magnitude registers. */
#include <string.h>

#include "feetech.h"

uint8_t fe_checksum(const uint8_t *bytes, size_t n) {
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++) sum += bytes[i];
    return (uint8_t)(~sum & 0xFF);
}

int fe_encode_packet(uint8_t *out, uint8_t id, uint8_t instruction, const uint8_t *params, size_t n_params) {
    size_t total = n_params + 6;
    if (total > FE_MAX_PACKET) return -1;
    out[0] = 0xFF;
    out[1] = 0xFF;
    out[2] = id;
    out[3] = (uint8_t)(n_params + 2);
    out[4] = instruction;
    if (n_params) memcpy(out + 5, params, n_params);
    out[total - 1] = fe_checksum(out + 2, total - 3);
    return (int)total;
}

int fe_encode_sync_write(uint8_t *out, uint8_t addr, uint8_t length, const uint8_t *ids, size_t n_ids,
                         const uint8_t *data) {
    uint8_t params[FE_MAX_PACKET];
    size_t n_params = 2 + n_ids * (1 + (size_t)length);
    if (n_params + 6 > FE_MAX_PACKET) return -1;
    params[0] = addr;
    params[1] = length;
    uint8_t *p = params + 2;
    for (size_t k = 0; k < n_ids; k++) {
        *p++ = ids[k];
        memcpy(p, data + k * length, length);
        p += length;
    }
    return fe_encode_packet(out, FE_BROADCAST_ID, FE_SYNC_WRITE, params, n_params);
}

int fe_encode_sync_read(uint8_t *out, uint8_t addr, uint8_t length, const uint8_t *ids, size_t n_ids) {
    uint8_t params[FE_MAX_PACKET];
    if (n_ids + 2 + 6 > FE_MAX_PACKET) return -1;
    params[0] = addr;
    params[1] = length;
    memcpy(params + 2, ids, n_ids);
    return fe_encode_packet(out, FE_BROADCAST_ID, FE_SYNC_READ, params, n_ids + 2);
}

uint16_t fe_encode_sign_magnitude(int32_t value, int sign_bit) {
    uint32_t magnitude_mask = (1u << sign_bit) - 1u;
    if (value < 0) return (uint16_t)(((uint32_t)(-value) & magnitude_mask) | (1u << sign_bit));
    return (uint16_t)((uint32_t)value & magnitude_mask);
}

int32_t fe_decode_sign_magnitude(uint32_t raw, int sign_bit) {
    int32_t magnitude = (int32_t)(raw & ((1u << sign_bit) - 1u));
    return (raw >> sign_bit) & 1u ? -magnitude : magnitude;
}

/* Could a status packet (with LEN expect_len, if known) start at h[0..5)? The SDK's plausibility rules
 * plus the STS ERR bits; anything else is garbage or one of our own requests coming back. */
static int plausible_header(const uint8_t *h, size_t expect_len) {
    uint8_t id = h[2], len = h[3], err = h[4];
    if (h[0] != 0xFF || h[1] != 0xFF || id > FE_MAX_ID || (err & ~FE_ERR_VALID)) return 0;
    if (expect_len) return len == expect_len;
    return len >= 2 && (size_t)len + 4 <= FE_MAX_PACKET;
}

int fe_parse_status(const uint8_t *buf, size_t n, size_t expect_len, fe_status *status, size_t *consumed,
                    uint8_t *bad_id) {
    size_t i = 0;
    for (; i + 1 < n; i++) {
        if (buf[i] != 0xFF || buf[i + 1] != 0xFF) continue;
        if (i + 5 > n) break; /* need FF FF id len err */
        if (!plausible_header(buf + i, expect_len)) continue;
        size_t total = (size_t)buf[i + 3] + 4;
        if (i + total > n) break;
        if (fe_checksum(buf + i + 2, total - 3) != buf[i + total - 1]) {
            *consumed = i + 1;
            *bad_id = buf[i + 2];
            return FE_PARSE_BAD_CHECKSUM;
        }
        status->id = buf[i + 2];
        status->error = buf[i + 4];
        status->n_data = (uint8_t)(total - 6);
        status->data = buf + i + 5;
        *consumed = i + total;
        return FE_PARSE_PACKET;
    }
    if (i + 1 == n && buf[i] != 0xFF) i = n; /* a last byte that cannot start a header */
    *consumed = i; /* garbage before a possible partial header */
    return FE_PARSE_NEED_MORE;
}
