/* CPython bindings: rynn_edge.kernels._native. The API is documented in MODULE_DOC; keep it stable. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <string.h>

#include "feetech.h"

static const char MODULE_DOC[] =
    "Feetech STS/SCS protocol, serial bus I/O and the real-time servo loop, in C.\n"
    "\n"
    "Pure functions (bytes in, bytes out; identical to the official scservo_sdk packets):\n"
    "  encode_packet(id, instruction, params: bytes) -> bytes\n"
    "  encode_sync_write(addr, length, {id: bytes}) -> bytes      (ids in dict order)\n"
    "  encode_sync_read(addr, length, ids) -> bytes\n"
    "  encode_sign_magnitude(value, sign_bit) -> int ; decode_sign_magnitude(raw, sign_bit) -> int\n"
    "  checksum(bytes) -> int  (~sum & 0xFF over id..last param)\n"
    "  parse_status_stream(bytes) -> (list[(id, error, data)], bad_checksums, garbage_bytes)\n"
    "\n"
    "Bus(port, baud=1_000_000, timeout_ms=5.0, retries=2)   raw termios port, GIL released during I/O.\n"
    "  timeout_ms (0, 60000] is the slack allowed on top of the wire time of each exchange; baud\n"
    "  1200..4000000; retries 0..100. A reply is only taken from the addressed id(s), with the length\n"
    "  the request implies, STS error bits only (0x2F) and a good checksum; an exact copy of the request\n"
    "  is an adapter echo wherever it appears and is dropped; once the adapter has echoed, so is a copy\n"
    "  of any PING or ACTION ever sent, however late. Every method is safe from any thread.\n"
    "  ping(id) -> (model_number, error)            PING + READ(3, 2), like the SDK\n"
    "  read(id, addr, length) -> (bytes, error)\n"
    "  write(id, addr, data) -> error               (broadcast id 254: no reply, returns 0)\n"
    "  reg_write(id, addr, data) -> error ; action(id=254) -> None\n"
    "  sync_read(ids, addr, length) -> list[(bytes | None, error)]  per id, in ids order;\n"
    "      error = servo ERR byte (0..127), or -1 no reply, -2 only corrupted replies (data None).\n"
    "      Missing ids are re-asked up to `retries` times; the others are still returned.\n"
    "  sync_write(ids, addr, data_per_id: list[bytes]) -> None   (no reply)\n"
    "  sync_write_read(ids, write_addr, data_per_id, read_addr, read_length) -> like sync_read,\n"
    "      both packets in ONE write(), no retries (what the control loop does every cycle)\n"
    "  torque_off(ids) -> None   SYNC_WRITE Torque_Enable(40)=0, sent twice\n"
    "  stats() -> {'per_id': {id: {requests, timeouts, checksum_errors, retries, errors_reported}},\n"
    "              'garbage_bytes', 'bad_checksum_other', 'echo_seen' (the adapter echoes: a copy of a\n"
    "              request no reply can equal, a SYNC_READ, came back, and one of every request since)}\n"
    "  close() (idempotent; RuntimeError while a ControlLoop is starting or running on the bus);\n"
    "  context manager; attributes port, baud, timeout_ms, retries, closed\n"
    "  Raises BusTimeoutError (TimeoutError) / BusError (OSError); messages name port, id, instruction, addr.\n"
    "\n"
    "ControlLoop(bus, ids, loop_rate_hz, action_rate_hz, lower, upper, max_step, read_addr=56,\n"
    "            write_addr=42, max_missed_cycles=3, fault_mask=0x2D, rt_priority=80,\n"
    "            record_capacity=32768)\n"
    "  loop_rate_hz [1, 10000], action_rate_hz (0, 10000], max_step 1..32767; ValueError otherwise.\n"
    "  Own pthread (SCHED_FIFO at rt_priority if permitted, else normal; see status()['sched']).\n"
    "  Each cycle at an absolute CLOCK_MONOTONIC deadline: SYNC_WRITE goals + SYNC_READ present\n"
    "  positions in one write(). Goals are raw ticks (sign-magnitude bit 15 on the wire).\n"
    "  submit_chunk(t0_ns, goals, chunk_id)  goals: N rows x len(ids) ints; row k is the goal at\n"
    "      t0_ns + k / action_rate_hz (CLOCK_MONOTONIC ns, = time.monotonic_ns(), 0..2**62). Swapped in\n"
    "      lock-free at the next cycle. The loop interpolates linearly between rows; the goal it writes\n"
    "      never leaves [lower, upper], moves at most max_step ticks per cycle from the previous goal,\n"
    "      and runs at most 8 * max_step ahead of the measured position. Outside\n"
    "      [t0, t0 + N/action_rate) it HOLDS the last goal (never extrapolates); before any chunk it\n"
    "      holds the position read at start().\n"
    "  start(): the starting pose is 3 consecutive complete SYNC_READs agreeing within 16 ticks (else\n"
    "      BusTimeoutError if an id never answers, BusError otherwise); a servo outside [lower, upper]\n"
    "      by more than max_step refuses to start (BusError). RuntimeError if already starting/running.\n"
    "  stop() (joins; idempotent; a stop() during start() wins: start() raises BusError ECANCELED)\n"
    "  hold() (drop the current/pending chunk, hold last goal). All of them are safe from any thread.\n"
    "  status() -> dict: running, cycles, overruns, present, goal, active_chunk_id, holding,\n"
    "      valid, errors (last ERR byte or -1/-2), missed (consecutive), missed_total, error_count,\n"
    "      fault_reason (str | None), fault_id (int | None), sched, records_dropped, period_ns\n"
    "  drain_records(max_records=None) -> bytes  packed records; numpy: np.frombuffer(b, np.dtype(\n"
    "      loop.record_dtype)). Fields: cycle u8, deadline_ns, wake_ns, bus_done_ns, period_error_ns,\n"
    "      chunk_id (i8; -1 none), present[K] i4, goal[K] i4, error[K] u1, flags[K] u1\n"
    "      (RECORD_VALID=1 reply received, RECORD_HELD=2 no chunk covered this cycle)\n"
    "  Stops itself (never turning torque off) with fault_reason and fault_id when a servo is missing\n"
    "  from the replies for more than max_missed_cycles consecutive cycles or reports an ERR bit in\n"
    "  fault_mask (default voltage|overheat|overcurrent|overload).\n";

static PyObject *BusError;
static PyObject *BusTimeoutError;

/* ---------------------------------------------------------------------------------------- */
/* argument helpers */

static int get_id(PyObject *obj, uint8_t *out, int allow_broadcast) {
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || v > (allow_broadcast ? FE_BROADCAST_ID : FE_MAX_ID)) {
        PyErr_Format(PyExc_ValueError, "servo id %ld out of range 0..%d", v,
                     allow_broadcast ? FE_BROADCAST_ID : FE_MAX_ID);
        return -1;
    }
    *out = (uint8_t)v;
    return 0;
}

static int get_byte_arg(long v, const char *what, uint8_t *out) {
    if (v < 0 || v > 255) {
        PyErr_Format(PyExc_ValueError, "%s %ld out of range 0..255", what, v);
        return -1;
    }
    *out = (uint8_t)v;
    return 0;
}

