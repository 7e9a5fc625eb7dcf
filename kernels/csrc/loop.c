/* The real-time servo loop: one pthread, absolute deadlines, one bus exchange per cycle
 * (SYNC_WRITE goals + SYNC_READ request in one write()), chunks swapped in lock-free. */
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "feetech.h"

#define REC_HEADER 48 /* cycle, deadline, wake, bus_done, period_error, chunk_id: 6 x 8 bytes */

int fe_loop_init(fe_loop *loop, fe_bus *bus, const uint8_t *ids, int n_ids, double loop_rate_hz,
                 double action_rate_hz, const int32_t *lower, const int32_t *upper, const int32_t *max_step,
                 uint8_t read_addr, uint8_t write_addr, int max_missed_cycles, uint8_t fault_mask,
                 int rt_priority, size_t ring_capacity) {
    memset(loop, 0, sizeof *loop);
    loop->bus = bus;
    loop->n_ids = n_ids;
    memcpy(loop->ids, ids, (size_t)n_ids);
    loop->period_ns = (int64_t)llround(1e9 / loop_rate_hz);
    loop->action_rate_hz = action_rate_hz;
    memcpy(loop->lower, lower, sizeof(int32_t) * (size_t)n_ids);
    memcpy(loop->upper, upper, sizeof(int32_t) * (size_t)n_ids);
    memcpy(loop->max_step, max_step, sizeof(int32_t) * (size_t)n_ids);
    loop->read_addr = read_addr;
    loop->write_addr = write_addr;
    loop->max_missed_cycles = max_missed_cycles;
    loop->fault_mask = fault_mask;
    loop->rt_priority = rt_priority;
    loop->back = 0;
    atomic_init(&loop->middle, 1);
    loop->front = 2;
    atomic_init(&loop->hold_request, 0);
    atomic_init(&loop->running, 0);
    atomic_init(&loop->stop_request, 0);
    loop->fault_id = -1;
    loop->st_chunk_id = -1;
    loop->st_holding = 1;
    strcpy(loop->sched, "not started");
    pthread_mutex_init(&loop->status_lock, NULL);
    pthread_mutex_init(&loop->writer_lock, NULL);
    pthread_mutex_init(&loop->life_lock, NULL);
    pthread_cond_init(&loop->life_changed, NULL);
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC); /* the loop sleeps to absolute monotonic deadlines */
    pthread_cond_init(&loop->wake, &monotonic);
    pthread_condattr_destroy(&monotonic);
    loop->life = FE_IDLE;
    atomic_init(&loop->cancel_start, 0);
    loop->record_size = (REC_HEADER + 10 * (size_t)n_ids + 7) & ~(size_t)7;
    loop->ring_capacity = ring_capacity;
    loop->ring = calloc(ring_capacity, loop->record_size);
    if (!loop->ring) return -ENOMEM;
    atomic_init(&loop->ring_head, 0);
    atomic_init(&loop->ring_tail, 0);
    atomic_init(&loop->ring_dropped, 0);
    return 0;
}

void fe_loop_free(fe_loop *loop) {
    fe_loop_stop(loop);
    for (int s = 0; s < 3; s++) free(loop->slots[s].goals);
    free(loop->ring);
    loop->ring = NULL;
    pthread_mutex_destroy(&loop->status_lock);
    pthread_mutex_destroy(&loop->writer_lock);
    pthread_mutex_destroy(&loop->life_lock);
    pthread_cond_destroy(&loop->life_changed);
    pthread_cond_destroy(&loop->wake);
}

