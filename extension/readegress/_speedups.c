/*
 * readegress._speedups: the compiled hot paths of the socket tables.
 *
 * Optional: every function here has a pure-Python twin (the reference), used
 * when this module was not built (no compiler at install time, the .ext
 * zipapp) or when READEGRESS_PURE=1 (see readegress/speedups.py). The twins
 * must give the same results and the same errors for every input; the tests
 * run both on real kernel data and a hypothesis test feeds both the same
 * random and hostile bytes.
 *
 *   parse_dump(buf, end, seq, protocol, out, cls)   sock_diag dump replies
 *       (kernel/sockdiag.py SockDiag._parse_dump)
 *   socket_links(dir_fd, names, cache)               readlinkat of fd names
 *       (kernel/procfs.py SocketInodeMap._scan)
 *   observe(dumps, ...)                              owners and ages of a poll
 *       (kernel/monitor.py SocketMonitor._observe)
 *   socket_rows(sockets, ...)                        socket_bytes rows
 *       (tables/socket_bytes.py SocketBytesTable.generate)
 *   perm_wait(group_fd, ...), perm_remember(...)     repeat opens of held files
 *       (kernel/fanotify.py FanotifyWatcher._perm_fast_repeat)
 *   held_reads(base)                                 a held opener's identity
 *       (kernel/fanotify.py read_opener)
 *   sqlite_rows(rows, kinds)                         rows as SQLite returns them
 *       (sql/engine.py _sqlite_rows_py)
 *   json_lines(names, rows, kinds)                   rows as SQLite json_object
 *       (sql/engine.py Engine.query_json)
 *   scan_results(data, first_line, paths, ...)       results-log lines, split into fields
 *       (_logscan.c; fleet/duckdb_engine.py _Scanner.scan)
 *   count_newlines(data, start, end)                 newlines of a chunk
 *       (_logscan.c; logs/lines.py line_batches, bytes.count)
 *
 * Every read of outside bytes is bounds-checked against the buffer's length:
 * a truncated or hostile reply gives the same clean result or error as the
 * Python parser, never a read past the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <poll.h>
#include <stdlib.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "_logscan.h"

#ifndef Py_NewRef /* CPython < 3.10 */
static inline PyObject *Py_NewRef(PyObject *o) {
    Py_INCREF(o);
    return o;
}
#endif

#define MSG_LEN 88
#define TCPI_LEN 216
#define NLMSG_ERROR 2
#define NLMSG_DONE 3
#define INET_DIAG_INFO 2
#define IPPROTO_TCP_ 6