/* A tuple copy of any iterable. Its items stay alive whatever Python code (an __index__, a __buffer__) then
 * does to `obj`: a list being parsed may be cleared under our feet, a borrowed item would dangle. */
static PyObject *tuple_of(PyObject *obj, const char *what) {
    PyObject *t = PySequence_Tuple(obj);
    if (!t && PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a sequence, not %.80s", what, Py_TYPE(obj)->tp_name);
    }
    return t;
}

/* ids: any iterable of ints -> array. Returns count or -1. */
static Py_ssize_t get_ids(PyObject *seq, uint8_t *ids, Py_ssize_t max) {
    PyObject *items = tuple_of(seq, "ids");
    if (!items) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    Py_ssize_t rc = n;
    if (n == 0 || n > max) {
        PyErr_Format(PyExc_ValueError, "need 1..%zd ids, got %zd", max, n);
        rc = -1;
    }
    for (Py_ssize_t i = 0; rc >= 0 && i < n; i++) {
        if (get_id(PyTuple_GET_ITEM(items, i), &ids[i], 0) < 0) rc = -1;
        for (Py_ssize_t j = 0; rc >= 0 && j < i; j++) {
            if (ids[j] == ids[i]) {
                PyErr_Format(PyExc_ValueError, "duplicate servo id %d", ids[i]);
                rc = -1;
            }
        }
    }
    Py_DECREF(items);
    return rc;
}

/* One bytes-like of exactly *length bytes (-1: take its length) into out[0..cap). */
static int get_bytes(PyObject *obj, Py_ssize_t i, int *length, uint8_t *out, size_t cap) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return -1;
    if (*length < 0) *length = view.len < FE_MAX_PACKET ? (int)view.len : FE_MAX_PACKET;
    int ok = view.len == *length && (size_t)view.len <= cap;
    if (ok) memcpy(out, view.buf, (size_t)view.len);
    else if (view.len == *length) PyErr_Format(PyExc_ValueError, "data for entry %zd: more than a packet holds", i);
    else PyErr_Format(PyExc_ValueError, "data for entry %zd has %zd bytes, expected %d", i, view.len, *length);
    PyBuffer_Release(&view);
    return ok ? 0 : -1;
}

/* data_per_id: sequence of n bytes-likes, each `length` long -> out (n*length). length=-1: take from first. */
static int get_rows(PyObject *seq, Py_ssize_t n, int *length, uint8_t *out, size_t cap) {
    PyObject *items = tuple_of(seq, "data_per_id");
    if (!items) return -1;
    int rc = 0;
    if (PyTuple_GET_SIZE(items) != n) {
        PyErr_Format(PyExc_ValueError, "got %zd data entries for %zd ids", PyTuple_GET_SIZE(items), n);
        rc = -1;
    }
    size_t used = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        rc = get_bytes(PyTuple_GET_ITEM(items, i), i, length, out + used, cap - used);
        if (rc == 0) used += (size_t)*length;
    }
    Py_DECREF(items);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* pure functions */

static PyObject *py_encode_packet(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *id_obj;
    long instruction;
    Py_buffer params;
    if (!PyArg_ParseTuple(args, "Oly*", &id_obj, &instruction, &params)) return NULL;
    uint8_t id, instr, out[FE_MAX_PACKET];
    int n = -1;
    if (get_id(id_obj, &id, 1) == 0 && get_byte_arg(instruction, "instruction", &instr) == 0) {
        n = fe_encode_packet(out, id, instr, params.buf, (size_t)params.len);
        if (n < 0) PyErr_Format(PyExc_ValueError, "packet would exceed %d bytes", FE_MAX_PACKET);
    }
    PyBuffer_Release(&params);
    return n < 0 ? NULL : PyBytes_FromStringAndSize((const char *)out, n);
}

static PyObject *py_encode_sync_write(PyObject *self, PyObject *args) {
    (void)self;
    long addr, length;
    PyObject *mapping;
    if (!PyArg_ParseTuple(args, "llO!", &addr, &length, &PyDict_Type, &mapping)) return NULL;
    uint8_t a, l, ids[FE_MAX_PACKET], data[FE_MAX_PACKET], out[FE_MAX_PACKET];
    if (get_byte_arg(addr, "addr", &a) < 0 || get_byte_arg(length, "length", &l) < 0) return NULL;
    PyObject *items = PyDict_Items(mapping); /* a private copy: keys' __index__ may change the dict */
    if (!items) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items);
    int len = l, rc = 0;
    if (n > FE_MAX_PACKET / (1 + (l ? l : 1))) {
        PyErr_SetString(PyExc_ValueError, "too many ids for one packet");
        rc = -1;
    }
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        rc = get_id(PyTuple_GET_ITEM(pair, 0), &ids[i], 0);
        if (rc == 0)
            rc = get_bytes(PyTuple_GET_ITEM(pair, 1), i, &len, data + (size_t)i * l, sizeof data - (size_t)i * l);
    }
    Py_DECREF(items);
    if (rc < 0) return NULL;
    int size = fe_encode_sync_write(out, a, l, ids, (size_t)n, data);
    if (size < 0) return PyErr_Format(PyExc_ValueError, "packet would exceed %d bytes", FE_MAX_PACKET);
    return PyBytes_FromStringAndSize((const char *)out, size);
}

static PyObject *py_encode_sync_read(PyObject *self, PyObject *args) {
    (void)self;
    long addr, length;
    PyObject *ids_obj;
    if (!PyArg_ParseTuple(args, "llO", &addr, &length, &ids_obj)) return NULL;
    uint8_t a, l, ids[FE_MAX_PACKET], out[FE_MAX_PACKET];
    if (get_byte_arg(addr, "addr", &a) < 0 || get_byte_arg(length, "length", &l) < 0) return NULL;
    Py_ssize_t n = get_ids(ids_obj, ids, FE_MAX_PACKET - 8);
    if (n < 0) return NULL;
    int size = fe_encode_sync_read(out, a, l, ids, (size_t)n);
    return PyBytes_FromStringAndSize((const char *)out, size);
}

static PyObject *py_encode_sign_magnitude(PyObject *self, PyObject *args) {
    (void)self;
    long value;
    int bit;
    if (!PyArg_ParseTuple(args, "li", &value, &bit)) return NULL;
    if (bit < 1 || bit > 15) return PyErr_Format(PyExc_ValueError, "sign_bit %d out of range 1..15", bit);
    long max = (1L << bit) - 1;
    if (value > max || value < -max)
        return PyErr_Format(PyExc_ValueError, "magnitude of %ld exceeds %ld (max for sign_bit=%d)", value, max, bit);
    return PyLong_FromLong(fe_encode_sign_magnitude((int32_t)value, bit));
}

static PyObject *py_decode_sign_magnitude(PyObject *self, PyObject *args) {
    (void)self;
    long raw;
    int bit;
    if (!PyArg_ParseTuple(args, "li", &raw, &bit)) return NULL;
    if (bit < 1 || bit > 15) return PyErr_Format(PyExc_ValueError, "sign_bit %d out of range 1..15", bit);
    if (raw < 0 || raw > 0xFFFF) return PyErr_Format(PyExc_ValueError, "raw value %ld is not 16-bit", raw);
    return PyLong_FromLong(fe_decode_sign_magnitude((uint32_t)raw, bit));
}

