/*
 * scan_results: the fast path of the fleet engine's line pass (part of readegress._speedups).
 *
 * Input: a batch of results-log lines, joined by newlines (readegress.logs.lines.LineBatch).
 * For each line it either
 *   - proves the line is a plain event line -- a valid JSON object whose "columns" is an
 *     object and whose "hostIdentifier" is a non-empty string -- and extracts the wanted
 *     fields ("paths": (scope, key, output) with scope 0 a top-level key, 1 a key of
 *     "decorations", 2 of "columns") as DuckDB's json_extract_string gives them: the
 *     "fast" rows, already split into fields (one Arrow string column for each path with
 *     `output`; the others are only looked for, for `groups`);
 *   - or hands the line on whole, to be parsed by DuckDB as before: the "slow" rows.
 *
 * The scanner never decides a line is bad: whatever it is not sure DuckDB reads exactly as
 * it would, it leaves to DuckDB (which is the reference: the tests compare the two on
 * random and hostile lines). So a line is slow when it is not strict RFC 8259 JSON, nests
 * deeper than MAX_DEPTH, names a key with a backslash escape, a wanted key twice, or when a
 * wanted value is an object, an array, a string with a \u escape, a number other than a
 * plain integer of at most 18 digits (DuckDB prints "-0" as "0", 1.50 as "1.5"), or when
 * the columns complete one of "groups" (rows of the project's own tables keep their
 * columns' JSON, which DuckDB re-serialises).
 *
 * The pure-Python twin is readegress.fleet.duckdb_engine._Scanner._whole: every line whole.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_logscan.h"

#define MAX_DEPTH 128
#define MAX_PATHS 256
#define MAX_GROUPS 16
#define HASH_SLOTS 512 /* a power of two, twice MAX_PATHS */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, Py_ssize_t more) {
    if (b->len + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    char *p = realloc(b->p, (size_t)cap);
    if (p == NULL) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(buf_t *b, const void *src, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    if (n) memcpy(b->p + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

typedef struct {
    int scope; /* 0 top level, 1 decorations, 2 columns */
    int output; /* a field of the fast rows (else matched for `groups` only) */
    const char *key;
    Py_ssize_t key_len;
    int same;  /* the next path of the same scope and key, or -1 */
    int hnext; /* the next first-of-its-key path in the same hash slot, or -1 */
} path_t;

/* One wanted value found in the current line. */
enum { F_NONE = 0, F_NULL, F_SPAN, F_ESCAPED };
typedef struct {
    int kind;
    int string; /* a JSON string (not true, false or a number) */
    const unsigned char *at;
    Py_ssize_t len;
} found_t;

typedef struct {
    int n, n_out;
    int out[MAX_PATHS]; /* the paths that are fields, in order */
    path_t paths[MAX_PATHS];
    int heads[3][HASH_SLOTS];
    uint64_t lengths[3]; /* length_bit of every key of the scope: most keys are rejected on it */
    int n_groups;
    int group_len[MAX_GROUPS];
    int groups[MAX_GROUPS][MAX_PATHS];
    int host;
} spec_t;

/* Per line. */
typedef struct {
    const spec_t *spec;
    const unsigned char *p, *end;
    found_t found[MAX_PATHS];
    int seen_columns, seen_decorations;
} line_t;

/* Bytes that end a run of plain string bytes: the quote, the backslash, control bytes. */
static const unsigned char string_stop[256] = {[0 ... 0x1f] = 1, ['"'] = 1, ['\\'] = 1};

/* Keys are short and few: their length and first two and last bytes tell them apart well
 * enough (a slot's chain is compared in full). */
static uint32_t key_hash(const unsigned char *s, Py_ssize_t n) {
    if (n == 0) return 0;
    return (uint32_t)n * 131u + (uint32_t)s[0] * 31u + (uint32_t)s[n > 1] * 7u + s[n - 1];
}

static inline uint64_t length_bit(Py_ssize_t n) { return 1ull << (n < 63 ? n : 63); }

static inline void skip_ws(line_t *L) {
    while (L->p < L->end && (*L->p == ' ' || *L->p == '\t' || *L->p == '\r' || *L->p == '\n'))
        L->p++;
}

/* A string at L->p (the opening quote). On success L->p is past the closing quote and
 * *escaped says whether it holds a (simple) escape; *has_u a \u escape. */
static int scan_string(line_t *L, const unsigned char **start, Py_ssize_t *len, int *escaped,
                       int *has_u) {
    const unsigned char *p = L->p + 1, *end = L->end;
    *start = p;
    *escaped = 0;
    *has_u = 0;
    for (;;) {
        while (p < end && !string_stop[*p]) p++;
        if (p >= end || *p < 0x20) return -1;
        if (*p == '"') break;
        /* backslash */
        if (p + 1 >= end) return -1;
        unsigned char c = p[1];
        if (c == 'u') {
            if (p + 6 > end) return -1;
            for (int i = 2; i < 6; i++) {
                unsigned char h = p[i];
                if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F')))
                    return -1;
            }
            *has_u = 1;
            p += 6;
        } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' ||
                   c == 'r' || c == 't') {
            *escaped = 1;
            p += 2;
        } else {
            return -1;
        }
    }
    *len = p - *start;
    L->p = p + 1;
    return 0;
}

/* A number at L->p. *plain: an integer of at most 18 digits, not -0. */
static int scan_number(line_t *L, int *plain) {
    const unsigned char *p = L->p, *end = L->end;
    int neg = 0, digits = 0, is_int = 1;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end) return -1;
    if (*p == '0') {
        p++;
        digits = 1;
        if (p < end && *p >= '0' && *p <= '9') return -1;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') {
            p++;
            digits++;
        }
    } else {
        return -1;
    }
    if (p < end && *p == '.') {
        is_int = 0;
        p++;
        if (p >= end || !(*p >= '0' && *p <= '9')) return -1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_int = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || !(*p >= '0' && *p <= '9')) return -1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    *plain = is_int && digits <= 18 && !(neg && digits == 1 && L->p[1] == '0');
    L->p = p;
    return 0;
}

static int scan_literal(line_t *L, const char *word, Py_ssize_t n) {
    if (L->end - L->p < n || memcmp(L->p, word, (size_t)n) != 0) return -1;
    L->p += n;
    return 0;
}

/* Any JSON value, not kept: validated without recursion (a stack of open brackets). */
static int skip_value(line_t *L) {
    char stack[MAX_DEPTH];
    int depth = 0;
    const unsigned char *s;
    Py_ssize_t n;
    int esc, u, plain;
    for (;;) {
        /* a value */
        skip_ws(L);
        if (L->p >= L->end) return -1;
        unsigned char c = *L->p;
        if (c == '{' || c == '[') {
            if (depth >= MAX_DEPTH) return -1;
            stack[depth++] = (char)c;
            L->p++;
            skip_ws(L);
            if (L->p < L->end && *L->p == (c == '{' ? '}' : ']')) {
                L->p++;
                depth--;
                goto after_value;
            }
            if (c == '{') goto object_key;
            continue;
        } else if (c == '"') {
            if (scan_string(L, &s, &n, &esc, &u) < 0) return -1;
        } else if (c == 't') {
            if (scan_literal(L, "true", 4) < 0) return -1;
        } else if (c == 'f') {
            if (scan_literal(L, "false", 5) < 0) return -1;
        } else if (c == 'n') {
            if (scan_literal(L, "null", 4) < 0) return -1;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            if (scan_number(L, &plain) < 0) return -1;
        } else {
            return -1;
        }
    after_value:
        for (;;) {
            if (depth == 0) return 0;
            skip_ws(L);
            if (L->p >= L->end) return -1;
            char top = stack[depth - 1];
            if (*L->p == ',') {
                L->p++;
                if (top == '{') goto object_key;
                break; /* next array element */
            }
            if (*L->p == (top == '{' ? '}' : ']')) {
                L->p++;
                depth--;
                continue;
            }
            return -1;
        }
        continue;
    object_key:
        skip_ws(L);
        if (L->p >= L->end || *L->p != '"') return -1;
        if (scan_string(L, &s, &n, &esc, &u) < 0) return -1;
        skip_ws(L);
        if (L->p >= L->end || *L->p != ':') return -1;
        L->p++;
    }
}

/* A wanted value: recorded in every path it answers (all of scope `scope`, key s[0:n]). */
static int take_value(line_t *L, int first) {
    const spec_t *S = L->spec;
    found_t f = {F_NONE, 0, NULL, 0};
    skip_ws(L);
    if (L->p >= L->end) return -1;
    unsigned char c = *L->p;
    int esc, u, plain;
    if (c == '"') {
        if (scan_string(L, &f.at, &f.len, &esc, &u) < 0 || u) return -1;
        f.kind = esc ? F_ESCAPED : F_SPAN;
        f.string = 1;
    } else if (c == 't') {
        f.at = L->p;
        if (scan_literal(L, "true", 4) < 0) return -1;
        f.kind = F_SPAN;
        f.len = 4;
    } else if (c == 'f') {
        f.at = L->p;
        if (scan_literal(L, "false", 5) < 0) return -1;
        f.kind = F_SPAN;
        f.len = 5;
    } else if (c == 'n') {
        if (scan_literal(L, "null", 4) < 0) return -1;
        f.kind = F_NULL;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        f.at = L->p;
        if (scan_number(L, &plain) < 0 || !plain) return -1;
        f.kind = F_SPAN;
        f.len = L->p - f.at;
    } else {
        return -1; /* an object or array: DuckDB gives its re-serialised JSON */
    }
    for (int i = first; i >= 0; i = S->paths[i].same) {
        if (L->found[i].kind != F_NONE) return -1; /* a key twice: DuckDB takes the first */
        L->found[i] = f;
    }
    return 0;
}

/* The first path of `scope` named s[0:n] (the others with that key follow it through
 * .same), or -1. */
static int match(const spec_t *S, int scope, const unsigned char *s, Py_ssize_t n) {
    if (!(S->lengths[scope] & length_bit(n))) return -1;
    uint32_t h = key_hash(s, n) & (HASH_SLOTS - 1);
    for (int i = S->heads[scope][h]; i >= 0; i = S->paths[i].hnext)
        if (S->paths[i].key_len == n && memcmp(S->paths[i].key, s, (size_t)n) == 0) return i;
    return -1;
}

/* An object at L->p whose wanted keys are in `scope`: 0 the line itself, whose "columns"
 * and "decorations" objects are scanned in turn as scopes 2 and 1. */
static int scan_fields(line_t *L, int scope) {
    const spec_t *S = L->spec;
    const unsigned char *s;
    Py_ssize_t n;
    int esc, u;
    L->p++; /* { */
    skip_ws(L);
    if (L->p < L->end && *L->p == '}') {
        L->p++;
        return 0;
    }
    for (;;) {
        skip_ws(L);
        if (L->p >= L->end || *L->p != '"') return -1;
        if (scan_string(L, &s, &n, &esc, &u) < 0 || esc || u) return -1;
        skip_ws(L);
        if (L->p >= L->end || *L->p != ':') return -1;
        L->p++;
        int i, inner = 0, *seen = NULL;
        if (scope == 0 && n == 7 && memcmp(s, "columns", 7) == 0) {
            inner = 2;
            seen = &L->seen_columns;
        } else if (scope == 0 && n == 11 && memcmp(s, "decorations", 11) == 0) {
            inner = 1;
            seen = &L->seen_decorations;
        }
        if (inner) {
            /* once, and an object (else DuckDB's answer for its paths is not ours) */
            skip_ws(L);
            if ((*seen)++ || L->p >= L->end || *L->p != '{' || scan_fields(L, inner) < 0)
                return -1;
        } else if ((i = match(S, scope, s, n)) >= 0) {
            if (take_value(L, i) < 0) return -1;
        } else if (skip_value(L) < 0) {
            return -1;
        }
        skip_ws(L);
        if (L->p >= L->end) return -1;
        if (*L->p == ',') {
            L->p++;
            continue;
        }
        if (*L->p == '}') {
            L->p++;
            return 0;
        }
        return -1;
    }
}

/* The whole line: 1 fast, 0 slow. */
static int scan_line(line_t *L) {
    const spec_t *S = L->spec;
    memset(L->found, 0, sizeof(found_t) * (size_t)S->n);
    L->seen_columns = L->seen_decorations = 0;
    skip_ws(L);
    if (L->p >= L->end || *L->p != '{' || scan_fields(L, 0) < 0) return 0;
    skip_ws(L);
    if (L->p != L->end || !L->seen_columns) return 0;
    const found_t *h = &L->found[S->host];
    if (!h->string || h->len == 0) return 0;
    for (int g = 0; g < S->n_groups; g++) {
        int all = 1;
        for (int k = 0; k < S->group_len[g] && all; k++) {
            int kind = L->found[S->groups[g][k]].kind;
            all = kind == F_SPAN || kind == F_ESCAPED;
        }
        if (all) return 0;
    }
    return 1;
}

static int parse_spec(PyObject *paths, PyObject *groups, int host, spec_t *S) {
    Py_ssize_t n = PyTuple_Check(paths) ? PyTuple_GET_SIZE(paths) : -1;
    if (n < 1 || n > MAX_PATHS) {
        PyErr_SetString(PyExc_ValueError, "paths: a tuple of 1 to 256 (scope, key, output)");
        return -1;
    }
    S->n = (int)n;
    S->n_out = 0;
    S->lengths[0] = S->lengths[1] = S->lengths[2] = 0;
    for (int s = 0; s < 3; s++)
        for (int h = 0; h < HASH_SLOTS; h++) S->heads[s][h] = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(paths, i);
        int scope, output;
        const char *key;
        Py_ssize_t key_len;
        if (!PyTuple_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "paths: (scope, key, output) tuples");
            return -1;
        }
        if (!PyArg_ParseTuple(item, "iy#p", &scope, &key, &key_len, &output)) return -1;
        if (scope < 0 || scope > 2) {
            PyErr_SetString(PyExc_ValueError, "paths: scope 0, 1 or 2");
            return -1;
        }
        path_t *p = &S->paths[i];
        p->scope = scope;
        p->output = output;
        if (output) S->out[S->n_out++] = (int)i;
        p->key = key;
        p->key_len = key_len;
        p->same = p->hnext = -1;
        S->lengths[scope] |= length_bit(key_len);
        /* the first path of this key is in the hash table; later ones are chained to it */
        int first = -1;
        for (Py_ssize_t j = 0; j < i && first < 0; j++) {
            path_t *q = &S->paths[j];
            if (q->scope == scope && q->key_len == key_len &&
                memcmp(q->key, key, (size_t)key_len) == 0)
                first = (int)j;
        }
        if (first >= 0) {
            int last = first;
            while (S->paths[last].same >= 0) last = S->paths[last].same;
            S->paths[last].same = (int)i;
        } else {
            uint32_t h = key_hash((const unsigned char *)key, key_len) & (HASH_SLOTS - 1);
            p->hnext = S->heads[scope][h];
            S->heads[scope][h] = (int)i;
        }
    }
    S->n_groups = 0;
    if (!PyTuple_Check(groups) || PyTuple_GET_SIZE(groups) > MAX_GROUPS) {
        PyErr_SetString(PyExc_ValueError, "groups: a tuple of at most 16 tuples of path indices");
        return -1;
    }
    for (Py_ssize_t g = 0; g < PyTuple_GET_SIZE(groups); g++) {
        PyObject *grp = PyTuple_GET_ITEM(groups, g);
        if (!PyTuple_Check(grp) || PyTuple_GET_SIZE(grp) > MAX_PATHS) {
            PyErr_SetString(PyExc_ValueError, "groups: tuples of path indices");
            return -1;
        }
        S->group_len[g] = (int)PyTuple_GET_SIZE(grp);
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(grp); k++) {
            long v = PyLong_AsLong(PyTuple_GET_ITEM(grp, k));
            if (v == -1 && PyErr_Occurred()) return -1;
            if (v < 0 || v >= n) {
                PyErr_SetString(PyExc_ValueError, "groups: a path index out of range");
                return -1;
            }
            S->groups[g][k] = (int)v;
        }
        S->n_groups++;
    }
    if (host < 0 || host >= n || S->paths[host].scope != 0) {
        PyErr_SetString(PyExc_ValueError, "host: the index of a top-level path");
        return -1;
    }
    S->host = host;
    return 0;
}