static uint16_t rd16(const unsigned char *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
static uint32_t rd32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t rd64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* ---------------------------------------------------------------- addresses
 * Formatted address strings, cached by (family, raw bytes): a host has few
 * local addresses and talks to few peers, so most sockets reuse a string
 * (one object shared by every record, as the Python parser's dict cache
 * does). Direct-mapped; a collision replaces the slot. */
#define ADDR_SLOTS 4096
typedef struct {
    int family; /* 0: empty */
    unsigned char raw[16];
    PyObject *text;
} addr_slot;
static addr_slot addr_cache[ADDR_SLOTS];

static PyObject *format_address(int family, const unsigned char *raw) {
    int v4 = family == AF_INET;
    size_t n = v4 ? 4 : 16;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ raw[i]) * 16777619u;
    addr_slot *slot = &addr_cache[(h ^ (uint32_t)v4) & (ADDR_SLOTS - 1)];
    int key = v4 ? AF_INET : AF_INET6;
    if (slot->family == key && memcmp(slot->raw, raw, n) == 0) {
        Py_INCREF(slot->text);
        return slot->text;
    }
    char text[INET6_ADDRSTRLEN];
    if (inet_ntop(key, raw, text, sizeof text) == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    PyObject *s = PyUnicode_FromString(text);
    if (s == NULL) return NULL;
    Py_XDECREF(slot->text);
    slot->family = key;
    memcpy(slot->raw, raw, n);
    slot->text = s;
    Py_INCREF(s);
    return s;
}

/* ------------------------------------------------------------- parse_dump */

/* tcp_info fields in record order: (offset, size) */
static const struct {
    int off, size;
} tcpi_fields[7] = {{200, 8}, {120, 8}, {128, 8}, {136, 4}, {140, 4}, {44, 4}, {52, 4}};

static PyObject *tcpi_field(const unsigned char *p, int size) {
    if (size == 8) return PyLong_FromUnsignedLongLong(rd64(p));
    return PyLong_FromUnsignedLong(rd32(p));
}

/* Fills items[11..17] (the counters) from a tcp_info of info_len bytes at p
 * (info_len may be negative: an INFO attribute shorter than its header). */
static int read_counters(PyObject **items, const unsigned char *p, long long info_len) {
    if (info_len >= TCPI_LEN) {
        uint64_t sent = rd64(p + 200), retrans = rd64(p + 208);
        if (sent >= retrans) {
            items[0] = PyLong_FromUnsignedLongLong(sent - retrans);
        } else {
            PyObject *a = PyLong_FromUnsignedLongLong(sent);
            PyObject *b = PyLong_FromUnsignedLongLong(retrans);
            items[0] = (a && b) ? PyNumber_Subtract(a, b) : NULL;
            Py_XDECREF(a);
            Py_XDECREF(b);
        }
        if (items[0] == NULL) return -1;
        for (int i = 1; i < 7; i++) {
            items[i] = tcpi_field(p + tcpi_fields[i].off, tcpi_fields[i].size);
            if (items[i] == NULL) return -1;
        }
        return 0;
    }
    for (int i = 0; i < 7; i++) {
        if (tcpi_fields[i].off + tcpi_fields[i].size <= info_len) {
            items[i] = tcpi_field(p + tcpi_fields[i].off, tcpi_fields[i].size);
            if (items[i] == NULL) return -1;
        } else {
            Py_INCREF(Py_None);
            items[i] = Py_None;
        }
    }
    return 0;
}

static PyObject *status(int code, long long value) { return Py_BuildValue("(iL)", code, value); }

/* parse_dump(buf, end, seq, protocol, out, cls) -> (status, value)
 *   status 0: more replies to read; 1: NLMSG_DONE seen;
 *          2: malformed message, value = its nlmsg_len;
 *          3: NLMSG_ERROR, value = the error code (positive errno).
 * Records (cls instances built like tuple.__new__(cls, fields)) are appended
 * to out as they are parsed, before any later error, as the Python parser does. */
static PyObject *parse_dump(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t end;
    unsigned long long seq_arg;
    int protocol;
    PyObject *out, *cls;
    if (!PyArg_ParseTuple(args, "y*nKiO!O!", &view, &end, &seq_arg, &protocol, &PyList_Type, &out,
                          &PyType_Type, &cls))
        return NULL;
    PyObject *result = NULL;
    PyTypeObject *type = (PyTypeObject *)cls;
    if (!PyType_IsSubtype(type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "cls must be a tuple subclass");
        goto done;
    }
    if (end < 0 || end > view.len) {
        PyErr_SetString(PyExc_ValueError, "end outside the buffer");
        goto done;
    }
    const unsigned char *buf = view.buf;
    const uint64_t uend = (uint64_t)end;
    const uint32_t seq = (uint32_t)seq_arg;
    const int is_tcp = protocol == IPPROTO_TCP_;
    uint64_t off = 0;
    while (off + 16 <= uend) {
        const unsigned char *m = buf + off;
        uint64_t ln = rd32(m);
        uint16_t typ = rd16(m + 4);
        uint32_t mseq = rd32(m + 8);
        if (ln < 16 || off + ln > uend) {
            result = status(2, (long long)ln);
            goto done;
        }
        uint64_t step = (ln + 3) & ~(uint64_t)3;
        if (mseq != seq) {
            off += step;
            continue;
        }
        if (typ == NLMSG_DONE) {
            result = status(1, 0);
            goto done;
        }
        if (typ == NLMSG_ERROR) {
            if (ln < 20) {
                result = status(2, (long long)ln);
                goto done;
            }
            long long code = -(long long)(int32_t)rd32(m + 16);
            if (code == 0) {
                off += step;
                continue;
            }
            result = status(3, code);
            goto done;
        }
        if (ln < MSG_LEN) {
            off += step;
            continue;
        }
        int family = m[16];
        PyObject *items[18] = {NULL};
        int ok = 0;
        if (is_tcp) {
            uint64_t mend = off + ln;
            uint64_t a = off + MSG_LEN;
            int64_t info = -1;
            long long info_len = 0;
            while (a + 4 <= mend) {
                uint16_t alen = rd16(buf + a), atype = rd16(buf + a + 2);
                if (atype == INET_DIAG_INFO) {
                    info = (int64_t)(a + 4);
                    info_len = (long long)alen - 4;
                    break;
                }
                if (alen < 4) break;
                a += ((uint64_t)alen + 3) & ~(uint64_t)3;
            }
            if (info < 0 || (long long)info + info_len > (long long)mend) {
                off += step; /* TIME_WAIT / request mini-socket: no tcp_info */
                continue;
            }
            if (read_counters(items + 11, buf + info, info_len) < 0) goto fail;
        } else {
            for (int i = 11; i < 18; i++) {
                Py_INCREF(Py_None);
                items[i] = Py_None;
            }
        }
        uint32_t c_lo = rd32(m + 60), c_hi = rd32(m + 64);
        items[0] = PyLong_FromLong(family);
        items[1] = PyLong_FromLong(protocol);
        items[2] = PyLong_FromLong(m[17]);
        items[3] = format_address(family, m + 24);
        items[4] = PyLong_FromLong((m[20] << 8) | m[21]);
        items[5] = items[3] ? format_address(family, m + 40) : NULL;
        items[6] = PyLong_FromLong((m[22] << 8) | m[23]);
        items[7] = PyLong_FromUnsignedLong(rd32(m + 84));
        items[8] = PyLong_FromUnsignedLongLong(((uint64_t)c_hi << 32) | c_lo);
        items[9] = PyLong_FromUnsignedLong(rd32(m + 80));
        items[10] = PyLong_FromLong(m[18]);
        for (int i = 0; i < 11; i++)
            if (items[i] == NULL) goto fail;
        PyObject *rec = type->tp_alloc(type, 18);
        if (rec == NULL) goto fail;
        for (int i = 0; i < 18; i++) PyTuple_SET_ITEM(rec, i, items[i]);
        ok = 1;
        int r = PyList_Append(out, rec);
        Py_DECREF(rec);
        if (r < 0) goto done;
        off += step;
        continue;
    fail:
        if (!ok)
            for (int i = 0; i < 18; i++) Py_XDECREF(items[i]);
        goto done;
    }
    result = status(0, 0);
done:
    PyBuffer_Release(&view);
    return result;
}

/* ----------------------------------------------------------- socket_links */

/* socket_links(dir_fd, names, cache) -> (readlinks, [(inode, fd), ...])
 * readlinkat of each fd name (str) of an open /proc/PID/fd directory:
 * cache[name] = the socket inode (N of "socket:[N]") or 0 for any other
 * link; a name that cannot be read (closed since the listing) is skipped.
 * Returns how many links were read and the (inode, int(name)) of the
 * sockets, in names order. The same parse as procfs._socket_inode. */
static PyObject *socket_links(PyObject *self, PyObject *args) {
    int dir_fd;
    PyObject *names, *cache;
    if (!PyArg_ParseTuple(args, "iO!O!", &dir_fd, &PyList_Type, &names, &PyDict_Type, &cache))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(names);
    PyObject *socks = PyList_New(0);
    if (socks == NULL) return NULL;
    long long readlinks = 0;
    char link[256];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyList_GET_ITEM(names, i);
        Py_ssize_t nlen;
        const char *cname = PyUnicode_Check(name) ? PyUnicode_AsUTF8AndSize(name, &nlen) : NULL;
        if (cname == NULL || (Py_ssize_t)strlen(cname) != nlen) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "fd names must be str without NUL");
            goto error;
        }
        ssize_t got = readlinkat(dir_fd, cname, link, sizeof link - 1);
        if (got < 0) continue;
        readlinks++;
        unsigned long long ino = 0;
        /* "socket:[" ASCII digits "]" below 2**64; anything else is not a socket */
        if (got > 9 && memcmp(link, "socket:[", 8) == 0 && link[got - 1] == ']') {
            for (ssize_t k = 8; k < got - 1; k++) {
                unsigned d = (unsigned)(link[k] - '0');
                if (link[k] < '0' || link[k] > '9' || ino > (ULLONG_MAX - d) / 10) {
                    ino = 0;
                    break;
                }
                ino = ino * 10 + d;
            }
        }
        PyObject *v = PyLong_FromUnsignedLongLong(ino);
        if (v == NULL) goto error;
        if (PyDict_SetItem(cache, name, v) < 0) {
            Py_DECREF(v);
            goto error;
        }
        if (ino) {
            PyObject *fd = PyLong_FromUnicodeObject(name, 10);
            PyObject *pair = fd ? PyTuple_Pack(2, v, fd) : NULL;
            Py_XDECREF(fd);
            if (pair == NULL || PyList_Append(socks, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(v);
                goto error;
            }
            Py_DECREF(pair);
        }
        Py_DECREF(v);
    }
    PyObject *r = Py_BuildValue("(LN)", readlinks, socks);
    return r;
error:
    Py_DECREF(socks);
    return NULL;
}

/* ----------------------------------------------------------- socket_rows */

static PyObject *s_listen, *s_outbound, *s_inbound, *s_none, *s_established, *s_unconnected,
    *s_any4, *s_any6, *s_identity, *s_pid, *s_start_time;