int fe_chunk_goal_at(const fe_chunk *chunk, int n_ids, double action_rate_hz, int64_t t_ns, int32_t *goal) {
    if (chunk->n_rows <= 0 || t_ns < chunk->t0_ns) return 0;
    uint64_t since = (uint64_t)t_ns - (uint64_t)chunk->t0_ns; /* exact for any two int64 */
    double s = (double)since * 1e-9 * action_rate_hz;
    /* Row k is the goal at t0 + k/rate and lasts one action period; never extrapolate. Written so that a
     * NaN s (0 * inf) is not covered either: the row index below is only ever taken from 0 <= s < n_rows. */
    if (!(s >= 0.0 && s < (double)chunk->n_rows)) return 0;
    int row = (int)s;
    const int32_t *a = chunk->goals + (size_t)row * (size_t)n_ids;
    if (row >= chunk->n_rows - 1) {
        memcpy(goal, a, sizeof(int32_t) * (size_t)n_ids);
        return 1;
    }
    const int32_t *b = a + n_ids;
    double frac = s - (double)row;
    for (int k = 0; k < n_ids; k++) goal[k] = (int32_t)lrint((double)a[k] + frac * (double)(b[k] - a[k]));
    return 1;
}

int fe_loop_submit(fe_loop *loop, int64_t t0_ns, const int32_t *rows, int n_rows, int64_t chunk_id) {
    pthread_mutex_lock(&loop->writer_lock);
    fe_chunk *c = &loop->slots[loop->back];
    int rc = 0;
    if (n_rows > c->capacity_rows) {
        int32_t *grown = realloc(c->goals, sizeof(int32_t) * (size_t)n_rows * (size_t)loop->n_ids);
        if (grown) {
            c->goals = grown;
            c->capacity_rows = n_rows;
        }
        rc = grown ? 0 : -ENOMEM;
    }
    if (rc == 0) {
        memcpy(c->goals, rows, sizeof(int32_t) * (size_t)n_rows * (size_t)loop->n_ids);
        c->n_rows = n_rows;
        c->t0_ns = t0_ns;
        c->chunk_id = chunk_id;
        /* Publish: our filled slot becomes `middle`; we get back whatever was there (never `front`). */
        loop->back = atomic_exchange(&loop->middle, loop->back | FE_FRESH) & 3;
    }
    pthread_mutex_unlock(&loop->writer_lock);
    return rc;
}

void fe_loop_hold(fe_loop *loop) {
    pthread_mutex_lock(&loop->writer_lock);
    atomic_fetch_and(&loop->middle, ~FE_FRESH); /* drop a chunk not yet picked up */
    atomic_store(&loop->hold_request, 1);
    pthread_mutex_unlock(&loop->writer_lock);
}

static void push_record(fe_loop *loop, const uint8_t *record) {
    uint64_t head = atomic_load_explicit(&loop->ring_head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&loop->ring_tail, memory_order_acquire);
    if (head - tail >= loop->ring_capacity) {
        atomic_fetch_add_explicit(&loop->ring_dropped, 1, memory_order_relaxed);
        return;
    }
    memcpy(loop->ring + (head % loop->ring_capacity) * loop->record_size, record, loop->record_size);
    atomic_store_explicit(&loop->ring_head, head + 1, memory_order_release);
}

size_t fe_loop_drain(fe_loop *loop, uint8_t *out, size_t max_records) {
    pthread_mutex_lock(&loop->writer_lock); /* the one consumer of the ring, whichever thread calls */
    uint64_t tail = atomic_load_explicit(&loop->ring_tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&loop->ring_head, memory_order_acquire);
    size_t n = 0;
    while (tail + n < head && n < max_records) {
        memcpy(out + n * loop->record_size, loop->ring + ((tail + n) % loop->ring_capacity) * loop->record_size,
               loop->record_size);
        n++;
    }
    atomic_store_explicit(&loop->ring_tail, tail + n, memory_order_release);
    pthread_mutex_unlock(&loop->writer_lock);
    return n;
}

static void set_fault(fe_loop *loop, int id, const char *fmt_reason) {
    pthread_mutex_lock(&loop->status_lock);
    snprintf(loop->fault, sizeof loop->fault, "%s", fmt_reason);
    loop->fault_id = id;
    pthread_mutex_unlock(&loop->status_lock);
}