static PyObject *py_checksum(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint8_t c = fe_checksum(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLong(c);
}

static PyObject *py_parse_status_stream(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *packets = PyList_New(0);
    const uint8_t *buf = view.buf;
    size_t n = (size_t)view.len, at = 0;
    long bad = 0, garbage = 0;
    while (packets && at < n) {
        fe_status st;
        size_t consumed = 0;
        uint8_t bad_id;
        int p = fe_parse_status(buf + at, n - at, 0, &st, &consumed, &bad_id);
        if (p == FE_PARSE_PACKET) {
            PyObject *item = Py_BuildValue("(iiy#)", st.id, st.error, (const char *)st.data, (Py_ssize_t)st.n_data);
            if (!item || PyList_Append(packets, item) < 0) Py_CLEAR(packets);
            Py_XDECREF(item);
        } else if (p == FE_PARSE_BAD_CHECKSUM) {
            bad++;
        } else {
            /* An unfinished packet: nothing more will come, so it never will be one. Resync past its start. */
            if (at + consumed < n) consumed++;
            garbage += (long)consumed;
        }
        at += consumed;
    }
    PyBuffer_Release(&view);
    if (!packets) return NULL;
    return Py_BuildValue("(Nll)", packets, bad, garbage);
}

/* ---------------------------------------------------------------------------------------- */
/* Bus */

typedef struct {
    PyObject_HEAD fe_bus bus;
    int initialized; /* fe_bus_open ran: the lock exists until dealloc */
    int is_open;
} BusObject;

static const char *instruction_name(uint8_t instr) {
    switch (instr) {
    case FE_PING: return "PING";
    case FE_READ: return "READ";
    case FE_WRITE: return "WRITE";
    case FE_REG_WRITE: return "REG_WRITE";
    case FE_ACTION: return "ACTION";
    case FE_SYNC_READ: return "SYNC_READ";
    case FE_SYNC_WRITE: return "SYNC_WRITE";
    default: return "instruction";
    }
}

static PyObject *raise_bus(BusObject *self, int rc, int id, uint8_t instr, int addr) {
    const char *port = self->bus.path;
    const char *name = instruction_name(instr);
    int attempts = self->bus.retries + 1;
    char where[96];
    if (addr >= 0) snprintf(where, sizeof where, "%s addr %d", name, addr);
    else snprintf(where, sizeof where, "%s", name);
    if (rc == FE_ETIMEOUT || rc == FE_EECHO) {
        char timeout[32];
        snprintf(timeout, sizeof timeout, "%.1f", (double)self->bus.timeout_ns / 1e6);
        PyErr_Format(BusTimeoutError, "no status packet from id %d (%s) on %s after %d attempt(s), timeout %s ms%s",
                     id, where, port, attempts, timeout,
                     rc == FE_EECHO ? "; only a copy of the request came back (the adapter's echo)" : "");
    } else if (rc == FE_ECHECKSUM) {
        PyErr_Format(BusError, "only corrupted status packets (bad checksum) from id %d (%s) on %s after %d attempt(s)",
                     id, where, port, attempts);
    } else {
        PyObject *exc_args = Py_BuildValue("(iN)", -rc,
                                           PyUnicode_FromFormat("%s (id %d, %s) on %s", strerror(-rc), id, where, port));
        if (exc_args) PyErr_SetObject(BusError, exc_args);
        Py_XDECREF(exc_args);
    }
    return NULL;
}

static int check_open(BusObject *self) {
    if (!self->is_open) {
        PyErr_Format(PyExc_ValueError, "bus %s is closed", self->bus.path);
        return -1;
    }
    return 0;
}

/* A float argument that must be finite and in [lo, hi] (or (lo, hi] with open_low). */
static int check_float(double v, const char *name, double lo, double hi, int open_low) {
    if (isfinite(v) && (open_low ? v > lo : v >= lo) && v <= hi) return 0;
    char range[64], got[32];
    snprintf(range, sizeof range, "%c%g, %g]", open_low ? '(' : '[', lo, hi);
    snprintf(got, sizeof got, "%g", v);
    PyErr_Format(PyExc_ValueError, "%s must be a finite number in %s, got %s", name, range, got);
    return -1;
}

static int check_int(long v, const char *name, long lo, long hi) {
    if (v >= lo && v <= hi) return 0;
    PyErr_Format(PyExc_ValueError, "%s must be in %ld..%ld, got %ld", name, lo, hi, v);
    return -1;
}

static int Bus_init(BusObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"port", "baud", "timeout_ms", "retries", NULL};
    const char *port;
    int baud = 1000000, retries = 2;
    double timeout_ms = 5.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|idi", kwlist, &port, &baud, &timeout_ms, &retries)) return -1;
    if (self->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "Bus already initialised");
        return -1;
    }
    if (check_int(baud, "baud", 1200, 4000000) < 0 || check_float(timeout_ms, "timeout_ms", 0.0, 60000.0, 1) < 0 ||
        check_int(retries, "retries", 0, 100) < 0)
        return -1;
    char err[320];
    int rc;
    self->initialized = 1;
    Py_BEGIN_ALLOW_THREADS rc = fe_bus_open(&self->bus, port, baud, timeout_ms, retries, err, sizeof err);
    Py_END_ALLOW_THREADS if (rc < 0) {
        PyObject *exc_args = Py_BuildValue("(is)", -rc, err);
        if (exc_args) PyErr_SetObject(BusError, exc_args);
        Py_XDECREF(exc_args);
        return -1;
    }
    self->is_open = 1;
    return 0;
}

static PyObject *Bus_close(BusObject *self, PyObject *unused) {
    (void)unused;
    if (!self->is_open) Py_RETURN_NONE;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = fe_bus_close(&self->bus); /* waits for a transaction in flight */
    Py_END_ALLOW_THREADS if (rc == -EBUSY) {
        PyErr_SetString(PyExc_RuntimeError, "stop the ControlLoop using this bus before closing it");
        return NULL;
    }
    self->is_open = 0;
    Py_RETURN_NONE;
}

static void Bus_dealloc(BusObject *self) {
    if (self->initialized) fe_bus_free(&self->bus); /* no loop is left: each holds a reference */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int transact(BusObject *self, uint8_t id, uint8_t instr, const uint8_t *params, size_t n_params,
                    uint8_t *data, size_t n_data, uint8_t *error) {
    int rc;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&self->bus.lock);
    rc = fe_bus_transact(&self->bus, id, instr, params, n_params, data, n_data, error);
    pthread_mutex_unlock(&self->bus.lock);
    Py_END_ALLOW_THREADS return rc;
}

static PyObject *Bus_ping(BusObject *self, PyObject *args) {
    PyObject *id_obj;
    uint8_t id, err1 = 0, err2 = 0, model[2], dummy;
    if (check_open(self) < 0 || !PyArg_ParseTuple(args, "O", &id_obj) || get_id(id_obj, &id, 0) < 0) return NULL;
    int rc = transact(self, id, FE_PING, NULL, 0, &dummy, 0, &err1);
    /* A lone copy of the PING is an echo, or the reply of a servo with ERR=0x01: the READ below decides. */
    if (rc != FE_OK && rc != FE_EECHO) return raise_bus(self, rc, id, FE_PING, -1);
    uint8_t params[2] = {3, 2};
    int rc_read = transact(self, id, FE_READ, params, 2, model, 2, &err2);
    if (rc_read != FE_OK && rc == FE_EECHO) return raise_bus(self, rc, id, FE_PING, -1); /* absent: its echo */
    if (rc_read != FE_OK) return raise_bus(self, rc_read, id, FE_READ, 3);
    return Py_BuildValue("(ii)", model[0] | (model[1] << 8), err1 | err2);
}