typedef struct {
    buf_t validity, offsets, data;
} field_t;

static int put_unescaped(buf_t *b, const unsigned char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    char *o = b->p + b->len;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '\\') {
            c = s[++i]; /* scan_string checked: one of " \ / b f n r t */
            switch (c) {
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            default: break;
            }
        }
        *o++ = (char)c;
    }
    b->len = o - b->p;
    return 0;
}

typedef struct {
    Py_ssize_t n_fast, n_slow;
    buf_t fast_lines, slow_lines, slow_offsets, slow_data;
    field_t fields[MAX_PATHS];
} out_t;

static void out_free(out_t *o, int n) {
    free(o->fast_lines.p);
    free(o->slow_lines.p);
    free(o->slow_offsets.p);
    free(o->slow_data.p);
    for (int i = 0; i < n; i++) {
        free(o->fields[i].validity.p);
        free(o->fields[i].offsets.p);
        free(o->fields[i].data.p);
    }
}

/* The scan, without the GIL: 0, or -1 when out of memory. */
static int scan_all(const spec_t *S, const unsigned char *data, Py_ssize_t size,
                    long long first_line, out_t *o, line_t *L) {
    /* Room for every line's offset and validity bit up front: the loop below only
     * appends to the fields' data. */
    Py_ssize_t lines = 1;
    for (const unsigned char *q = data; (q = memchr(q, '\n', (size_t)(data + size - q)));
         q++)
        lines++;
    if (buf_reserve(&o->fast_lines, lines * 8) < 0) return -1;
    for (int j = 0; j < S->n_out; j++) {
        field_t *f = &o->fields[j];
        if (buf_reserve(&f->offsets, (lines + 1) * 4) < 0) return -1;
        if (buf_reserve(&f->validity, lines / 8 + 1) < 0) return -1;
        memset(f->validity.p, 0, (size_t)(lines / 8 + 1));
        ((int32_t *)f->offsets.p)[0] = 0;
    }
    int64_t zero64 = 0;
    if (buf_put(&o->slow_offsets, &zero64, 8) < 0) return -1;
    const unsigned char *p = data, *end = data + size;
    long long line = first_line;
    L->spec = S;
    for (;;) {
        const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
        const unsigned char *e = nl ? nl : end;
        if (e > p) {
            L->p = p;
            L->end = e;
            if (scan_line(L)) {
                Py_ssize_t row = o->n_fast++;
                ((int64_t *)o->fast_lines.p)[row] = line;
                for (int j = 0; j < S->n_out; j++) {
                    field_t *f = &o->fields[j];
                    const found_t *x = &L->found[S->out[j]];
                    if (x->kind == F_SPAN || x->kind == F_ESCAPED) {
                        f->validity.p[row >> 3] |= (char)(1 << (row & 7));
                        if (x->kind == F_SPAN ? buf_put(&f->data, x->at, x->len) < 0
                                              : put_unescaped(&f->data, x->at, x->len) < 0)
                            return -1;
                        if (f->data.len > INT32_MAX) return -1;
                    }
                    ((int32_t *)f->offsets.p)[row + 1] = (int32_t)f->data.len;
                }
            } else {
                int64_t ln = line;
                if (buf_put(&o->slow_lines, &ln, 8) < 0) return -1;
                if (buf_put(&o->slow_data, p, e - p) < 0) return -1;
                int64_t off = o->slow_data.len;
                if (buf_put(&o->slow_offsets, &off, 8) < 0) return -1;
                o->n_slow++;
            }
        }
        line++;
        if (nl == NULL) break;
        p = nl + 1;
    }
    o->fast_lines.len = o->n_fast * 8;
    for (int j = 0; j < S->n_out; j++) {
        o->fields[j].offsets.len = (o->n_fast + 1) * 4;
        o->fields[j].validity.len = (o->n_fast + 7) / 8;
    }
    return 0;
}