static const char *error_names(int err, char *buf, size_t size) {
    static const struct { int bit; const char *name; } names[] = {
        {FE_ERR_VOLTAGE, "voltage"}, {FE_ERR_ANGLE, "angle sensor"}, {FE_ERR_OVERHEAT, "overheat"},
        {FE_ERR_OVERCURRENT, "overcurrent"}, {FE_ERR_OVERLOAD, "overload"},
    };
    buf[0] = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!(err & names[i].bit)) continue;
        size_t used = strlen(buf);
        snprintf(buf + used, size - used, "%s%s", used ? "+" : "", names[i].name);
    }
    return buf;
}

/* Sleeps until the absolute CLOCK_MONOTONIC deadline t_ns; returns 0 at once when stop() wakes it. A condition
 * variable rather than clock_nanosleep, so that stop() never waits out a long period. */
static int sleep_until(fe_loop *loop, int64_t t_ns) {
    struct timespec ts = {.tv_sec = t_ns / 1000000000LL, .tv_nsec = t_ns % 1000000000LL};
    pthread_mutex_lock(&loop->life_lock);
    int rc = 0;
    while (!atomic_load(&loop->stop_request) && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&loop->wake, &loop->life_lock, &ts);
    int go = !atomic_load(&loop->stop_request);
    pthread_mutex_unlock(&loop->life_lock);
    return go;
}