static PyObject *Bus_read(BusObject *self, PyObject *args) {
    PyObject *id_obj;
    long addr, length;
    uint8_t id, a, l, error = 0, data[FE_MAX_PACKET];
    if (check_open(self) < 0 || !PyArg_ParseTuple(args, "Oll", &id_obj, &addr, &length)) return NULL;
    if (get_id(id_obj, &id, 0) < 0 || get_byte_arg(addr, "addr", &a) < 0 || get_byte_arg(length, "length", &l) < 0)
        return NULL;
    if (l == 0 || l > FE_MAX_PACKET - 6) return PyErr_Format(PyExc_ValueError, "length %d out of range", l);
    uint8_t params[2] = {a, l};
    int rc = transact(self, id, FE_READ, params, 2, data, l, &error);
    if (rc != FE_OK) return raise_bus(self, rc, id, FE_READ, a);
    return Py_BuildValue("(y#i)", (const char *)data, (Py_ssize_t)l, error);
}

static PyObject *write_common(BusObject *self, PyObject *args, uint8_t instr) {
    PyObject *id_obj;
    long addr;
    Py_buffer data;
    uint8_t id, a, error = 0, params[FE_MAX_PACKET], dummy;
    if (check_open(self) < 0 || !PyArg_ParseTuple(args, "Oly*", &id_obj, &addr, &data)) return NULL;
    int bad = get_id(id_obj, &id, 1) < 0 || get_byte_arg(addr, "addr", &a) < 0;
    if (!bad && (data.len == 0 || data.len > FE_MAX_PACKET - 7)) {
        PyErr_Format(PyExc_ValueError, "write of %zd bytes out of range", data.len);
        bad = 1;
    }
    if (!bad) {
        params[0] = a;
        memcpy(params + 1, data.buf, (size_t)data.len);
    }
    size_t n = (size_t)data.len + 1;
    PyBuffer_Release(&data);
    if (bad) return NULL;
    int rc = transact(self, id, instr, params, n, &dummy, 0, &error);
    if (rc != FE_OK) return raise_bus(self, rc, id, instr, a);
    return PyLong_FromLong(error);
}

static PyObject *Bus_write(BusObject *self, PyObject *args) { return write_common(self, args, FE_WRITE); }
static PyObject *Bus_reg_write(BusObject *self, PyObject *args) { return write_common(self, args, FE_REG_WRITE); }

static PyObject *Bus_action(BusObject *self, PyObject *args) {
    PyObject *id_obj = NULL;
    uint8_t id = FE_BROADCAST_ID, error = 0, dummy;
    if (check_open(self) < 0 || !PyArg_ParseTuple(args, "|O", &id_obj)) return NULL;
    if (id_obj && get_id(id_obj, &id, 1) < 0) return NULL;
    int rc = transact(self, id, FE_ACTION, NULL, 0, &dummy, 0, &error);
    if (rc != FE_OK) return raise_bus(self, rc, id, FE_ACTION, -1);
    Py_RETURN_NONE;
}

static PyObject *sync_result(const uint8_t *ids, Py_ssize_t n, uint8_t length, const uint8_t *data,
                             const uint8_t *valid, const int *errors) {
    (void)ids;
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = valid[k] ? Py_BuildValue("(y#i)", (const char *)data + k * length, (Py_ssize_t)length, errors[k])
                                  : Py_BuildValue("(Oi)", Py_None, errors[k]);
        if (!item) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, item);
    }
    return out;
}

static PyObject *Bus_sync_read(BusObject *self, PyObject *args) {
    PyObject *ids_obj;
    long addr, length;
    uint8_t ids[FE_MAX_SERVOS], a, l;
    if (check_open(self) < 0 || !PyArg_ParseTuple(args, "Oll", &ids_obj, &addr, &length)) return NULL;
    Py_ssize_t n = get_ids(ids_obj, ids, FE_MAX_SERVOS);
    if (n < 0 || get_byte_arg(addr, "addr", &a) < 0 || get_byte_arg(length, "length", &l) < 0) return NULL;
    if (l == 0 || l > 64) return PyErr_Format(PyExc_ValueError, "length %d out of range 1..64", l);
    uint8_t data[FE_MAX_SERVOS * 64], valid[FE_MAX_SERVOS];
    int errors[FE_MAX_SERVOS];
    int rc = FE_OK;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&self->bus.lock);
    fe_bus *bus = &self->bus;
    rc = fe_bus_sync_read_once(bus, NULL, 0, ids, (size_t)n, a, l, data, valid, errors,
                               fe_now_ns() + fe_bus_wire_ns(bus, 8 + (size_t)n * (7 + l)) + bus->timeout_ns);
    for (int attempt = 0; rc == FE_OK && attempt < bus->retries; attempt++) {
        uint8_t miss_ids[FE_MAX_SERVOS], miss_data[FE_MAX_SERVOS * 64], miss_valid[FE_MAX_SERVOS];
        int miss_errors[FE_MAX_SERVOS], where[FE_MAX_SERVOS];
        size_t m = 0;
        for (Py_ssize_t k = 0; k < n; k++) {
            if (!valid[k]) {
                where[m] = (int)k;
                miss_ids[m++] = ids[k];
                bus->stats[ids[k]].retries++;
            }
        }
        if (m == 0) break;
        rc = fe_bus_sync_read_once(bus, NULL, 0, miss_ids, m, a, l, miss_data, miss_valid, miss_errors,
                                   fe_now_ns() + fe_bus_wire_ns(bus, 8 + m * (7 + l)) + bus->timeout_ns);
        for (size_t j = 0; j < m; j++) {
            int k = where[j];
            if (miss_valid[j]) {
                memcpy(data + k * l, miss_data + j * l, l);
                valid[k] = 1;
                errors[k] = miss_errors[j];
            } else if (miss_errors[j] == -2) {
                errors[k] = -2;
            }
        }
    }
    pthread_mutex_unlock(&self->bus.lock);
    Py_END_ALLOW_THREADS if (rc != FE_OK) return raise_bus(self, rc, FE_BROADCAST_ID, FE_SYNC_READ, a);
    return sync_result(ids, n, l, data, valid, errors);
}

static int build_sync_write(PyObject *ids_obj, long addr, PyObject *rows, uint8_t *packet, uint8_t *ids,
                            Py_ssize_t *n_ids) {
    uint8_t a, data[FE_MAX_PACKET];
    Py_ssize_t n = get_ids(ids_obj, ids, FE_MAX_SERVOS);
    if (n < 0 || get_byte_arg(addr, "addr", &a) < 0) return -1;
    int length = -1;
    if (get_rows(rows, n, &length, data, sizeof data) < 0) return -1;
    if (length == 0) {
        PyErr_SetString(PyExc_ValueError, "empty data");
        return -1;
    }
    int size = fe_encode_sync_write(packet, a, (uint8_t)length, ids, (size_t)n, data);
    if (size < 0) PyErr_Format(PyExc_ValueError, "SYNC_WRITE would exceed %d bytes", FE_MAX_PACKET);
    *n_ids = n;
    return size;
}

