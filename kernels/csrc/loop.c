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
}

int fe_chunk_goal_at(const fe_chunk *chunk, int n_ids, double action_rate_hz, int64_t t_ns, int32_t *goal) {
    if (chunk->n_rows <= 0) return 0;
    double s = (double)(t_ns - chunk->t0_ns) * 1e-9 * action_rate_hz;
    /* Row k is the goal at t0 + k/rate and lasts one action period; never extrapolate. */
    if (s < 0.0 || s >= (double)chunk->n_rows) return 0;
    int row = (int)s;
    const int32_t *a = chunk->goals + (size_t)row * n_ids;
    if (row >= chunk->n_rows - 1) {
        memcpy(goal, a, sizeof(int32_t) * (size_t)n_ids);
        return 1;
    }
    const int32_t *b = a + n_ids;
    double frac = s - row;
    for (int k = 0; k < n_ids; k++) goal[k] = (int32_t)lrint(a[k] + frac * (double)(b[k] - a[k]));
    return 1;
}

int fe_loop_submit(fe_loop *loop, int64_t t0_ns, const int32_t *rows, int n_rows, int64_t chunk_id) {
    fe_chunk *c = &loop->slots[loop->back];
    if (n_rows > c->capacity_rows) {
        int32_t *grown = realloc(c->goals, sizeof(int32_t) * (size_t)n_rows * (size_t)loop->n_ids);
        if (!grown) return -ENOMEM;
        c->goals = grown;
        c->capacity_rows = n_rows;
    }
    memcpy(c->goals, rows, sizeof(int32_t) * (size_t)n_rows * (size_t)loop->n_ids);
    c->n_rows = n_rows;
    c->t0_ns = t0_ns;
    c->chunk_id = chunk_id;
    /* Publish: our filled slot becomes `middle`; we get back whatever was there (never `front`). */
    loop->back = atomic_exchange(&loop->middle, loop->back | FE_FRESH) & 3;
    return 0;
}