static int32_t clamp32(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The goal servo k gets this cycle on its way to `want`: inside [lower, upper]; at most max_step from the
 * previous goal; and at most FE_MAX_LEAD steps ahead of the measured position, unless the previous goal
 * already was further (a servo lagging or pushed away): then the goal may not move further from it. The
 * previous goal satisfies all three (it did when start() set it), so the result always exists. */
static int32_t next_goal(const fe_loop *loop, int k, int32_t want) {
    int32_t prev = loop->goal[k], step = loop->max_step[k], at = loop->present[k];
    int32_t lead = FE_MAX_LEAD * step;
    int32_t behind = prev > at ? prev - at : at - prev;
    if (behind > lead) lead = behind;
    want = clamp32(want, at - lead, at + lead);
    int32_t lo = prev - step > loop->lower[k] ? prev - step : loop->lower[k];
    int32_t hi = prev + step < loop->upper[k] ? prev + step : loop->upper[k];
    return clamp32(want, lo, hi);
}

/* Phase 1: the chunk row for this deadline (or hold), turned into this cycle's goals. Returns `held`. */
static int plan_goals(fe_loop *loop, int64_t deadline, int64_t *chunk_id, uint8_t *goal_bytes) {
    const int K = loop->n_ids;
    if (atomic_exchange(&loop->hold_request, 0)) loop->front_valid = 0;
    if (atomic_load(&loop->middle) & FE_FRESH) {
        loop->front = atomic_exchange(&loop->middle, loop->front) & 3;
        loop->front_valid = 1;
    }
    int32_t target[FE_MAX_SERVOS];
    const fe_chunk *chunk = &loop->slots[loop->front];
    int held = !(loop->front_valid && fe_chunk_goal_at(chunk, K, loop->action_rate_hz, deadline, target));
    *chunk_id = loop->front_valid ? chunk->chunk_id : -1;
    for (int k = 0; k < K; k++) {
        loop->goal[k] = next_goal(loop, k, held ? loop->goal[k] : target[k]);
        uint16_t raw = fe_encode_sign_magnitude(loop->goal[k], 15);
        goal_bytes[2 * k] = (uint8_t)(raw & 0xFF);
        goal_bytes[2 * k + 1] = (uint8_t)(raw >> 8);
    }
    return held;
}

typedef struct {
    uint8_t data[2 * FE_MAX_SERVOS], valid[FE_MAX_SERVOS];
    int errors[FE_MAX_SERVOS];
    int fault, fault_id;
    char reason[256];
} cycle_io;

/* Phase 3: readings into the record; the first fault (missing too long, or an ERR bit in fault_mask). */
static void judge_replies(fe_loop *loop, cycle_io *io, int held, uint8_t *record) {
    const int K = loop->n_ids;
    int32_t *present = (int32_t *)(record + REC_HEADER);
    int32_t *goal_out = present + K;
    uint8_t *err_out = (uint8_t *)(goal_out + K);
    uint8_t *flags_out = err_out + K;
    for (int k = 0; k < K; k++) {
        int ok = io->valid[k];
        if (ok) {
            present[k] = fe_decode_sign_magnitude((uint32_t)io->data[2 * k] | ((uint32_t)io->data[2 * k + 1] << 8), 15);
            loop->missed[k] = 0;
            if (!io->fault && (io->errors[k] & loop->fault_mask)) {
                char names[96];
                snprintf(io->reason, sizeof io->reason, "servo %d reported error 0x%02x (%s)", loop->ids[k],
                         io->errors[k], error_names(io->errors[k], names, sizeof names));
                io->fault = 1;
                io->fault_id = loop->ids[k];
            }
        } else {
            present[k] = loop->present[k];
            loop->missed[k]++;
            if (!io->fault && loop->missed[k] > loop->max_missed_cycles) {
                snprintf(io->reason, sizeof io->reason,
                         "servo %d missing from sync-read replies for %d consecutive cycles", loop->ids[k],
                         loop->missed[k]);
                io->fault = 1;
                io->fault_id = loop->ids[k];
            }
        }
        goal_out[k] = loop->goal[k];
        err_out[k] = ok ? (uint8_t)io->errors[k] : 0;
        flags_out[k] = (uint8_t)((ok ? FE_REC_VALID : 0) | (held ? FE_REC_HELD : 0));
        if (ok) loop->present[k] = present[k];
        else loop->missed_total[k]++;
        if (ok && io->errors[k]) loop->error_count[k]++;
    }
}

/* Phase 4: the snapshot status() reads. */
static void publish_status(fe_loop *loop, const cycle_io *io, uint64_t cycle, int64_t chunk_id, int held) {
    for (int k = 0; k < loop->n_ids; k++) {
        loop->st_goal[k] = loop->goal[k];
        loop->st_present[k] = loop->present[k];
        loop->st_valid[k] = io->valid[k];
        loop->st_error[k] = io->errors[k];
        loop->st_missed[k] = loop->missed[k];
        loop->st_missed_total[k] = loop->missed_total[k];
        loop->st_error_count[k] = loop->error_count[k];
    }
    loop->st_cycles = cycle + 1;
    loop->st_chunk_id = chunk_id;
    loop->st_holding = held;
    if (io->fault) {
        snprintf(loop->fault, sizeof loop->fault, "%s", io->reason);
        loop->fault_id = io->fault_id;
    }
}

/* Returns 0 to continue, 1 on a fault (already recorded). */
static int run_cycle(fe_loop *loop, uint64_t cycle, int64_t deadline, uint8_t *record) {
    const int K = loop->n_ids;
    fe_bus *bus = loop->bus;
    int64_t wake = fe_now_ns();

    /* 1. goals for this deadline */
    int64_t chunk_id;
    uint8_t goal_bytes[2 * FE_MAX_SERVOS];
    int held = plan_goals(loop, deadline, &chunk_id, goal_bytes);
    uint8_t write_packet[FE_MAX_PACKET];
    int n_write = fe_encode_sync_write(write_packet, loop->write_addr, 2, loop->ids, (size_t)K, goal_bytes);

    /* 2. one write (SYNC_WRITE goals + SYNC_READ present), replies until 0.9 period at most */
    cycle_io io = {.fault = 0, .fault_id = -1};
    int64_t io_deadline = wake + fe_bus_wire_ns(bus, (size_t)n_write + 8 + (size_t)K * 9) + bus->timeout_ns;
    int64_t cycle_limit = deadline + loop->period_ns * 9 / 10;
    if (io_deadline > cycle_limit) io_deadline = cycle_limit;
    pthread_mutex_lock(&bus->lock);
    int rc = fe_bus_sync_read_once(bus, write_packet, (size_t)n_write, loop->ids, (size_t)K, loop->read_addr, 2,
                                   io.data, io.valid, io.errors, io_deadline);
    pthread_mutex_unlock(&bus->lock);
    int64_t bus_done = fe_now_ns();
    if (rc < 0) {
        char reason[256];
        snprintf(reason, sizeof reason, "bus I/O error on %.150s: %.80s", bus->path, strerror(-rc));
        set_fault(loop, -1, reason);
        return 1;
    }

    /* 3. the record of this cycle */
    judge_replies(loop, &io, held, record);
    int64_t header[6] = {(int64_t)cycle, deadline, wake, bus_done, wake - deadline, chunk_id};
    memcpy(record, header, sizeof header);
    push_record(loop, record);

    /* 4. status snapshot. Try-lock: status() holds the lock while Python copies it out, and the servo
     * thread must not wait on a Python thread; a skipped snapshot is refreshed next cycle. A fault must
     * be seen, though, and this is the thread's last cycle: then it waits. */
    int locked = io.fault ? pthread_mutex_lock(&loop->status_lock) == 0
                          : pthread_mutex_trylock(&loop->status_lock) == 0;
    if (locked) {
        publish_status(loop, &io, cycle, chunk_id, held);
        pthread_mutex_unlock(&loop->status_lock);
    }
    return io.fault;
}

static void *loop_main(void *arg) {
    fe_loop *loop = arg;
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); /* default 50 us slack would dominate the wake-up error */
    uint8_t *record = calloc(1, loop->record_size);
    int64_t deadline = fe_now_ns() + loop->period_ns;
    uint64_t overruns = 0;
    for (uint64_t cycle = 0; record && sleep_until(loop, deadline); cycle++) {
        if (run_cycle(loop, cycle, deadline, record)) break;
        deadline += loop->period_ns;
        int64_t now = fe_now_ns();
        /* Late by more than a period: skip the lost cycles instead of bursting to catch up. */
        while (deadline + loop->period_ns <= now) {
            deadline += loop->period_ns;
            overruns++;
        }
        if (overruns != loop->st_overruns && pthread_mutex_trylock(&loop->status_lock) == 0) {
            loop->st_overruns = overruns;
            pthread_mutex_unlock(&loop->status_lock);
        }
    }
    free(record);
    fe_bus_release(loop->bus);
    atomic_store(&loop->running, 0); /* last: a joiner may then hold life_lock, we never take it again */
    return NULL;
}