/* socket_rows(sockets, listeners, listen_ports, tcp_names, classes, remember, cls)
 *   -> list of cls rows: SocketBytesTable.generate's loop (tables/socket_bytes.py)
 * for every socket, no pid filter. sockets: ObservedSocket tuples; listeners:
 * set of (ns, address, port); listen_ports: set of (ns, port); tcp_names:
 * {state: name}; classes: {address: class}, filled through remember(address)
 * on a miss. */
static int set_has(PyObject *set, PyObject *key) {
    int r = PySet_Contains(set, key);
    Py_DECREF(key);
    return r;
}

static PyObject *socket_rows(PyObject *self, PyObject *args) {
    PyObject *sockets, *listeners, *listen_ports, *tcp_names, *classes, *remember, *cls;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!OO!", &PyTuple_Type, &sockets, &PySet_Type, &listeners,
                          &PySet_Type, &listen_ports, &PyDict_Type, &tcp_names, &PyDict_Type,
                          &classes, &remember, &PyType_Type, &cls))
        return NULL;
    PyTypeObject *type = (PyTypeObject *)cls;
    if (!PyType_IsSubtype(type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "cls must be a tuple subclass");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(sockets);
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    PyObject *middle[22] = {NULL};
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyTuple_GET_ITEM(sockets, i);
        if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 5) goto bad;
        PyObject *s = PyTuple_GET_ITEM(o, 0), *ns = PyTuple_GET_ITEM(o, 1),
                 *owners = PyTuple_GET_ITEM(o, 2);
        if (!PyTuple_Check(s) || PyTuple_GET_SIZE(s) != 18 || !PyTuple_Check(owners)) goto bad;
        PyObject *protocol = PyTuple_GET_ITEM(s, 1), *state = PyTuple_GET_ITEM(s, 2),
                 *laddr = PyTuple_GET_ITEM(s, 3), *lport = PyTuple_GET_ITEM(s, 4),
                 *raddr = PyTuple_GET_ITEM(s, 5), *rport = PyTuple_GET_ITEM(s, 6);
        long proto = PyLong_AsLong(protocol), st = PyLong_AsLong(state);
        if ((proto == -1 || st == -1) && PyErr_Occurred()) goto error;
        PyObject *state_text, *direction;
        if (proto == IPPROTO_TCP_) {
            state_text = PyDict_GetItemWithError(tcp_names, state);
            if (state_text != NULL && PyObject_IsTrue(state_text) == 1) {
                Py_INCREF(state_text);
            } else {
                if (PyErr_Occurred()) goto error;
                state_text = PyObject_Str(state);
                if (state_text == NULL) goto error;
            }
            int r;
            if (st == 10) {
                direction = s_listen;
            } else if ((r = set_has(listen_ports, PyTuple_Pack(2, ns, lport))) <= 0) {
                if (r < 0) goto error_state;
                direction = s_outbound;
            } else {
                direction = s_outbound;
                PyObject *cands[3] = {laddr, s_any4, s_any6};
                for (int k = 0; k < 3; k++) {
                    r = set_has(listeners, PyTuple_Pack(3, ns, cands[k], lport));
                    if (r < 0) goto error_state;
                    if (r) {
                        direction = s_inbound;
                        break;
                    }
                }
            }
            Py_INCREF(direction);
            goto have_state;
        error_state:
            Py_DECREF(state_text);
            goto error;
        } else {
            state_text = st == 1 ? s_established : s_unconnected;
            Py_INCREF(state_text);
            int r = PyObject_IsTrue(rport);
            if (r < 0) {
                Py_DECREF(state_text);
                goto error;
            }
            direction = r ? s_outbound : s_none;
            Py_INCREF(direction);
        }
    have_state:;
        PyObject *klass = PyDict_GetItemWithError(classes, raddr);
        if (klass != NULL) {
            Py_INCREF(klass);
        } else if (PyErr_Occurred() || (klass = PyObject_CallOneArg(remember, raddr)) == NULL) {
            Py_DECREF(state_text);
            Py_DECREF(direction);
            goto error;
        }
        long timer = PyLong_AsLong(PyTuple_GET_ITEM(s, 10));
        if (timer == -1 && PyErr_Occurred()) {
            Py_DECREF(state_text);
            Py_DECREF(direction);
            Py_DECREF(klass);
            goto error;
        }
        /* middle: inode cookie family protocol state direction laddr lport raddr
         * rport class 7 counters keepalive first_seen age uid */
        PyObject *borrowed[22] = {PyTuple_GET_ITEM(s, 7), PyTuple_GET_ITEM(s, 8),
                                  PyTuple_GET_ITEM(s, 0), protocol, NULL, NULL, laddr, lport,
                                  raddr, rport, NULL, PyTuple_GET_ITEM(s, 11),
                                  PyTuple_GET_ITEM(s, 12), PyTuple_GET_ITEM(s, 13),
                                  PyTuple_GET_ITEM(s, 14), PyTuple_GET_ITEM(s, 15),
                                  PyTuple_GET_ITEM(s, 16), PyTuple_GET_ITEM(s, 17),
                                  timer == 2 ? Py_True : Py_False, NULL, NULL,
                                  PyTuple_GET_ITEM(s, 9)};
        for (int k = 0; k < 22; k++) {
            middle[k] = borrowed[k];
            Py_XINCREF(middle[k]);
        }
        middle[4] = state_text;
        middle[5] = direction;
        middle[10] = klass;
        middle[19] = PyNumber_Long(PyTuple_GET_ITEM(o, 3));
        middle[20] = PyNumber_Long(PyTuple_GET_ITEM(o, 4));
        if (middle[19] == NULL || middle[20] == NULL) goto error;
        Py_ssize_t nown = PyTuple_GET_SIZE(owners);
        for (Py_ssize_t w = 0; w < (nown ? nown : 1); w++) {
            PyObject *pid = Py_None, *fd = Py_None, *start = Py_None;
            Py_INCREF(pid);
            Py_INCREF(fd);
            Py_INCREF(start);
            if (nown) {
                PyObject *owner = PyTuple_GET_ITEM(owners, w);
                if (!PyTuple_Check(owner) || PyTuple_GET_SIZE(owner) != 2) goto bad_row;
                PyObject *p = PyTuple_GET_ITEM(owner, 0);
                PyObject *ident = PyObject_GetAttr(p, s_identity);
                if (ident == NULL) goto error_row;
                Py_SETREF(pid, PyObject_GetAttr(ident, s_pid));
                Py_DECREF(ident);
                if (pid == NULL) goto error_row;
                Py_SETREF(start, PyObject_GetAttr(p, s_start_time));
                if (start == NULL) goto error_row;
                Py_SETREF(fd, Py_NewRef(PyTuple_GET_ITEM(owner, 1)));
            }
            PyObject *row = type->tp_alloc(type, 26);
            if (row == NULL) goto error_row;
            PyTuple_SET_ITEM(row, 0, pid);
            PyTuple_SET_ITEM(row, 1, fd);
            for (int k = 0; k < 22; k++) PyTuple_SET_ITEM(row, 2 + k, Py_NewRef(middle[k]));
            PyTuple_SET_ITEM(row, 24, start);
            PyTuple_SET_ITEM(row, 25, Py_NewRef(ns));
            int r = PyList_Append(out, row);
            Py_DECREF(row);
            if (r < 0) goto error;
            continue;
        bad_row:
            PyErr_SetString(PyExc_TypeError, "an owner is not a (process, fd) pair");
        error_row:
            Py_XDECREF(pid);
            Py_XDECREF(fd);
            Py_XDECREF(start);
            goto error;
        }
        for (int k = 0; k < 22; k++) Py_CLEAR(middle[k]);
    }
    return out;