/* count_newlines(data, start, end): bytes.count(b"\n", start, end) with memchr, which
 * runs at memory speed (bytes.count checks each byte, with the GIL held). */
PyObject *count_newlines(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &end)) return NULL;
    if (start < 0) start = 0;
    if (end > view.len) end = view.len;
    Py_ssize_t n = 0;
    if (start < end) {
        const char *p = (const char *)view.buf + start, *stop = (const char *)view.buf + end;
        Py_BEGIN_ALLOW_THREADS
        while ((p = memchr(p, '\n', (size_t)(stop - p))) != NULL) {
            n++;
            p++;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(n);
}

static PyObject *as_bytes(const buf_t *b) {
    return PyBytes_FromStringAndSize(b->p ? b->p : "", b->len);
}

PyObject *scan_results(PyObject *self, PyObject *args) {
    Py_buffer view;
    long long first_line;
    PyObject *paths, *groups;
    int host;
    if (!PyArg_ParseTuple(args, "y*LO!O!i", &view, &first_line, &PyTuple_Type, &paths,
                          &PyTuple_Type, &groups, &host))
        return NULL;
    PyObject *result = NULL;
    spec_t *S = calloc(1, sizeof(spec_t));
    out_t *o = calloc(1, sizeof(out_t));
    line_t *L = calloc(1, sizeof(line_t));
    if (S == NULL || o == NULL || L == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (parse_spec(paths, groups, host, S) < 0) goto done;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = scan_all(S, view.buf, view.len, first_line, o, L);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *fields = PyList_New(S->n_out);
    if (fields == NULL) goto done;
    for (int i = 0; i < S->n_out; i++) {
        field_t *f = &o->fields[i];
        PyObject *t = Py_BuildValue("(NNN)", as_bytes(&f->validity), as_bytes(&f->offsets),
                                    as_bytes(&f->data));
        if (t == NULL) {
            Py_DECREF(fields);
            goto done;
        }
        PyList_SET_ITEM(fields, i, t);
    }
    result = Py_BuildValue("(nNNnNNN)", o->n_fast, as_bytes(&o->fast_lines), fields, o->n_slow,
                           as_bytes(&o->slow_lines), as_bytes(&o->slow_offsets),
                           as_bytes(&o->slow_data));
done:
    PyBuffer_Release(&view);
    if (o != NULL && S != NULL) out_free(o, S->n_out);
    free(o);
    free(S);
    free(L);
    return result;
}