/* ---- start: the starting pose ---------------------------------------------------------------- */

typedef struct {
    int32_t first[FE_MAX_SERVOS], last[FE_MAX_SERVOS];
    int agreeing[FE_MAX_SERVOS]; /* readings in a row within FE_START_AGREE of `first` (a miss is no reading) */
    int answered[FE_MAX_SERVOS]; /* ever gave a usable reading */
    int disagree_id;             /* last id whose reading broke its run, -1 none */
} start_reads;

/* Adds one SYNC_READ; returns 1 once every id has FE_START_READS agreeing readings. */
static int add_start_read(fe_loop *loop, start_reads *r, const uint8_t *data, const uint8_t *valid,
                          const int *errors) {
    int done = 1;
    for (int k = 0; k < loop->n_ids; k++) {
        int usable = valid[k] && !(errors[k] & FE_ERR_ANGLE); /* sensor fault: the position is not a reading */
        if (usable) {
            r->answered[k] = 1;
            r->last[k] = fe_decode_sign_magnitude((uint32_t)data[2 * k] | ((uint32_t)data[2 * k + 1] << 8), 15);
            int32_t d = r->last[k] - r->first[k];
            if (r->agreeing[k] && (d > FE_START_AGREE || d < -FE_START_AGREE)) {
                r->agreeing[k] = 0;
                r->disagree_id = loop->ids[k];
            }
            if (!r->agreeing[k]) r->first[k] = r->last[k];
            r->agreeing[k]++;
        }
        done &= r->agreeing[k] >= FE_START_READS;
    }
    return done;
}

static int silent_index(const fe_loop *loop, const start_reads *r) {
    for (int k = 0; k < loop->n_ids; k++)
        if (!r->answered[k]) return k;
    return -1;
}

