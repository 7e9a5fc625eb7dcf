/* Feetech STS/SCS serial protocol, raw serial port, bus transactions and the real-time loop.
 * Plain C11, no Python here: module.c is the only file that knows about CPython. */
#ifndef RYNN_FEETECH_H
#define RYNN_FEETECH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- protocol.c ------------------------------------------------------------------------- */

#define FE_BROADCAST_ID 0xFE
#define FE_MAX_ID 0xFD        /* highest id a status packet may carry */
#define FE_MAX_PACKET 250     /* SDK limit for TX and RX packets, header included */
#define FE_MAX_SERVOS 32      /* ids per sync transaction / control loop */

enum fe_instruction {
    FE_PING = 0x01,
    FE_READ = 0x02,
    FE_WRITE = 0x03,
    FE_REG_WRITE = 0x04,
    FE_ACTION = 0x05,
    FE_SYNC_READ = 0x82,
    FE_SYNC_WRITE = 0x83,
};

/* Status (ERR) byte bits of the STS3215, same layout as register 65. */
enum fe_error_bit {
    FE_ERR_VOLTAGE = 0x01,
    FE_ERR_ANGLE = 0x02,
    FE_ERR_OVERHEAT = 0x04,
    FE_ERR_OVERCURRENT = 0x08,
    FE_ERR_OVERLOAD = 0x20,
};
/* The only bits a real status packet's ERR byte can have (0x2F). Bit 4 and bits 6-7 are never set by the
 * firmware, so a header with one of them is not a status packet: the 0x82 / 0x83 in the same place of an
 * echoed SYNC_READ / SYNC_WRITE, for one. Instructions 0x01-0x05 do look like ERR bytes: an echoed PING,
 * READ or ACTION is told apart by its length and by being an exact copy of the request (bus.c). */
#define FE_ERR_VALID (FE_ERR_VOLTAGE | FE_ERR_ANGLE | FE_ERR_OVERHEAT | FE_ERR_OVERCURRENT | FE_ERR_OVERLOAD)

uint8_t fe_checksum(const uint8_t *bytes, size_t n);
/* Each encoder returns the packet length, or -1 if it would exceed FE_MAX_PACKET. */
int fe_encode_packet(uint8_t *out, uint8_t id, uint8_t instruction, const uint8_t *params, size_t n_params);
int fe_encode_sync_write(uint8_t *out, uint8_t addr, uint8_t length, const uint8_t *ids, size_t n_ids,
                         const uint8_t *data /* n_ids * length bytes, id-major */);
int fe_encode_sync_read(uint8_t *out, uint8_t addr, uint8_t length, const uint8_t *ids, size_t n_ids);

uint16_t fe_encode_sign_magnitude(int32_t value, int sign_bit);
int32_t fe_decode_sign_magnitude(uint32_t raw, int sign_bit);

typedef struct {
    uint8_t id;
    uint8_t error;
    uint8_t n_data;
    const uint8_t *data; /* points into the parser's buffer */
} fe_status;

enum fe_parse_result {
    FE_PARSE_NEED_MORE = 0, /* no complete packet yet */
    FE_PARSE_PACKET = 1,    /* *status filled, *consumed bytes used */
    FE_PARSE_BAD_CHECKSUM = 2, /* a well-formed frame with a bad checksum; *consumed skips its first byte */
};

/* Finds the next status packet in buf[0..n) whose LEN field is expect_len (0: any length). Leading garbage
 * is consumed silently (counted in *consumed); a frame with a bad checksum is reported so the caller can
 * count it, and *consumed then skips only its first byte. A header whose LEN is not expect_len is garbage,
 * so the wait for an unfinished packet is never longer than the expected reply. */
int fe_parse_status(const uint8_t *buf, size_t n, size_t expect_len, fe_status *status, size_t *consumed,
                    uint8_t *bad_id);

/* ---- serial.c / serial_baud.c ----------------------------------------------------------- */

int64_t fe_now_ns(void); /* CLOCK_MONOTONIC */
int fe_serial_open(const char *path, int baud, char *err, size_t err_size);
int fe_serial_set_custom_baud(int fd, int baud); /* termios2 / BOTHER; 0 on success, -errno */
void fe_serial_close(int fd);
int fe_serial_flush_input(int fd); /* tcflush + drain what the driver still delivers */
int fe_serial_write_all(int fd, const uint8_t *buf, size_t n, int64_t deadline_ns); /* 0 or -errno */
/* Reads what is available, waiting in poll() until deadline_ns at most: >0 bytes, 0 deadline, -errno. */
ssize_t fe_serial_read_until(int fd, uint8_t *buf, size_t cap, int64_t deadline_ns);