bad:
    PyErr_SetString(PyExc_TypeError, "sockets must be ObservedSocket tuples");
error:
    for (int k = 0; k < 22; k++) Py_CLEAR(middle[k]);
    Py_DECREF(out);
    return NULL;
}

/* ---------------------------------------------------------------- observe */

/* observe(dumps, now, uptime, owners_index, old_seen, reuse, owners_of,
 *         observed_cls, tracked_cls, owner_cls) -> (observed, seen, unresolved)
 * SocketMonitor._observe's loop (kernel/monitor.py), the same records. A
 * single holder's owner tuple is built here when owners_of already resolved
 * its identity object in this call (owners_of(holders) returns () or
 * ((info, fd),) for one holder, info depending on the identity alone within
 * a poll); memo: id(identity) -> (identity, info or None). */
static PyObject *observe(PyObject *self, PyObject *args) {
    PyObject *dumps, *owners_index, *old_seen, *owners_of, *obs_cls, *tracked_cls, *owner_cls;
    PyObject *now_arg;
    double now, uptime;
    int reuse;
    if (!PyArg_ParseTuple(args, "O!OdO!O!pOO!O!O!", &PyList_Type, &dumps, &now_arg, &uptime,
                          &PyDict_Type, &owners_index, &PyDict_Type, &old_seen, &reuse, &owners_of,
                          &PyType_Type, &obs_cls, &PyType_Type, &tracked_cls, &PyType_Type,
                          &owner_cls))
        return NULL;
    PyTypeObject *obs_t = (PyTypeObject *)obs_cls, *tracked_t = (PyTypeObject *)tracked_cls,
                 *owner_t = (PyTypeObject *)owner_cls;
    if (!PyType_IsSubtype(obs_t, &PyTuple_Type) || !PyType_IsSubtype(tracked_t, &PyTuple_Type) ||
        !PyType_IsSubtype(owner_t, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "record classes must be tuple subclasses");
        return NULL;
    }
    now = PyFloat_AsDouble(now_arg);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    /* first_seen of a new socket: the caller's clock value itself */
    PyObject *out = PyList_New(0), *seen = PyDict_New(), *now_obj = Py_NewRef(now_arg);
    PyObject *empty = PyTuple_New(0);
    PyObject *memo = PyDict_New();
    long long unresolved = 0;
    if (!out || !seen || !now_obj || !empty || !memo) goto error;
    for (Py_ssize_t d = 0; d < PyList_GET_SIZE(dumps); d++) {
        PyObject *pair = PyList_GET_ITEM(dumps, d);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyList_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "dumps must be (namespace, [SocketInfo]) pairs");
            goto error;
        }
        PyObject *ns = PyTuple_GET_ITEM(pair, 0), *socks = PyTuple_GET_ITEM(pair, 1);
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(socks); i++) {
            PyObject *s = PyList_GET_ITEM(socks, i);
            if (!PyTuple_Check(s) || PyTuple_GET_SIZE(s) != 18) {
                PyErr_SetString(PyExc_TypeError, "sockets must be SocketInfo tuples");
                goto error;
            }
            PyObject *cookie = PyTuple_GET_ITEM(s, 8);
            PyObject *prev = PyDict_GetItemWithError(old_seen, cookie);
            if (prev == NULL && PyErr_Occurred()) goto error;
            if (prev != NULL && (!PyTuple_Check(prev) || PyTuple_GET_SIZE(prev) != 6)) {
                PyErr_SetString(PyExc_TypeError, "tracked records must be 6-tuples");
                goto error;
            }
            PyObject *fs_obj = prev == NULL ? now_obj : PyTuple_GET_ITEM(prev, 0);
            double fs = PyFloat_AsDouble(fs_obj);
            if (fs == -1.0 && PyErr_Occurred()) goto error;
            double age = now - fs;
            PyObject *ls = PyTuple_GET_ITEM(s, 16), *lr = PyTuple_GET_ITEM(s, 17);
            if (ls != Py_None) {
                double lsd = PyLong_AsDouble(ls);
                double lrd = lr == Py_None ? 0.0 : PyLong_AsDouble(lr);
                if (PyErr_Occurred()) goto error;
                double idle = (lsd > lrd ? lsd : lrd) / 1000.0;
                if (idle > uptime) idle = uptime;
                if (idle > age) age = idle;
            }
            PyObject *inode = PyTuple_GET_ITEM(s, 7);
            int has_inode = PyObject_IsTrue(inode);
            if (has_inode < 0) goto error;
            PyObject *holders = NULL;
            if (has_inode) {
                holders = PyDict_GetItemWithError(owners_index, inode);
                if (holders == NULL && PyErr_Occurred()) goto error;
            }
            PyObject *owners; /* new reference */
            if (holders == NULL) {
                owners = Py_NewRef(empty);
                unresolved++;
            } else {
                if (reuse && prev != NULL && PyTuple_GET_ITEM(prev, 5) == holders) {
                    owners = Py_NewRef(PyTuple_GET_ITEM(prev, 1));
                } else {
                    /* one (identity, fd) holder whose identity was resolved: no call */
                    PyObject *one = NULL, *known = NULL, *key = NULL;
                    if (PyTuple_Check(holders) && PyTuple_GET_SIZE(holders) == 1 &&
                        PyTuple_Check(PyTuple_GET_ITEM(holders, 0)) &&
                        PyTuple_GET_SIZE(PyTuple_GET_ITEM(holders, 0)) == 2) {
                        one = PyTuple_GET_ITEM(holders, 0);
                        key = PyLong_FromVoidPtr(PyTuple_GET_ITEM(one, 0));
                        if (key == NULL) goto error;
                        known = PyDict_GetItemWithError(memo, key);
                        if (known == NULL && PyErr_Occurred()) {
                            Py_DECREF(key);
                            goto error;
                        }
                    }
                    if (known != NULL) {
                        Py_DECREF(key);
                        PyObject *last_info = PyTuple_GET_ITEM(known, 1);
                        if (last_info == Py_None) {
                            owners = Py_NewRef(empty);
                        } else {
                            PyObject *owner = owner_t->tp_alloc(owner_t, 2);
                            owners = owner ? PyTuple_New(1) : NULL;
                            if (owners == NULL) {
                                Py_XDECREF(owner);
                                goto error;
                            }
                            PyTuple_SET_ITEM(owner, 0, Py_NewRef(last_info));
                            PyTuple_SET_ITEM(owner, 1, Py_NewRef(PyTuple_GET_ITEM(one, 1)));
                            PyTuple_SET_ITEM(owners, 0, owner);
                        }
                    } else {
                        owners = PyObject_CallOneArg(owners_of, holders);
                        if (owners == NULL || !PyTuple_Check(owners)) {
                            if (owners != NULL)
                                PyErr_SetString(PyExc_TypeError, "owners_of must return a tuple");
                            Py_XDECREF(owners);
                            Py_XDECREF(key);
                            goto error;
                        }
                        if (key != NULL && PyTuple_GET_SIZE(owners) <= 1) {
                            PyObject *info = Py_None;
                            if (PyTuple_GET_SIZE(owners) == 1) {
                                PyObject *o = PyTuple_GET_ITEM(owners, 0);
                                info = PyTuple_Check(o) && PyTuple_GET_SIZE(o) == 2
                                           ? PyTuple_GET_ITEM(o, 0)
                                           : NULL; /* not an (info, fd) pair: not memoised */
                            }
                            PyObject *entry =
                                info ? PyTuple_Pack(2, PyTuple_GET_ITEM(one, 0), info) : NULL;
                            if (info && (entry == NULL || PyDict_SetItem(memo, key, entry) < 0)) {
                                Py_XDECREF(entry);
                                Py_DECREF(key);
                                Py_DECREF(owners);
                                goto error;
                            }
                            Py_XDECREF(entry);
                        }
                        Py_XDECREF(key);
                    }
                }
                if (PyTuple_GET_SIZE(owners) == 0) unresolved++;
            }
            PyObject *age_obj = PyFloat_FromDouble(age);
            PyObject *rec = age_obj ? obs_t->tp_alloc(obs_t, 5) : NULL;
            if (rec == NULL) {
                Py_XDECREF(age_obj);
                Py_DECREF(owners);
                goto error;
            }
            PyTuple_SET_ITEM(rec, 0, Py_NewRef(s));
            PyTuple_SET_ITEM(rec, 1, Py_NewRef(ns));
            PyTuple_SET_ITEM(rec, 2, Py_NewRef(owners));
            PyTuple_SET_ITEM(rec, 3, Py_NewRef(fs_obj));
            PyTuple_SET_ITEM(rec, 4, age_obj);
            int r = PyList_Append(out, rec);
            Py_DECREF(rec);
            if (r < 0) {
                Py_DECREF(owners);
                goto error;
            }
            PyObject *sent = PyTuple_GET_ITEM(s, 11), *received = PyTuple_GET_ITEM(s, 13);
            PyObject *holders_obj = holders ? holders : Py_None;
            int same = 0;
            if (prev != NULL && PyTuple_GET_ITEM(prev, 1) == owners &&
                PyTuple_GET_ITEM(prev, 5) == holders_obj) {
                same = PyObject_RichCompareBool(PyTuple_GET_ITEM(prev, 3), sent, Py_EQ);
                if (same == 1)
                    same = PyObject_RichCompareBool(PyTuple_GET_ITEM(prev, 4), received, Py_EQ);
                if (same < 0) {
                    Py_DECREF(owners);
                    goto error;
                }
            }
            PyObject *tracked;
            if (same) {
                tracked = Py_NewRef(prev);
            } else {
                tracked = tracked_t->tp_alloc(tracked_t, 6);
                if (tracked == NULL) {
                    Py_DECREF(owners);
                    goto error;
                }
                PyTuple_SET_ITEM(tracked, 0, Py_NewRef(fs_obj));
                PyTuple_SET_ITEM(tracked, 1, Py_NewRef(owners));
                PyTuple_SET_ITEM(tracked, 2, Py_NewRef(PyTuple_GET_ITEM(s, 9)));
                PyTuple_SET_ITEM(tracked, 3, Py_NewRef(sent));
                PyTuple_SET_ITEM(tracked, 4, Py_NewRef(received));
                PyTuple_SET_ITEM(tracked, 5, Py_NewRef(holders_obj));
            }
            Py_DECREF(owners);
            r = PyDict_SetItem(seen, cookie, tracked);
            Py_DECREF(tracked);
            if (r < 0) goto error;
        }
    }
    Py_DECREF(now_obj);
    Py_DECREF(empty);
    Py_DECREF(memo);
    return Py_BuildValue("(NNL)", out, seen, unresolved);