static int start_error(fe_loop *loop, const start_reads *r, char *err, size_t err_size) {
    int k = silent_index(loop, r);
    if (k >= 0) {
        snprintf(err, err_size, "no usable status packet from id %d on %s (SYNC_READ addr %d len 2) at start",
                 loop->ids[k], loop->bus->path, loop->read_addr);
        return FE_ETIMEOUT;
    }
    char who[48] = "";
    if (r->disagree_id >= 0) snprintf(who, sizeof who, " (id %d disagreed)", r->disagree_id);
    snprintf(err, err_size,
             "the position reads on %s at start never gave %d readings in a row per servo agreeing within %d "
             "ticks%s: refusing to start on an unverified pose",
             loop->bus->path, FE_START_READS, FE_START_AGREE, who);
    return -EPROTO;
}

/* Holds the agreed pose, moved into [lower, upper]. A servo outside its limits by up to max_step starts at
 * the limit (a step like any other); further out, we refuse: a goal outside the limits is never written,
 * and the limit itself would be a jump. Someone has to bring the joint back in with torque off. */
static int set_start_pose(fe_loop *loop, const int32_t *pose, char *err, size_t err_size) {
    for (int k = 0; k < loop->n_ids; k++) {
        int32_t goal = clamp32(pose[k], loop->lower[k], loop->upper[k]);
        if (goal - pose[k] > loop->max_step[k] || pose[k] - goal > loop->max_step[k]) {
            snprintf(err, err_size,
                     "servo %d on %s is at %d, outside its limits [%d, %d] by more than max_step %d: refusing to "
                     "start (move it inside with torque off, or recalibrate)",
                     loop->ids[k], loop->bus->path, pose[k], loop->lower[k], loop->upper[k], loop->max_step[k]);
            return -ERANGE;
        }
    }
    pthread_mutex_lock(&loop->status_lock);
    for (int k = 0; k < loop->n_ids; k++) {
        loop->goal[k] = loop->st_goal[k] = clamp32(pose[k], loop->lower[k], loop->upper[k]);
        loop->present[k] = loop->st_present[k] = pose[k];
        loop->missed[k] = loop->st_missed[k] = 0; /* every servo has just answered */
    }
    pthread_mutex_unlock(&loop->status_lock);
    return 0;
}

static int read_start_pose(fe_loop *loop, char *err, size_t err_size) {
    fe_bus *bus = loop->bus;
    const int K = loop->n_ids;
    start_reads r = {.disagree_id = -1};
    int budget = FE_START_READS * (bus->retries + 1), done = 0;
    for (int i = 0; i < budget && !done; i++) {
        if (atomic_load(&loop->cancel_start)) return 0; /* fe_loop_start reports it */
        uint8_t data[2 * FE_MAX_SERVOS], valid[FE_MAX_SERVOS];
        int errors[FE_MAX_SERVOS];
        int64_t deadline = fe_now_ns() + fe_bus_wire_ns(bus, 8 + (size_t)K * 9) + bus->timeout_ns;
        pthread_mutex_lock(&bus->lock);
        int rc = fe_bus_sync_read_once(bus, NULL, 0, loop->ids, (size_t)K, loop->read_addr, 2, data, valid, errors,
                                       deadline);
        pthread_mutex_unlock(&bus->lock);
        if (rc < 0) {
            snprintf(err, err_size, "initial position read on %s failed: %s", bus->path, strerror(-rc));
            return rc;
        }
        done = add_start_read(loop, &r, data, valid, errors);
        if (i == bus->retries && silent_index(loop, &r) >= 0) break; /* as long as one request's retries */
    }
    if (!done) return start_error(loop, &r, err, err_size);
    return set_start_pose(loop, r.last, err, err_size);
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

static int spawn_thread(fe_loop *loop, char *err, size_t err_size) {
    atomic_store(&loop->stop_request, 0);
    atomic_store(&loop->running, 1);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    int rc = EPERM;
    if (loop->rt_priority > 0) {
        struct sched_param param = {.sched_priority = loop->rt_priority};
        pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
        pthread_attr_setschedpolicy(&attr, SCHED_FIFO);
        pthread_attr_setschedparam(&attr, &param);
        rc = pthread_create(&loop->thread, &attr, loop_main, loop);
        if (rc == 0) snprintf(loop->sched, sizeof loop->sched, "SCHED_FIFO priority %d", loop->rt_priority);
    }
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        int fifo_error = rc;
        rc = pthread_create(&loop->thread, NULL, loop_main, loop);
        if (rc == 0) {
            snprintf(loop->sched, sizeof loop->sched, "SCHED_OTHER (SCHED_FIFO %s: %s)",
                     loop->rt_priority > 0 ? "refused" : "not requested", strerror(fifo_error));
        }
    }
    if (rc != 0) {
        atomic_store(&loop->running, 0);
        snprintf(err, err_size, "pthread_create: %s", strerror(rc));
        return -rc;
    }
    pthread_setname_np(loop->thread, "rynn-servo");
    return 0;
}