static PyObject *Bus_sync_write(BusObject *self, PyObject *args) {
    PyObject *ids_obj, *rows;
    long addr;
    uint8_t packet[FE_MAX_PACKET], ids[FE_MAX_SERVOS];
    Py_ssize_t n;
    if (check_open(self) < 0 || !PyArg_ParseTuple(args, "OlO", &ids_obj, &addr, &rows)) return NULL;
    int size = build_sync_write(ids_obj, addr, rows, packet, ids, &n);
    if (size < 0) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&self->bus.lock);
    rc = fe_bus_send(&self->bus, packet, (size_t)size);
    pthread_mutex_unlock(&self->bus.lock);
    Py_END_ALLOW_THREADS if (rc != 0) return raise_bus(self, rc, FE_BROADCAST_ID, FE_SYNC_WRITE, (int)addr);
    Py_RETURN_NONE;
}

static PyObject *Bus_sync_write_read(BusObject *self, PyObject *args) {
    PyObject *ids_obj, *rows;
    long waddr, raddr, rlen;
    uint8_t packet[FE_MAX_PACKET], ids[FE_MAX_SERVOS], a, l;
    Py_ssize_t n;
    if (check_open(self) < 0 || !PyArg_ParseTuple(args, "OlOll", &ids_obj, &waddr, &rows, &raddr, &rlen)) return NULL;
    int size = build_sync_write(ids_obj, waddr, rows, packet, ids, &n);
    if (size < 0 || get_byte_arg(raddr, "addr", &a) < 0 || get_byte_arg(rlen, "length", &l) < 0) return NULL;
    if (l == 0 || l > 64) return PyErr_Format(PyExc_ValueError, "length %d out of range 1..64", l);
    uint8_t data[FE_MAX_SERVOS * 64], valid[FE_MAX_SERVOS];
    int errors[FE_MAX_SERVOS], rc;
    Py_BEGIN_ALLOW_THREADS fe_bus *bus = &self->bus;
    pthread_mutex_lock(&bus->lock);
    rc = fe_bus_sync_read_once(bus, packet, (size_t)size, ids, (size_t)n, a, l, data, valid, errors,
                               fe_now_ns() + fe_bus_wire_ns(bus, (size_t)size + 8 + (size_t)n * (7 + l)) +
                                   bus->timeout_ns);
    pthread_mutex_unlock(&bus->lock);
    Py_END_ALLOW_THREADS if (rc != FE_OK) return raise_bus(self, rc, FE_BROADCAST_ID, FE_SYNC_READ, a);
    return sync_result(ids, n, l, data, valid, errors);
}

static PyObject *Bus_torque_off(BusObject *self, PyObject *args) {
    PyObject *ids_obj;
    uint8_t ids[FE_MAX_SERVOS], zeros[FE_MAX_SERVOS] = {0}, packet[FE_MAX_PACKET];
    if (check_open(self) < 0 || !PyArg_ParseTuple(args, "O", &ids_obj)) return NULL;
    Py_ssize_t n = get_ids(ids_obj, ids, FE_MAX_SERVOS);
    if (n < 0) return NULL;
    int size = fe_encode_sync_write(packet, 40, 1, ids, (size_t)n, zeros);
    int rc;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&self->bus.lock);
    rc = fe_bus_send(&self->bus, packet, (size_t)size);
    if (rc == 0) rc = fe_bus_send(&self->bus, packet, (size_t)size); /* no reply to confirm: say it twice */
    pthread_mutex_unlock(&self->bus.lock);
    Py_END_ALLOW_THREADS if (rc != 0) return raise_bus(self, rc, FE_BROADCAST_ID, FE_SYNC_WRITE, 40);
    Py_RETURN_NONE;
}

static PyObject *Bus_stats(BusObject *self, PyObject *unused) {
    (void)unused;
    PyObject *per_id = PyDict_New();
    if (!per_id) return NULL;
    pthread_mutex_t *lock = self->is_open ? &self->bus.lock : NULL;
    fe_id_stats copy[256];
    Py_BEGIN_ALLOW_THREADS if (lock) pthread_mutex_lock(lock);
    memcpy(copy, self->bus.stats, sizeof copy);
    if (lock) pthread_mutex_unlock(lock);
    Py_END_ALLOW_THREADS for (int id = 0; id < 256; id++) {
        fe_id_stats *s = &copy[id];
        if (!s->requests) continue;
        PyObject *d = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K}", "requests", s->requests, "timeouts", s->timeouts,
                                    "checksum_errors", s->checksum_errors, "retries", s->retries, "errors_reported",
                                    s->errors_reported);
        PyObject *key = PyLong_FromLong(id);
        int bad = !d || !key || PyDict_SetItem(per_id, key, d) < 0;
        Py_XDECREF(d);
        Py_XDECREF(key);
        if (bad) {
            Py_DECREF(per_id);
            return NULL;
        }
    }
    return Py_BuildValue("{s:N,s:K,s:K,s:O}", "per_id", per_id, "garbage_bytes",
                         (unsigned long long)self->bus.garbage_bytes, "bad_checksum_other",
                         (unsigned long long)self->bus.bad_checksum_other, "echo_seen",
                         self->bus.echo_seen ? Py_True : Py_False);
}