error:
    Py_XDECREF(out);
    Py_XDECREF(seen);
    Py_XDECREF(now_obj);
    Py_XDECREF(empty);
    Py_XDECREF(memo);
    return NULL;
}

/* ------------------------------------------------------ permission events */

#define FAN_META_LEN 24
#define FAN_META_VERSION 3
#define FAN_PERM_EVENTS 0x00070000ULL /* FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM */
#define FAN_ALLOW_ 0x01
#define REPEAT_SLOT 32 /* int32 pid, pad, uint64 dev, uint64 ino, double seen */

static size_t repeat_index(size_t slots, int32_t pid, uint64_t dev, uint64_t ino) {
    uint64_t h = (uint64_t)(uint32_t)pid * 0x9E3779B97F4A7C15ULL ^ dev * 0xC2B2AE3D27D4EB4FULL ^
                 ino * 0x165667B19E3779F9ULL;
    h ^= h >> 29;
    return (size_t)(h % slots);
}

/* The repeat table (a bytearray, one per FanotifyWatcher): a header of
 * REPEAT_HEADER bytes (uint64 repeats allowed here, uint64 longest hold in
 * µs: read by FanotifyWatcher.stats) and 32-byte slots. */
#define REPEAT_HEADER 64

static size_t repeat_slots(const Py_buffer *t) {
    return t->len > REPEAT_HEADER ? (size_t)(t->len - REPEAT_HEADER) / REPEAT_SLOT : 0;
}

/* perm_remember(table, pid, dev, ino, seen): pid was identified opening
 * (dev, ino) at seen (time.monotonic()); one slot per key hash, a collision
 * replaces the older key (it then takes the Python path, which knows it). */
static PyObject *perm_remember(PyObject *self, PyObject *args) {
    Py_buffer table;
    int pid;
    unsigned long long dev, ino;
    double seen;
    if (!PyArg_ParseTuple(args, "w*iKKd", &table, &pid, &dev, &ino, &seen)) return NULL;
    size_t slots = repeat_slots(&table);
    if (slots) {
        unsigned char *slot = (unsigned char *)table.buf + REPEAT_HEADER +
                              repeat_index(slots, pid, dev, ino) * REPEAT_SLOT;
        int32_t p = pid;
        uint64_t d = dev, i = ino;
        memcpy(slot, &p, 4);
        memcpy(slot + 8, &d, 8);
        memcpy(slot + 16, &i, 8);
        memcpy(slot + 24, &seen, 8);
    }
    PyBuffer_Release(&table);
    Py_RETURN_NONE;
}