void fe_loop_hold(fe_loop *loop) {
    atomic_fetch_and(&loop->middle, ~FE_FRESH); /* drop a chunk not yet picked up */
    atomic_store(&loop->hold_request, 1);
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
    uint64_t tail = atomic_load_explicit(&loop->ring_tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&loop->ring_head, memory_order_acquire);
    size_t n = 0;
    while (tail + n < head && n < max_records) {
        memcpy(out + n * loop->record_size, loop->ring + ((tail + n) % loop->ring_capacity) * loop->record_size,
               loop->record_size);
        n++;
    }
    atomic_store_explicit(&loop->ring_tail, tail + n, memory_order_release);
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

static void sleep_until(int64_t t_ns) {
    struct timespec ts = {.tv_sec = t_ns / 1000000000LL, .tv_nsec = t_ns % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* Returns 0 to continue, 1 on a fault (already recorded). */
static int run_cycle(fe_loop *loop, uint64_t cycle, int64_t deadline, uint8_t *record) {
    const int K = loop->n_ids;
    fe_bus *bus = loop->bus;
    int64_t wake = fe_now_ns();

    if (atomic_exchange(&loop->hold_request, 0)) loop->front_valid = 0;
    if (atomic_load(&loop->middle) & FE_FRESH) {
        loop->front = atomic_exchange(&loop->middle, loop->front) & 3;
        loop->front_valid = 1;
    }
    int32_t target[FE_MAX_SERVOS];
    const fe_chunk *chunk = &loop->slots[loop->front];
    int held = !(loop->front_valid && fe_chunk_goal_at(chunk, K, loop->action_rate_hz, deadline, target));
    int64_t chunk_id = loop->front_valid ? chunk->chunk_id : -1;
    uint8_t goal_bytes[2 * FE_MAX_SERVOS];
    for (int k = 0; k < K; k++) {
        int32_t want = held ? loop->goal[k] : target[k];
        if (want < loop->lower[k]) want = loop->lower[k];
        if (want > loop->upper[k]) want = loop->upper[k];
        int32_t step = want - loop->goal[k];
        if (step > loop->max_step[k]) want = loop->goal[k] + loop->max_step[k];
        if (step < -loop->max_step[k]) want = loop->goal[k] - loop->max_step[k];
        loop->goal[k] = want;
        uint16_t raw = fe_encode_sign_magnitude(want, 15);
        goal_bytes[2 * k] = (uint8_t)(raw & 0xFF);
        goal_bytes[2 * k + 1] = (uint8_t)(raw >> 8);
    }
    uint8_t write_packet[FE_MAX_PACKET];
    int n_write = fe_encode_sync_write(write_packet, loop->write_addr, 2, loop->ids, (size_t)K, goal_bytes);

    uint8_t data[2 * FE_MAX_SERVOS], valid[FE_MAX_SERVOS];
    int errors[FE_MAX_SERVOS];
    int64_t io_deadline = wake + fe_bus_wire_ns(bus, (size_t)n_write + 8 + (size_t)K * 9) + bus->timeout_ns;
    int64_t cycle_limit = deadline + loop->period_ns * 9 / 10;
    if (io_deadline > cycle_limit) io_deadline = cycle_limit;
    pthread_mutex_lock(&bus->lock);
    int rc = fe_bus_sync_read_once(bus, write_packet, (size_t)n_write, loop->ids, (size_t)K, loop->read_addr, 2,
                                   data, valid, errors, io_deadline);
    pthread_mutex_unlock(&bus->lock);
    int64_t bus_done = fe_now_ns();
    if (rc < 0) {
        char reason[256];
        snprintf(reason, sizeof reason, "bus I/O error on %.150s: %.80s", bus->path, strerror(-rc));
        set_fault(loop, -1, reason);
        return 1;
    }

    int fault = 0;
    char reason[256] = "";
    int fault_id = -1;
    int32_t *present = (int32_t *)(record + REC_HEADER);
    int32_t *goal_out = present + K;
    uint8_t *err_out = (uint8_t *)(goal_out + K);
    uint8_t *flags_out = err_out + K;
    for (int k = 0; k < K; k++) {
        if (valid[k]) {
            present[k] = fe_decode_sign_magnitude((uint32_t)data[2 * k] | ((uint32_t)data[2 * k + 1] << 8), 15);
            loop->missed[k] = 0;
            if (!fault && (errors[k] & loop->fault_mask)) {
                char names[96];
                snprintf(reason, sizeof reason, "servo %d reported error 0x%02x (%s)", loop->ids[k], errors[k],
                         error_names(errors[k], names, sizeof names));
                fault = 1;
                fault_id = loop->ids[k];
            }
        } else {
            present[k] = loop->present[k];
            loop->missed[k]++;
            if (!fault && loop->missed[k] > loop->max_missed_cycles) {
                snprintf(reason, sizeof reason, "servo %d missing from sync-read replies for %d consecutive cycles",
                         loop->ids[k], loop->missed[k]);
                fault = 1;
                fault_id = loop->ids[k];
            }
        }
        goal_out[k] = loop->goal[k];
        err_out[k] = valid[k] ? (uint8_t)errors[k] : 0;
        flags_out[k] = (uint8_t)((valid[k] ? FE_REC_VALID : 0) | (held ? FE_REC_HELD : 0));
    }
    int64_t header[6] = {(int64_t)cycle, deadline, wake, bus_done, wake - deadline, chunk_id};
    memcpy(record, header, sizeof header);
    push_record(loop, record);

    int locked = fault ? pthread_mutex_lock(&loop->status_lock) == 0
                       : pthread_mutex_trylock(&loop->status_lock) == 0;
    for (int k = 0; k < K; k++) {
        if (valid[k]) loop->present[k] = present[k];
        if (!valid[k]) loop->missed_total[k]++;
        if (valid[k] && errors[k]) loop->error_count[k]++;
    }
    if (locked) {
        loop->st_cycles = cycle + 1;
        for (int k = 0; k < K; k++) {
            loop->st_goal[k] = loop->goal[k];
            loop->st_present[k] = loop->present[k];
            loop->st_valid[k] = valid[k];
            loop->st_error[k] = errors[k];
            loop->st_missed[k] = loop->missed[k];
            loop->st_missed_total[k] = loop->missed_total[k];
            loop->st_error_count[k] = loop->error_count[k];
        }
        loop->st_chunk_id = chunk_id;
        loop->st_holding = held;
        if (fault) {
            snprintf(loop->fault, sizeof loop->fault, "%s", reason);
            loop->fault_id = fault_id;
        }
        pthread_mutex_unlock(&loop->status_lock);
    }
    return fault;
}

static void *loop_main(void *arg) {
    fe_loop *loop = arg;
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); /* default 50 us slack would dominate the wake-up error */
    uint8_t *record = calloc(1, loop->record_size);
    int64_t deadline = fe_now_ns() + loop->period_ns;
    uint64_t overruns = 0;
    for (uint64_t cycle = 0; record && !atomic_load(&loop->stop_request); cycle++) {
        sleep_until(deadline);
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
    atomic_fetch_sub(&loop->bus->loops, 1);
    atomic_store(&loop->running, 0);
    return NULL;
}

int fe_loop_start(fe_loop *loop, char *err, size_t err_size) {
    if (atomic_load(&loop->running) || loop->thread_started) {
        snprintf(err, err_size, "control loop already started");
        return -EBUSY;
    }
    fe_bus *bus = loop->bus;
    const int K = loop->n_ids;
    uint8_t data[2 * FE_MAX_SERVOS], valid[FE_MAX_SERVOS];
    int errors[FE_MAX_SERVOS];
    int have[FE_MAX_SERVOS] = {0};
    int rc = 0;
    for (int attempt = 0; attempt <= bus->retries; attempt++) {
        int64_t deadline = fe_now_ns() + fe_bus_wire_ns(bus, 8 + (size_t)K * 9) + bus->timeout_ns;
        pthread_mutex_lock(&bus->lock);
        rc = fe_bus_sync_read_once(bus, NULL, 0, loop->ids, (size_t)K, loop->read_addr, 2, data, valid, errors,
                                   deadline);
        pthread_mutex_unlock(&bus->lock);
        if (rc < 0) {
            snprintf(err, err_size, "initial position read on %s failed: %s", bus->path, strerror(-rc));
            return rc;
        }
        int all = 1;
        for (int k = 0; k < K; k++) {
            if (valid[k] && !have[k]) {
                loop->goal[k] = fe_decode_sign_magnitude((uint32_t)data[2 * k] | ((uint32_t)data[2 * k + 1] << 8), 15);
                loop->present[k] = loop->goal[k];
                loop->st_present[k] = loop->goal[k];
                loop->st_goal[k] = loop->goal[k];
                have[k] = 1;
            }
            all &= have[k];
        }
        if (all) break;
        if (attempt == bus->retries) {
            for (int k = 0; k < K; k++) {
                if (!have[k]) {
                    snprintf(err, err_size, "no status packet from id %d on %s (SYNC_READ addr %d len 2) at start",
                             loop->ids[k], bus->path, loop->read_addr);
                    return FE_ETIMEOUT;
                }
            }
        }
    }

    atomic_store(&loop->stop_request, 0);
    atomic_store(&loop->running, 1);
    atomic_fetch_add(&bus->loops, 1);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    rc = EPERM;
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
        atomic_fetch_sub(&bus->loops, 1);
        snprintf(err, err_size, "pthread_create: %s", strerror(rc));
        return -rc;
    }
    pthread_setname_np(loop->thread, "rynn-servo");
    loop->thread_started = 1;
    return 0;
}

void fe_loop_stop(fe_loop *loop) {
    if (!loop->thread_started) return;
    atomic_store(&loop->stop_request, 1);
    pthread_join(loop->thread, NULL);
    loop->thread_started = 0;
}