static PyObject *Bus_enter(BusObject *self, PyObject *unused) {
    (void)unused;
    if (check_open(self) < 0) return NULL;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *Bus_exit(BusObject *self, PyObject *args) {
    (void)args;
    PyObject *r = Bus_close(self, NULL);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *Bus_get_port(BusObject *self, void *c) { (void)c; return PyUnicode_FromString(self->bus.path); }
static PyObject *Bus_get_baud(BusObject *self, void *c) { (void)c; return PyLong_FromLong(self->bus.baud); }
static PyObject *Bus_get_retries(BusObject *self, void *c) { (void)c; return PyLong_FromLong(self->bus.retries); }
static PyObject *Bus_get_closed(BusObject *self, void *c) { (void)c; return PyBool_FromLong(!self->is_open); }
static PyObject *Bus_get_timeout(BusObject *self, void *c) {
    (void)c;
    return PyFloat_FromDouble((double)self->bus.timeout_ns / 1e6);
}

static PyObject *Bus_repr(BusObject *self) {
    return PyUnicode_FromFormat("<Bus %s baud=%d %s>", self->bus.path, self->bus.baud, self->is_open ? "open" : "closed");
}

static PyMethodDef Bus_methods[] = {
    {"ping", (PyCFunction)Bus_ping, METH_VARARGS, "ping(id) -> (model_number, error)"},
    {"read", (PyCFunction)Bus_read, METH_VARARGS, "read(id, addr, length) -> (bytes, error)"},
    {"write", (PyCFunction)Bus_write, METH_VARARGS, "write(id, addr, data) -> error"},
    {"reg_write", (PyCFunction)Bus_reg_write, METH_VARARGS, "reg_write(id, addr, data) -> error"},
    {"action", (PyCFunction)Bus_action, METH_VARARGS, "action(id=254) -> None"},
    {"sync_read", (PyCFunction)Bus_sync_read, METH_VARARGS,
     "sync_read(ids, addr, length) -> list[(bytes | None, error)]"},
    {"sync_write", (PyCFunction)Bus_sync_write, METH_VARARGS, "sync_write(ids, addr, data_per_id) -> None"},
    {"sync_write_read", (PyCFunction)Bus_sync_write_read, METH_VARARGS,
     "sync_write_read(ids, write_addr, data_per_id, read_addr, read_length) -> list[(bytes | None, error)]"},
    {"torque_off", (PyCFunction)Bus_torque_off, METH_VARARGS, "torque_off(ids) -> None"},
    {"stats", (PyCFunction)Bus_stats, METH_NOARGS, "stats() -> dict"},
    {"close", (PyCFunction)Bus_close, METH_NOARGS, "close the port"},
    {"__enter__", (PyCFunction)Bus_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Bus_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Bus_getset[] = {
    {"port", (getter)Bus_get_port, NULL, "serial port path", NULL},
    {"baud", (getter)Bus_get_baud, NULL, "baud rate", NULL},
    {"timeout_ms", (getter)Bus_get_timeout, NULL, "slack on top of wire time per exchange", NULL},
    {"retries", (getter)Bus_get_retries, NULL, "retries per unicast request / missing sync-read id", NULL},
    {"closed", (getter)Bus_get_closed, NULL, "True after close()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BusType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rynn_edge.kernels._native.Bus",
    .tp_basicsize = sizeof(BusObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Bus(port, baud=1_000_000, timeout_ms=5.0, retries=2): Feetech serial bus (see module doc)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Bus_init,
    .tp_dealloc = (destructor)Bus_dealloc,
    .tp_methods = Bus_methods,
    .tp_getset = Bus_getset,
    .tp_repr = (reprfunc)Bus_repr,
};

/* ---------------------------------------------------------------------------------------- */
/* ControlLoop */

typedef struct {
    PyObject_HEAD fe_loop loop;
    BusObject *bus;
    int initialized;
} LoopObject;

static int get_int_list(PyObject *seq, const char *what, int32_t *out, Py_ssize_t n) {
    PyObject *items = tuple_of(seq, what);
    if (!items) return -1;
    int rc = 0;
    if (PyTuple_GET_SIZE(items) != n) {
        PyErr_Format(PyExc_ValueError, "%s has %zd entries, expected %zd (one per id)", what, PyTuple_GET_SIZE(items),
                     n);
        rc = -1;
    }
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(items, i));
        if (v == -1 && PyErr_Occurred()) {
            rc = -1;
        } else if (v < -32767 || v > 32767) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] = %ld outside the 16-bit sign-magnitude range", what, i, v);
            rc = -1;
        } else {
            out[i] = (int32_t)v;
        }
    }
    Py_DECREF(items);
    return rc;
}

/* Per-id limits: lower <= upper, max_step in 1..32767. */
static int check_limits(const int32_t *lower, const int32_t *upper, const int32_t *step, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++) {
        if (lower[k] > upper[k]) {
            PyErr_Format(PyExc_ValueError, "lower[%zd] = %d > upper[%zd] = %d", k, lower[k], k, upper[k]);
            return -1;
        }
        if (step[k] <= 0) {
            PyErr_Format(PyExc_ValueError, "max_step[%zd] = %d must be in 1..32767", k, step[k]);
            return -1;
        }
    }
    return 0;
}

static int check_loop_numbers(double loop_rate, double action_rate, int read_addr, int write_addr, int max_missed,
                              int fault_mask, int rt_priority, Py_ssize_t capacity) {
    if (check_float(loop_rate, "loop_rate_hz", 1.0, 10000.0, 0) < 0 ||
        check_float(action_rate, "action_rate_hz", 0.0, 10000.0, 1) < 0 ||
        check_int(read_addr, "read_addr", 0, 255) < 0 || check_int(write_addr, "write_addr", 0, 255) < 0 ||
        check_int(max_missed, "max_missed_cycles", 0, 1000000) < 0 || check_int(fault_mask, "fault_mask", 0, 255) < 0 ||
        check_int(rt_priority, "rt_priority", 0, 99) < 0)
        return -1;
    if (capacity < 16 || capacity > 1 << 20) {
        PyErr_Format(PyExc_ValueError, "record_capacity must be in 16..%d, got %zd", 1 << 20, capacity);
        return -1;
    }
    return 0;
}

static int Loop_init(LoopObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"bus", "ids", "loop_rate_hz", "action_rate_hz", "lower", "upper", "max_step",
                             "read_addr", "write_addr", "max_missed_cycles", "fault_mask", "rt_priority",
                             "record_capacity", NULL};
    PyObject *bus_obj, *ids_obj, *lower_obj, *upper_obj, *step_obj;
    double loop_rate, action_rate;
    int read_addr = 56, write_addr = 42, max_missed = 3, fault_mask = FE_ERR_VOLTAGE | FE_ERR_OVERHEAT |
                                                                        FE_ERR_OVERCURRENT | FE_ERR_OVERLOAD;
    int rt_priority = 80;
    Py_ssize_t capacity = 32768;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OddOOO|iiiiin", kwlist, &BusType, &bus_obj, &ids_obj,
                                     &loop_rate, &action_rate, &lower_obj, &upper_obj, &step_obj, &read_addr,
                                     &write_addr, &max_missed, &fault_mask, &rt_priority, &capacity))
        return -1;
    uint8_t ids[FE_MAX_SERVOS];
    int32_t lower[FE_MAX_SERVOS], upper[FE_MAX_SERVOS], step[FE_MAX_SERVOS];
    Py_ssize_t n = get_ids(ids_obj, ids, FE_MAX_SERVOS);
    if (n < 0 || get_int_list(lower_obj, "lower", lower, n) < 0 || get_int_list(upper_obj, "upper", upper, n) < 0 ||
        get_int_list(step_obj, "max_step", step, n) < 0 || check_limits(lower, upper, step, n) < 0 ||
        check_loop_numbers(loop_rate, action_rate, read_addr, write_addr, max_missed, fault_mask, rt_priority,
                           capacity) < 0)
        return -1;
    /* Checked after the lists: their items' __index__ may have run Python code (even this __init__). */
    if (self->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "ControlLoop already initialised");
        return -1;
    }
    if (check_open((BusObject *)bus_obj) < 0) return -1;
    if (fe_loop_init(&self->loop, &((BusObject *)bus_obj)->bus, ids, (int)n, loop_rate, action_rate, lower, upper,
                     step, (uint8_t)read_addr, (uint8_t)write_addr, max_missed, (uint8_t)fault_mask, rt_priority,
                     (size_t)capacity) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(bus_obj);
    self->bus = (BusObject *)bus_obj;
    self->initialized = 1;
    return 0;
}

static int check_loop(LoopObject *self) {
    if (!self->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "ControlLoop not initialised");
        return -1;
    }
    return 0;
}