static long long monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* perm_wait(group_fd, stop_fd, size, self_pid, table, window) -> (rest, read_ns, stopped)
 * The permission group's reader loop for repeat opens, without the GIL:
 * poll the group and stop_fd, read up to size bytes, and allow at once every
 * permission record whose opener (not self_pid) was identified opening the
 * same file (fstat of the event fd: st_dev, st_ino) less than window seconds
 * ago (see perm_remember), closing its fd (FanotifyWatcher._perm_fast_repeat's
 * work); loop until a read leaves other records. Returns them (rest, in
 * order; a record it cannot parse and everything after it untouched) with
 * time.monotonic_ns() of that read, or stopped=True once stop_fd is readable
 * (b"", 0). A run of repeat opens never waits for the interpreter. OSError
 * for a read error other than EAGAIN/EINTR. group_fd is the caller's own dup
 * of the group fd, closed by the caller after the call: a close of the group
 * meanwhile cannot make it answer on a reused descriptor number. */
static PyObject *perm_wait(PyObject *self, PyObject *args) {
    int group_fd, stop_fd, self_pid;
    Py_ssize_t size;
    Py_buffer table;
    double window;
    if (!PyArg_ParseTuple(args, "iiniw*d", &group_fd, &stop_fd, &size, &self_pid, &table,
                          &window))
        return NULL;
    if (size <= 0 || size > (1 << 20) || table.len < REPEAT_HEADER) {
        PyBuffer_Release(&table);
        PyErr_SetString(PyExc_ValueError, "size or table out of range");
        return NULL;
    }
    unsigned char *buf = PyMem_RawMalloc((size_t)size), *rest = PyMem_RawMalloc((size_t)size);
    if (buf == NULL || rest == NULL) {
        PyMem_RawFree(buf);
        PyMem_RawFree(rest);
        PyBuffer_Release(&table);
        return PyErr_NoMemory();
    }
    unsigned char *tab = table.buf;
    size_t slots = repeat_slots(&table);
    int err = 0, stopped = 0;
    long long read_ns = 0;
    size_t kept = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        struct pollfd pfd[2] = {{group_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
        int ready = poll(pfd, 2, -1);
        if (ready < 0) {
            if (errno == EINTR) continue;
            err = errno;
            break;
        }
        if (pfd[1].revents) {
            stopped = 1;
            break;
        }
        if (pfd[0].revents & (POLLERR | POLLNVAL)) {
            err = EBADF;
            break;
        }
        ssize_t n = read(group_fd, buf, (size_t)size);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
            err = errno;
            break;
        }
        read_ns = monotonic_ns();
        double now = (double)read_ns / 1e9;
        size_t off = 0, end = (size_t)n;
        kept = 0;
        while (off + FAN_META_LEN <= end) {
            const unsigned char *r = buf + off;
            uint32_t event_len = rd32(r);
            uint16_t meta_len = rd16(r + 6);
            if (r[4] != FAN_META_VERSION || event_len < FAN_META_LEN ||
                meta_len < FAN_META_LEN || off + event_len > end)
                break; /* the Python parser reports it */
            uint64_t mask = rd64(r + 8);
            int32_t fd = (int32_t)rd32(r + 16), pid = (int32_t)rd32(r + 20);
            int handled = 0;
            struct stat st;
            if ((mask & FAN_PERM_EVENTS) && fd >= 0 && pid != self_pid && slots &&
                fstat(fd, &st) == 0) {
                const unsigned char *slot =
                    tab + REPEAT_HEADER +
                    repeat_index(slots, pid, (uint64_t)st.st_dev, (uint64_t)st.st_ino) *
                        REPEAT_SLOT;
                int32_t sp;
                uint64_t sd, si;
                double seen;
                memcpy(&sp, slot, 4);
                memcpy(&sd, slot + 8, 8);
                memcpy(&si, slot + 16, 8);
                memcpy(&seen, slot + 24, 8);
                if (sp == pid && sd == (uint64_t)st.st_dev && si == (uint64_t)st.st_ino &&
                    seen > 0 && now - seen < window) {
                    struct {
                        int32_t fd;
                        uint32_t response;
                    } answer = {fd, FAN_ALLOW_};
                    (void)!write(group_fd, &answer, sizeof answer); /* ENOENT: answered */
                    uint64_t hold_us = (uint64_t)(monotonic_ns() - read_ns) / 1000, count, max;
                    close(fd);
                    memcpy(&count, tab, 8);
                    memcpy(&max, tab + 8, 8);
                    count++;
                    if (hold_us > max) max = hold_us;
                    memcpy(tab, &count, 8);
                    memcpy(tab + 8, &max, 8);
                    handled = 1;
                }
            }
            if (!handled) {
                memcpy(rest + kept, r, event_len);
                kept += event_len;
            }
            off += event_len;
        }
        if (off < end) { /* an unparsable record: left to the Python parser, with what follows */
            memcpy(rest + kept, buf + off, end - off);
            kept += end - off;
        }
        if (kept) break;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&table);
    PyMem_RawFree(buf);
    PyObject *result = NULL;
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
    } else {
        result = Py_BuildValue("(y#LO)", (const char *)rest, (Py_ssize_t)(stopped ? 0 : kept),
                               stopped ? 0LL : read_ns, stopped ? Py_True : Py_False);
    }
    PyMem_RawFree(rest);
    return result;
}

/* One whole procfs file, as procfs.read_proc_file reads it (one read of
 * 8 KiB; when that filled it, 64 KiB reads to the end); -1 with errno on
 * failure. No GIL here: the bytes object is made by the caller. */
static int slurp(const char *path, char **data, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t cap = 8192, used = 0, want = 8192;
    char *p = malloc(cap);
    if (p == NULL) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    for (;;) {
        if (used + want > cap) {
            char *q = cap < (64u << 20) ? realloc(p, cap * 2 + want) : NULL;
            if (q == NULL) {
                free(p);
                close(fd);
                errno = ENOMEM;
                return -1;
            }
            p = q;
            cap = cap * 2 + want;
        }
        ssize_t got = read(fd, p + used, want);
        if (got < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(p);
            close(fd);
            errno = e;
            return -1;
        }
        used += (size_t)got;
        if (got == 0 || (want == 8192 && got < 8192)) break;
        want = 65536;
    }
    close(fd);
    *data = p;
    *len = used;
    return 0;
}

/* held_reads(base) -> (stat, cmdline, exe, fd0, fd1)
 * What identifies a permission-held opener, read in one go with the GIL
 * released once (not once per syscall: each release lets another thread
 * take the interpreter while the opener waits): base/stat and base/cmdline
 * (bytes), the links base/exe, base/fd/0, base/fd/1 (str, os.fsdecode'd).
 * None for what could not be read; after a failed stat or cmdline nothing
 * more is read (read_opener stops there). */