/* IDLE -> STARTING under life_lock, reaping a thread that ended on a fault. 0 or -EBUSY. */
static int claim_start(fe_loop *loop, char *err, size_t err_size) {
    while (loop->life == FE_STOPPING) pthread_cond_wait(&loop->life_changed, &loop->life_lock);
    if (loop->life == FE_STARTING || (loop->life == FE_RUNNING && atomic_load(&loop->running))) {
        snprintf(err, err_size, "control loop already %s: stop() it first",
                 loop->life == FE_STARTING ? "starting (start() in another thread)" : "running");
        return -EBUSY;
    }
    if (loop->life == FE_RUNNING) pthread_join(loop->thread, NULL); /* it has stopped itself: see loop_main */
    loop->life = FE_STARTING;
    atomic_store(&loop->cancel_start, 0);
    return 0;
}

int fe_loop_start(fe_loop *loop, char *err, size_t err_size) {
    pthread_mutex_lock(&loop->life_lock);
    int rc = claim_start(loop, err, err_size);
    pthread_mutex_unlock(&loop->life_lock);
    if (rc != 0) return rc;
    int acquired = fe_bus_acquire(loop->bus) == 0; /* from here, the bus refuses to close */
    if (!acquired) {
        snprintf(err, err_size, "bus %s is closed", loop->bus->path);
        rc = -EBADF;
    }
    if (rc == 0) rc = read_start_pose(loop, err, err_size);
    pthread_mutex_lock(&loop->life_lock);
    if (rc == 0 && atomic_load(&loop->cancel_start)) {
        snprintf(err, err_size, "stop() was called during start(): the control loop stays stopped");
        rc = -ECANCELED;
    }
    if (rc == 0) rc = spawn_thread(loop, err, err_size); /* the thread releases the bus when it ends */
    loop->life = rc == 0 ? FE_RUNNING : FE_IDLE;
    pthread_cond_broadcast(&loop->life_changed);
    pthread_mutex_unlock(&loop->life_lock);
    if (rc != 0 && acquired) fe_bus_release(loop->bus);
    return rc;
}

void fe_loop_stop(fe_loop *loop) {
    pthread_mutex_lock(&loop->life_lock);
    while (loop->life == FE_STARTING || loop->life == FE_STOPPING) {
        if (loop->life == FE_STARTING) atomic_store(&loop->cancel_start, 1); /* stop during start wins */
        pthread_cond_wait(&loop->life_changed, &loop->life_lock);
    }
    if (loop->life == FE_RUNNING) {
        loop->life = FE_STOPPING;
        atomic_store(&loop->stop_request, 1);
        pthread_cond_signal(&loop->wake);
        pthread_mutex_unlock(&loop->life_lock);
        pthread_join(loop->thread, NULL);
        pthread_mutex_lock(&loop->life_lock);
        loop->life = FE_IDLE;
        pthread_cond_broadcast(&loop->life_changed);
    }
    pthread_mutex_unlock(&loop->life_lock);
}