/* ---- bus.c ------------------------------------------------------------------------------ */

typedef struct {
    uint64_t requests, timeouts, checksum_errors, retries, errors_reported;
} fe_id_stats;

#define FE_ECHO_HISTORY 32 /* distinct recent requests whose copies in the RX stream are echoes, however late */

typedef struct {
    int fd;               /* -1 once closed; read and written under lock */
    int baud;
    char path[256];
    int64_t timeout_ns;  /* slack on top of the wire time of each exchange */
    int retries;
    int echo_seen;       /* the adapter echoes: a copy came back of a request no reply can equal (a SYNC_READ),
                            and of every request since */
    int echo_proven;     /* echo_seen was set once: sticky (a backed-up adapter may echo late, or not at all) */
    uint8_t bare_sent[256]; /* per id, bit i: a request without params of instruction i (< 8) was ever sent; its
                               copy is a data-less status with ERR i (ACTION: ERR 5), however late it comes */
    int loops;           /* control loops starting or running on this bus; under lock */
    pthread_mutex_t lock; /* one transaction at a time (Python threads and the loop); lives until fe_bus_free */
    fe_id_stats stats[256];
    uint64_t garbage_bytes, bad_checksum_other;
    uint8_t recent[FE_ECHO_HISTORY][2 * FE_MAX_PACKET]; /* what we wrote lately, under lock */
    size_t recent_len[FE_ECHO_HISTORY];
    int recent_next;
} fe_bus;

enum fe_bus_result {
    FE_OK = 0,
    FE_ETIMEOUT = -1000, /* no (valid) status packet before the deadline */
    FE_ECHECKSUM = -1001, /* only corrupted frames arrived */
    FE_EECHO = -1002,     /* only a copy of the request came back: the adapter's echo, or a reply
                             byte-identical to the request (a PING answered with ERR=0x01) */
};

/* Initialises the lock whatever happens (fe_bus_free destroys it), then opens the port. */
int fe_bus_open(fe_bus *bus, const char *path, int baud, double timeout_ms, int retries, char *err,
                size_t err_size);
int fe_bus_close(fe_bus *bus); /* 0, or -EBUSY while a loop uses the bus; idempotent */
void fe_bus_free(fe_bus *bus); /* closes and destroys the lock: nobody may use the bus any more */
int fe_bus_acquire(fe_bus *bus); /* a loop starts using the bus: 0, or -EBADF if it is closed */
void fe_bus_release(fe_bus *bus);
int64_t fe_bus_wire_ns(const fe_bus *bus, size_t n_bytes);

/* Unicast request with reply; retried. Fills *error (servo ERR byte) and data (n_data bytes).
 * Caller holds bus->lock. Returns FE_OK, FE_E* or -errno. */
int fe_bus_transact(fe_bus *bus, uint8_t id, uint8_t instruction, const uint8_t *params, size_t n_params,
                    uint8_t *data, size_t n_data, uint8_t *error);

/* One request (optionally prefixed by `prefix`, sent in the same write()) and the K replies of a
 * SYNC_READ. valid[k] = 1 if id k answered with a good packet; errors[k] = ERR byte, or -1 no reply,
 * -2 only corrupted replies. data is K*length. Waits until all answered or deadline_ns.
 * Caller holds bus->lock. Returns FE_OK (even if some are missing) or -errno. */
int fe_bus_sync_read_once(fe_bus *bus, const uint8_t *prefix, size_t n_prefix, const uint8_t *ids, size_t n_ids,
                          uint8_t addr, uint8_t length, uint8_t *data, uint8_t *valid, int *errors,
                          int64_t deadline_ns);
int fe_bus_send(fe_bus *bus, const uint8_t *packet, size_t n); /* no reply expected */

/* ---- loop.c ----------------------------------------------------------------------------- */

typedef struct {
    int64_t t0_ns;
    int64_t chunk_id;
    int n_rows;
    int capacity_rows;
    int32_t *goals; /* n_rows * n_ids */
} fe_chunk;

enum fe_record_flag { FE_REC_VALID = 0x01, FE_REC_HELD = 0x02 };

/* Lifecycle, one state under life_lock. start: IDLE -> STARTING -> RUNNING (or back to IDLE on an error or a
 * stop() meanwhile); stop: RUNNING -> STOPPING -> IDLE. A thread that ended on a fault stays RUNNING (with
 * running == 0) until a stop() or the next start() joins it: exactly one caller ever joins a thread. */