static PyObject *held_reads(PyObject *self, PyObject *args) {
    PyObject *base_obj;
    if (!PyArg_ParseTuple(args, "O&", PyUnicode_FSConverter, &base_obj)) return NULL;
    const char *base = PyBytes_AS_STRING(base_obj);
    if (strlen(base) > 200) {
        Py_DECREF(base_obj);
        PyErr_SetString(PyExc_ValueError, "proc path too long");
        return NULL;
    }
    char path[256];
    char *files[2] = {NULL, NULL};
    size_t flen[2] = {0, 0};
    int fok[2] = {0, 0};
    char links[3][4096];
    ssize_t llen[3] = {-1, -1, -1};
    static const char *file_names[2] = {"stat", "cmdline"};
    static const char *link_names[3] = {"exe", "fd/0", "fd/1"};
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", base, file_names[i]);
        fok[i] = slurp(path, &files[i], &flen[i]) == 0;
        if (!fok[i]) break;
    }
    if (fok[0] && fok[1]) {
        for (int i = 0; i < 3; i++) {
            snprintf(path, sizeof path, "%s/%s", base, link_names[i]);
            llen[i] = readlink(path, links[i], sizeof links[i]);
            if (llen[i] >= (ssize_t)sizeof links[i]) llen[i] = -1; /* truncated: unknown */
        }
    }
    Py_END_ALLOW_THREADS
    Py_DECREF(base_obj);
    PyObject *items[5] = {NULL};
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        items[i] = fok[i] ? PyBytes_FromStringAndSize(files[i], (Py_ssize_t)flen[i])
                          : Py_NewRef(Py_None);
        free(files[i]);
        ok &= items[i] != NULL;
    }
    for (int i = 0; i < 3; i++) {
        items[2 + i] = llen[i] >= 0 ? PyUnicode_DecodeFSDefaultAndSize(links[i], llen[i])
                                    : Py_NewRef(Py_None);
        ok &= items[2 + i] != NULL;
    }
    if (!ok) {
        for (int i = 0; i < 5; i++) Py_XDECREF(items[i]);
        return NULL;
    }
    return Py_BuildValue("(NNNNN)", items[0], items[1], items[2], items[3], items[4]);
}

/* ------------------------------------------------------------ sqlite_rows */

/* sqlite_rows(rows, kinds) -> list of tuples, or None.
 * What SQLite hands back for rows stored in a table whose column affinities
 * are kinds (bytes, one per column: b'i' INTEGER, b't' TEXT, b'r' REAL,
 * anything else: no fast answer): bools become ints, every other value must
 * already be what the column keeps unchanged (an int within SQLite's 64 bits
 * in an INTEGER column, a str with a UTF-8 form in a TEXT column, a float
 * other than NaN and -0.0 in a REAL column, None anywhere). None when any
 * value is not: the caller then lets SQLite convert. */
static PyObject *sqlite_rows(PyObject *self, PyObject *args) {
    PyObject *rows;
    const char *kinds;
    Py_ssize_t ncols;
    if (!PyArg_ParseTuple(args, "Oy#", &rows, &kinds, &ncols)) return NULL;
    PyObject *seq = PySequence_Fast(rows, "rows must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != ncols) goto fallback;
        PyObject *t = PyTuple_New(ncols);
        if (t == NULL) goto error;
        PyList_SET_ITEM(out, i, t);
        for (Py_ssize_t j = 0; j < ncols; j++) {
            PyObject *v = PyTuple_GET_ITEM(row, j);
            if (v == Py_None) {
                Py_INCREF(v);
            } else if (kinds[j] == 'i' && PyLong_Check(v)) {
                if (PyBool_Check(v)) {
                    v = PyLong_FromLong(v == Py_True);
                    if (v == NULL) goto error;
                } else if (PyLong_CheckExact(v)) {
                    int overflow;
                    PyLong_AsLongLongAndOverflow(v, &overflow);
                    if (overflow) goto fallback;
                    Py_INCREF(v);
                } else {
                    goto fallback;
                }
            } else if (kinds[j] == 't' && PyUnicode_CheckExact(v)) {
                /* text SQLite cannot hold (lone surrogates: no UTF-8) goes to SQLite */
                if (!PyUnicode_IS_ASCII(v) && PyUnicode_AsUTF8AndSize(v, NULL) == NULL) {
                    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) goto error;
                    PyErr_Clear();
                    goto fallback;
                }
                Py_INCREF(v);
            } else if (kinds[j] == 'r' && PyFloat_CheckExact(v)) {
                /* SQLite keeps a REAL as is, except NaN (stored as NULL) and
                 * -0.0 (an integral REAL is kept as an integer: the sign goes) */
                double d = PyFloat_AS_DOUBLE(v);
                if (isnan(d) || (d == 0.0 && signbit(d))) goto fallback;
                Py_INCREF(v);
            } else {
                goto fallback;
            }
            PyTuple_SET_ITEM(t, j, v);
        }
    }
    Py_DECREF(seq);
    return out;
fallback:
    Py_DECREF(seq);
    Py_DECREF(out);
    Py_RETURN_NONE;
error:
    Py_DECREF(seq);
    Py_DECREF(out);
    return NULL;
}

/* ------------------------------------------------------------- json_lines */

/* A growing buffer; with bytes set, the storage is that bytes object (the
 * result is handed out without a copy). */
typedef struct {
    char *p;
    size_t len, cap;
    PyObject *bytes;
} sbuf;

static int sb_grow(sbuf *b, size_t more) {
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + more) cap *= 2;
    if (b->bytes != NULL) {
        if (_PyBytes_Resize(&b->bytes, (Py_ssize_t)cap) < 0) return -1;
        b->p = PyBytes_AS_STRING(b->bytes);
    } else {
        char *p = PyMem_Realloc(b->p, cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->p = p;
    }
    b->cap = cap;
    return 0;
}

static int sb_put(sbuf *b, const char *s, size_t n) {
    if (sb_grow(b, n) < 0) return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* A JSON string as SQLite's json_object writes it: '"' and '\\' escaped,
 * \b \t \n \f \r short, other control characters \u00xx, the rest raw UTF-8.
 * 1 when the text cannot be UTF-8 (lone surrogates): no fast answer. */
static const char hexdigits[] = "0123456789abcdef";
static int sb_json_string(sbuf *b, PyObject *s) {
    Py_ssize_t n;
    const char *u;
    if (PyUnicode_IS_ASCII(s)) {
        u = (const char *)PyUnicode_DATA(s);
        n = PyUnicode_GET_LENGTH(s);
    } else {
        u = PyUnicode_AsUTF8AndSize(s, &n);
        if (u == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                PyErr_Clear();
                return 1;
            }
            return -1;
        }
    }
    if (sb_grow(b, (size_t)n * 6 + 2) < 0) return -1;
    char *o = b->p + b->len;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)u[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\t': *o++ = 't'; break;
        case '\n': *o++ = 'n'; break;
        case '\f': *o++ = 'f'; break;
        case '\r': *o++ = 'r'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hexdigits[c >> 4];
            *o++ = hexdigits[c & 15];
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return 0;
}