static void Loop_dealloc(LoopObject *self) {
    if (self->initialized) {
        Py_BEGIN_ALLOW_THREADS fe_loop_free(&self->loop);
        Py_END_ALLOW_THREADS Py_CLEAR(self->bus);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Loop_start(LoopObject *self, PyObject *unused) {
    (void)unused;
    if (check_loop(self) < 0 || check_open(self->bus) < 0) return NULL;
    char err[320];
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = fe_loop_start(&self->loop, err, sizeof err);
    Py_END_ALLOW_THREADS if (rc == 0) Py_RETURN_NONE;
    if (rc == FE_ETIMEOUT) {
        PyErr_SetString(BusTimeoutError, err);
    } else if (rc == -EBUSY) {
        PyErr_SetString(PyExc_RuntimeError, err);
    } else {
        PyObject *exc_args = Py_BuildValue("(is)", -rc, err);
        if (exc_args) PyErr_SetObject(BusError, exc_args);
        Py_XDECREF(exc_args);
    }
    return NULL;
}

static PyObject *Loop_stop(LoopObject *self, PyObject *unused) {
    (void)unused;
    if (check_loop(self) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS fe_loop_stop(&self->loop);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *Loop_hold(LoopObject *self, PyObject *unused) {
    (void)unused;
    if (check_loop(self) < 0) return NULL;
    fe_loop_hold(&self->loop);
    Py_RETURN_NONE;
}

#define MAX_CHUNK_ROWS 1000000
#define MAX_T0_NS (1LL << 62) /* ~146 years of CLOCK_MONOTONIC */

/* goals: n_rows rows of K ints -> a PyMem_Malloc'ed array (NULL with an exception set). */
static int32_t *get_chunk(PyObject *goals, Py_ssize_t K, Py_ssize_t *n_rows) {
    PyObject *rows = tuple_of(goals, "goals");
    if (!rows) return NULL;
    *n_rows = PyTuple_GET_SIZE(rows);
    int32_t *flat = NULL;
    if (*n_rows < 1 || *n_rows > MAX_CHUNK_ROWS)
        PyErr_Format(PyExc_ValueError, "a chunk needs 1..%d rows, got %zd", MAX_CHUNK_ROWS, *n_rows);
    else if (!(flat = PyMem_Malloc(sizeof(int32_t) * (size_t)*n_rows * (size_t)K)))
        PyErr_NoMemory();
    for (Py_ssize_t r = 0; flat && r < *n_rows; r++) {
        if (get_int_list(PyTuple_GET_ITEM(rows, r), "goal row", flat + r * K, K) < 0) {
            PyMem_Free(flat);
            flat = NULL;
        }
    }
    Py_DECREF(rows);
    return flat;
}

static PyObject *Loop_submit_chunk(LoopObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"t0_ns", "goals", "chunk_id", NULL};
    long long t0, chunk_id;
    PyObject *goals;
    if (check_loop(self) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "LOL", kwlist, &t0, &goals, &chunk_id))
        return NULL;
    if (t0 < 0 || t0 > MAX_T0_NS)
        return PyErr_Format(PyExc_ValueError, "t0_ns must be in 0..%lld (CLOCK_MONOTONIC ns), got %lld", MAX_T0_NS,
                            t0);
    Py_ssize_t n_rows;
    int32_t *flat = get_chunk(goals, self->loop.n_ids, &n_rows);
    if (!flat) return NULL;
    int rc = fe_loop_submit(&self->loop, (int64_t)t0, flat, (int)n_rows, (int64_t)chunk_id);
    PyMem_Free(flat);
    if (rc < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *Loop_get_ids(LoopObject *self, void *c);

static PyObject *int_list(const int32_t *v, int n) {
    PyObject *out = PyList_New(n);
    for (int k = 0; out && k < n; k++) PyList_SET_ITEM(out, k, PyLong_FromLong(v[k]));
    return out;
}

static PyObject *Loop_status(LoopObject *self, PyObject *unused) {
    (void)unused;
    if (check_loop(self) < 0) return NULL;
    fe_loop *L = &self->loop;
    const int K = L->n_ids;
    int32_t present[FE_MAX_SERVOS], goal[FE_MAX_SERVOS], errors[FE_MAX_SERVOS], missed[FE_MAX_SERVOS],
        valid[FE_MAX_SERVOS], missed_total[FE_MAX_SERVOS], error_count[FE_MAX_SERVOS];
    uint64_t cycles, overruns;
    int64_t chunk_id;
    int holding, fault_id;
    char fault[256], sched[96];
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&L->status_lock);
    for (int k = 0; k < K; k++) {
        present[k] = L->st_present[k];
        goal[k] = L->st_goal[k];
        errors[k] = L->st_error[k];
        missed[k] = L->st_missed[k];
        valid[k] = L->st_valid[k];
        missed_total[k] = (int32_t)L->st_missed_total[k];
        error_count[k] = (int32_t)L->st_error_count[k];
    }
    cycles = L->st_cycles;
    overruns = L->st_overruns;
    chunk_id = L->st_chunk_id;
    holding = L->st_holding;
    fault_id = L->fault_id;
    memcpy(fault, L->fault, sizeof fault);
    memcpy(sched, L->sched, sizeof sched);
    pthread_mutex_unlock(&L->status_lock);
    Py_END_ALLOW_THREADS;
    PyObject *valid_list = PyList_New(K);
    for (int k = 0; valid_list && k < K; k++) PyList_SET_ITEM(valid_list, k, PyBool_FromLong(valid[k]));
    PyObject *fault_obj = fault[0] ? PyUnicode_FromString(fault) : (Py_INCREF(Py_None), Py_None);
    PyObject *fault_id_obj = fault[0] && fault_id >= 0 ? PyLong_FromLong(fault_id) : (Py_INCREF(Py_None), Py_None);
    PyObject *chunk_obj = chunk_id >= 0 ? PyLong_FromLongLong(chunk_id) : (Py_INCREF(Py_None), Py_None);
    return Py_BuildValue(
        "{s:O,s:K,s:K,s:N,s:N,s:N,s:O,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:s,s:K,s:L,s:N}", "running",
        atomic_load(&L->running) ? Py_True : Py_False, "cycles", (unsigned long long)cycles, "overruns",
        (unsigned long long)overruns, "present", int_list(present, K), "goal", int_list(goal, K), "active_chunk_id",
        chunk_obj, "holding", holding ? Py_True : Py_False, "valid", valid_list, "errors", int_list(errors, K),
        "missed", int_list(missed, K), "missed_total", int_list(missed_total, K), "error_count",
        int_list(error_count, K), "fault_reason", fault_obj, "fault_id", fault_id_obj, "sched", sched,
        "records_dropped", (unsigned long long)atomic_load(&L->ring_dropped), "period_ns", (long long)L->period_ns,
        "ids", Loop_get_ids(self, NULL));
}

static PyObject *Loop_drain_records(LoopObject *self, PyObject *args) {
    PyObject *max_obj = Py_None;
    if (check_loop(self) < 0 || !PyArg_ParseTuple(args, "|O", &max_obj)) return NULL;
    size_t cap = self->loop.ring_capacity;
    if (max_obj != Py_None) {
        Py_ssize_t max_records = PyNumber_AsSsize_t(max_obj, PyExc_OverflowError);
        if (max_records == -1 && PyErr_Occurred()) return NULL;
        if (max_records < 0)
            return PyErr_Format(PyExc_ValueError, "max_records must be None or >= 0, got %zd", max_records);
        if ((size_t)max_records < cap) cap = (size_t)max_records;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(cap * self->loop.record_size));
    if (!out) return NULL;
    size_t n = fe_loop_drain(&self->loop, (uint8_t *)PyBytes_AS_STRING(out), cap);
    if (_PyBytes_Resize(&out, (Py_ssize_t)(n * self->loop.record_size)) < 0) return NULL;
    return out;
}

static PyObject *Loop_get_dtype(LoopObject *self, void *c) {
    (void)c;
    if (check_loop(self) < 0) return NULL;
    int K = self->loop.n_ids;
    return Py_BuildValue("{s:[ssssssssss],s:[ssssss(si)(si)(si)(si)],s:[iiiiiiiiii],s:n}", "names", "cycle",
                         "deadline_ns", "wake_ns", "bus_done_ns", "period_error_ns", "chunk_id", "present", "goal",
                         "error", "flags", "formats", "<u8", "<i8", "<i8", "<i8", "<i8", "<i8", "<i4", K, "<i4", K, "u1",
                         K, "u1", K, "offsets", 0, 8, 16, 24, 32, 40, 48, 48 + 4 * K, 48 + 8 * K, 48 + 9 * K,
                         "itemsize", (Py_ssize_t)self->loop.record_size);
}

static PyObject *Loop_get_ids(LoopObject *self, void *c) {
    (void)c;
    if (check_loop(self) < 0) return NULL;
    PyObject *out = PyList_New(self->loop.n_ids);
    for (int k = 0; out && k < self->loop.n_ids; k++) PyList_SET_ITEM(out, k, PyLong_FromLong(self->loop.ids[k]));
    return out;
}

static PyObject *Loop_get_running(LoopObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(self->initialized && atomic_load(&self->loop.running));
}

static PyObject *Loop_get_bus(LoopObject *self, void *c) {
    (void)c;
    if (check_loop(self) < 0) return NULL;
    Py_INCREF(self->bus);
    return (PyObject *)self->bus;
}

static PyObject *Loop_enter(LoopObject *self, PyObject *unused) {
    PyObject *r = Loop_start(self, unused);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *Loop_exit(LoopObject *self, PyObject *args) {
    (void)args;
    PyObject *r = Loop_stop(self, NULL);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyMethodDef Loop_methods[] = {
    {"start", (PyCFunction)Loop_start, METH_NOARGS, "read present positions, then start the loop thread"},
    {"stop", (PyCFunction)Loop_stop, METH_NOARGS, "stop and join the loop thread (torque untouched)"},
    {"hold", (PyCFunction)Loop_hold, METH_NOARGS, "drop current and pending chunks; hold the last goal"},
    {"submit_chunk", (PyCFunction)(void (*)(void))Loop_submit_chunk, METH_VARARGS | METH_KEYWORDS,
     "submit_chunk(t0_ns, goals, chunk_id): rows of raw goals, row k at t0_ns + k/action_rate_hz"},
    {"status", (PyCFunction)Loop_status, METH_NOARGS, "status() -> dict"},
    {"drain_records", (PyCFunction)Loop_drain_records, METH_VARARGS,
     "drain_records(max_records=None) -> bytes (np.dtype(record_dtype))"},
    {"__enter__", (PyCFunction)Loop_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Loop_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Loop_getset[] = {
    {"record_dtype", (getter)Loop_get_dtype, NULL, "numpy dtype spec (dict) of one drained record", NULL},
    {"ids", (getter)Loop_get_ids, NULL, "servo ids, in record/status order", NULL},
    {"running", (getter)Loop_get_running, NULL, "True while the loop thread runs", NULL},
    {"bus", (getter)Loop_get_bus, NULL, "the Bus this loop drives", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rynn_edge.kernels._native.ControlLoop",
    .tp_basicsize = sizeof(LoopObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ControlLoop(bus, ids, loop_rate_hz, action_rate_hz, lower, upper, max_step, ...): see module doc",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
    .tp_getset = Loop_getset,
};

/* ---------------------------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"encode_packet", py_encode_packet, METH_VARARGS, "encode_packet(id, instruction, params) -> bytes"},
    {"encode_sync_write", py_encode_sync_write, METH_VARARGS, "encode_sync_write(addr, length, {id: bytes}) -> bytes"},
    {"encode_sync_read", py_encode_sync_read, METH_VARARGS, "encode_sync_read(addr, length, ids) -> bytes"},
    {"encode_sign_magnitude", py_encode_sign_magnitude, METH_VARARGS, "encode_sign_magnitude(value, sign_bit)"},
    {"decode_sign_magnitude", py_decode_sign_magnitude, METH_VARARGS, "decode_sign_magnitude(raw, sign_bit)"},
    {"checksum", py_checksum, METH_O, "checksum(bytes) -> int"},
    {"parse_status_stream", py_parse_status_stream, METH_O,
     "parse_status_stream(bytes) -> (list[(id, error, data)], bad_checksums, garbage_bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "rynn_edge.kernels._native", MODULE_DOC, -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&BusType) < 0 || PyType_Ready(&LoopType) < 0) return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m) return NULL;
    BusError = PyErr_NewExceptionWithDoc("rynn_edge.kernels._native.BusError",
                                         "Feetech bus failure (an OSError)", PyExc_OSError, NULL);
    PyObject *bases = BusError ? PyTuple_Pack(2, BusError, PyExc_TimeoutError) : NULL;
    BusTimeoutError = bases ? PyErr_NewExceptionWithDoc("rynn_edge.kernels._native.BusTimeoutError",
                                                        "no status packet before the deadline", bases, NULL)
                            : NULL;
    Py_XDECREF(bases);
    if (!BusTimeoutError) return NULL;
    Py_INCREF(&BusType);
    Py_INCREF(&LoopType);
    Py_INCREF(BusError);
    Py_INCREF(BusTimeoutError);
    if (PyModule_AddObject(m, "Bus", (PyObject *)&BusType) < 0 ||
        PyModule_AddObject(m, "ControlLoop", (PyObject *)&LoopType) < 0 ||
        PyModule_AddObject(m, "BusError", BusError) < 0 ||
        PyModule_AddObject(m, "BusTimeoutError", BusTimeoutError) < 0)
        return NULL;
    struct { const char *name; long value; } constants[] = {
        {"BROADCAST_ID", FE_BROADCAST_ID}, {"INST_PING", FE_PING}, {"INST_READ", FE_READ},
        {"INST_WRITE", FE_WRITE}, {"INST_REG_WRITE", FE_REG_WRITE}, {"INST_ACTION", FE_ACTION},
        {"INST_SYNC_READ", FE_SYNC_READ}, {"INST_SYNC_WRITE", FE_SYNC_WRITE}, {"ERRBIT_VOLTAGE", FE_ERR_VOLTAGE},
        {"ERRBIT_ANGLE", FE_ERR_ANGLE}, {"ERRBIT_OVERHEAT", FE_ERR_OVERHEAT},
        {"ERRBIT_OVERELE", FE_ERR_OVERCURRENT}, {"ERRBIT_OVERLOAD", FE_ERR_OVERLOAD},
        {"ERR_NO_REPLY", -1}, {"ERR_CORRUPT", -2}, {"RECORD_VALID", FE_REC_VALID}, {"RECORD_HELD", FE_REC_HELD},
        {"ADDR_TORQUE_ENABLE", 40}, {"ADDR_GOAL_POSITION", 42}, {"ADDR_PRESENT_POSITION", 56},
        {"MAX_SERVOS", FE_MAX_SERVOS},
    };
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++)
        if (PyModule_AddIntConstant(m, constants[i].name, constants[i].value) < 0) return NULL;
    return m;
}