enum fe_life { FE_IDLE, FE_STARTING, FE_RUNNING, FE_STOPPING };

#define FE_START_READS 3  /* agreeing readings in a row per servo that make the starting pose */
#define FE_START_AGREE 16 /* ticks each of them may differ from the first (a standing servo reads +-1) */
#define FE_MAX_LEAD 8     /* a goal never runs more than FE_MAX_LEAD * max_step ahead of the measured position */

typedef struct {
    /* configuration (immutable after create) */
    fe_bus *bus;
    int n_ids;
    uint8_t ids[FE_MAX_SERVOS];
    int64_t period_ns;
    double action_rate_hz;
    int32_t lower[FE_MAX_SERVOS], upper[FE_MAX_SERVOS], max_step[FE_MAX_SERVOS];
    uint8_t read_addr, write_addr;
    int max_missed_cycles;
    uint8_t fault_mask;
    int rt_priority;

    /* lifecycle; wake is signalled (under life_lock) to cut the loop thread's sleep short on stop */
    pthread_mutex_t life_lock;
    pthread_cond_t life_changed, wake;
    int life;
    atomic_int cancel_start; /* a stop() came during start(): start() ends stopped */
    pthread_t thread;
    atomic_int running, stop_request;

    /* triple-buffered chunks: writer owns `back`, loop owns `front`, `middle` is exchanged */
    pthread_mutex_t writer_lock; /* one submit / hold / drain at a time, from any thread; never the loop's */
    fe_chunk slots[3];
    int back, front;
    atomic_int middle;    /* slot index | FE_FRESH */
    atomic_int hold_request;

    /* loop-thread state */
    int front_valid;
    int32_t goal[FE_MAX_SERVOS];
    int32_t present[FE_MAX_SERVOS]; /* last valid reading per id */
    int missed[FE_MAX_SERVOS];
    uint64_t missed_total[FE_MAX_SERVOS], error_count[FE_MAX_SERVOS];

    /* status snapshot, guarded by status_lock (the loop only try-locks it) */
    pthread_mutex_t status_lock;
    uint64_t st_cycles, st_overruns, st_records_dropped;
    int32_t st_present[FE_MAX_SERVOS], st_goal[FE_MAX_SERVOS];
    int st_error[FE_MAX_SERVOS], st_missed[FE_MAX_SERVOS], st_valid[FE_MAX_SERVOS];
    uint64_t st_error_count[FE_MAX_SERVOS], st_missed_total[FE_MAX_SERVOS];
    int64_t st_chunk_id;
    int st_holding;
    char fault[256];
    int fault_id;
    char sched[96];

    /* single-producer single-consumer record ring */
    uint8_t *ring;
    size_t record_size;
    uint64_t ring_capacity;
    _Atomic uint64_t ring_head, ring_tail, ring_dropped;
} fe_loop;

#define FE_FRESH 0x4

/* Arguments are trusted here: module.c validates them (ranges, lower <= upper, max_step > 0). */
int fe_loop_init(fe_loop *loop, fe_bus *bus, const uint8_t *ids, int n_ids, double loop_rate_hz,
                 double action_rate_hz, const int32_t *lower, const int32_t *upper, const int32_t *max_step,
                 uint8_t read_addr, uint8_t write_addr, int max_missed_cycles, uint8_t fault_mask,
                 int rt_priority, size_t ring_capacity);
void fe_loop_free(fe_loop *loop);
/* Takes the starting pose from FE_START_READS agreeing reads, then starts the thread. Safe from any thread.
 * 0, FE_ETIMEOUT (an id never answered), or -errno: EBUSY already starting/running, ECANCELED stop() came
 * meanwhile, EPROTO reads disagree, ERANGE a servo too far outside its limits, EBADF bus closed. */
int fe_loop_start(fe_loop *loop, char *err, size_t err_size);
void fe_loop_stop(fe_loop *loop); /* joins; idempotent; safe from any thread, also during start */
/* Writer side (any thread): rows is n_rows * n_ids. 0 or -ENOMEM. */
int fe_loop_submit(fe_loop *loop, int64_t t0_ns, const int32_t *rows, int n_rows, int64_t chunk_id);
void fe_loop_hold(fe_loop *loop);
size_t fe_loop_drain(fe_loop *loop, uint8_t *out, size_t max_records);
/* Goal for time t from a chunk (interpolated, not clamped). Returns 0 if t is not covered. */
int fe_chunk_goal_at(const fe_chunk *chunk, int n_ids, double action_rate_hz, int64_t t_ns, int32_t *goal);

#endif