/* Decimal text of a 64-bit integer (what SQLite prints for an INTEGER). */
static int sb_int(sbuf *b, long long x) {
    char tmp[24];
    char *e = tmp + sizeof tmp, *p = e;
    unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (x < 0) *--p = '-';
    return sb_put(b, p, (size_t)(e - p));
}

/* json_lines(names, rows, kinds) -> bytes or None: each row, as stored in a
 * table of column affinities kinds (see sqlite_rows), as SQLite's
 * json_object(name, value, ...) writes it (UTF-8), one per line, each line
 * ending in "\n". Values: None, a bool (1/0) or a 64-bit int in an INTEGER column, a
 * str in a TEXT column. None for anything else (a float: SQLite prints REAL
 * its own way; a value the column would convert). Unique names are the
 * caller's business. */
static PyObject *json_lines(PyObject *self, PyObject *args) {
    PyObject *names, *rows;
    const char *kinds;
    Py_ssize_t nkinds;
    if (!PyArg_ParseTuple(args, "O!Oy#", &PyList_Type, &names, &rows, &kinds, &nkinds))
        return NULL;
    if (nkinds != PyList_GET_SIZE(names)) {
        PyErr_SetString(PyExc_ValueError, "one kind per name");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(rows, "rows must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t ncols = PyList_GET_SIZE(names);
    sbuf keys = {0}, b = {0};
    b.bytes = PyBytes_FromStringAndSize(NULL, 1 << 16);
    if (b.bytes == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    b.p = PyBytes_AS_STRING(b.bytes);
    b.cap = 1 << 16;
    size_t *key_end = PyMem_Calloc((size_t)ncols + 1, sizeof *key_end);
    PyObject *result = NULL;
    int r;
    if (key_end == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* '"name":' once per column, in the key buffer */
    for (Py_ssize_t j = 0; j < ncols; j++) {
        PyObject *name = PyList_GET_ITEM(names, j);
        if (!PyUnicode_Check(name)) goto fallback;
        if ((r = sb_json_string(&keys, name)) != 0) goto stop;
        if (sb_put(&keys, ":", 1) < 0) goto done;
        key_end[j + 1] = keys.len;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    /* a row's keys and its punctuation, plus ~8 bytes a value */
    if (sb_grow(&b, (size_t)n * (keys.len + (size_t)ncols * 9 + 3)) < 0) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != ncols) goto fallback;
        if (sb_put(&b, "{", 1) < 0) goto done;
        for (Py_ssize_t j = 0; j < ncols; j++) {
            if (j && sb_put(&b, ",", 1) < 0) goto done;
            if (sb_put(&b, keys.p + key_end[j], key_end[j + 1] - key_end[j]) < 0) goto done;
            PyObject *v = PyTuple_GET_ITEM(row, j);
            if (v == Py_None) {
                if (sb_put(&b, "null", 4) < 0) goto done;
            } else if (kinds[j] == 'i' && PyBool_Check(v)) {
                if (sb_put(&b, v == Py_True ? "1" : "0", 1) < 0) goto done;
            } else if (kinds[j] == 'i' && PyLong_CheckExact(v)) {
                int overflow;
                long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
                if (overflow) goto fallback;
                if (sb_int(&b, x) < 0) goto done;
            } else if (kinds[j] == 't' && PyUnicode_CheckExact(v)) {
                if ((r = sb_json_string(&b, v)) != 0) goto stop;
            } else {
                goto fallback;
            }
        }
        if (sb_put(&b, "}\n", 2) < 0) goto done;
    }
    if (_PyBytes_Resize(&b.bytes, (Py_ssize_t)b.len) < 0) goto done;
    result = b.bytes; /* the buffer itself: no copy */
    b.bytes = NULL;
    goto done;
stop:
    if (r < 0) goto done;
fallback:
    Py_INCREF(Py_None);
    result = Py_None;
done:
    Py_DECREF(seq);
    PyMem_Free(key_end);
    PyMem_Free(keys.p);
    Py_XDECREF(b.bytes);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_dump", parse_dump, METH_VARARGS,
     "parse_dump(buf, end, seq, protocol, out, cls) -> (status, value): one recv of a "
     "sock_diag dump (see readegress.kernel.sockdiag)."},
    {"socket_links", socket_links, METH_VARARGS,
     "socket_links(dir_fd, names, cache) -> (readlinks, [(inode, fd)]): readlinkat of fd names."},
    {"socket_rows", socket_rows, METH_VARARGS,
     "socket_rows(sockets, listeners, listen_ports, tcp_names, classes, remember, cls) -> rows."},
    {"observe", observe, METH_VARARGS,
     "observe(dumps, now, uptime, owners_index, old_seen, reuse, owners_of, observed_cls, "
     "tracked_cls, owner_cls) -> (observed, seen, unresolved)."},
    {"perm_remember", perm_remember, METH_VARARGS,
     "perm_remember(table, pid, dev, ino, seen): an identified opener of (dev, ino)."},
    {"perm_wait", perm_wait, METH_VARARGS,
     "perm_wait(group_fd, stop_fd, size, self_pid, table, window) -> (rest, read_ns, stopped): "
     "the permission reader's loop, repeat opens allowed without the GIL."},
    {"held_reads", held_reads, METH_VARARGS,
     "held_reads(base) -> (stat, cmdline, exe, fd0, fd1): a held opener's identity reads."},
    {"sqlite_rows", sqlite_rows, METH_VARARGS,
     "sqlite_rows(rows, kinds) -> list of tuples or None: rows as SQLite returns them."},
    {"json_lines", json_lines, METH_VARARGS,
     "json_lines(names, rows, kinds) -> bytes or None: rows as SQLite json_object lines."},
    {"count_newlines", count_newlines, METH_VARARGS,
     "count_newlines(data, start, end) -> int: data.count(b'\\n', start, end) with memchr."},
    {"scan_results", scan_results, METH_VARARGS,
     "scan_results(data, first_line, paths, groups, host) -> (n_fast, fast_lines, fields, "
     "n_slow, slow_lines, slow_offsets, slow_data): results-log lines, split (see _logscan.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "readegress._speedups",
    "Compiled hot paths of readegress's socket tables (optional; see readegress.speedups).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    struct {
        PyObject **slot;
        const char *text;
    } strings[] = {
        {&s_listen, "listen"},           {&s_outbound, "outbound"},
        {&s_inbound, "inbound"},         {&s_none, "none"},
        {&s_established, "ESTABLISHED"}, {&s_unconnected, "UNCONNECTED"},
        {&s_any4, "0.0.0.0"},            {&s_any6, "::"},
        {&s_identity, "identity"},       {&s_pid, "pid"},
        {&s_start_time, "start_time"},
    };
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        if (*strings[i].slot == NULL) *strings[i].slot = PyUnicode_InternFromString(strings[i].text);
        if (*strings[i].slot == NULL) return NULL;
    }
    return PyModule_Create(&module);
}
