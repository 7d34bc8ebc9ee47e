/*
 * scan_results: the fast path of the fleet engine's line pass (part of readegress._speedups).
 *
 * Input: a batch of results-log lines, joined by newlines (readegress.logs.lines.LineBatch).
 * For each line it either
 *   - proves the line is a valid JSON object whose "hostIdentifier" is a non-empty string
 *     and whose rows it can read, and extracts the wanted fields ("paths": (scope, key,
 *     output) with scope 0 a top-level key, 1 a key of "decorations", 2 of a row's columns)
 *     as DuckDB's json_extract_string gives them: the "fast" rows, already split into
 *     fields (one Arrow string column for each path with `output` 1; with `derive`, the
 *     paths with `output` 2 -- the columns only the feed reads -- packed into one,
 *     "payload": their values joined by \x1f, \x1e for a NULL (a value holds neither: it
 *     would take a \u escape); the others are only looked for, for `groups`). An event line ("columns" an object) is one row; with
 *     `derive`, a batch or snapshot line (row arrays: "diffResults" {"added", "removed"},
 *     or "snapshot" when there is no diffResults) is a row of its own, then one for each
 *     element of its arrays, numbered from 1 in its array;
 *   - or hands the line on whole, to be parsed by DuckDB as before: the "slow" rows.
 *
 * With `derive` ((the path indices of DERIVE_INPUTS), (a table for each group)), a fast
 * event line must also have a top-level "action" of "added", "removed" or "snapshot" (else
 * DuckDB reports it), and each row comes with the event fields readegress.fleet.sql's
 * derived_sql computes from the same values -- its table, kind, time, pid, parent pid,
 * sure and odd -- and the JSON it keeps (a project table's row: the columns' or the
 * element's text; a line of arrays: ""), so that DuckDB stores the fast rows as they come,
 * with no SQL (derive_row is that SQL's twin for these rows; the tests compare the engine's
 * tables both ways, the kept JSON parsed: DuckDB re-serialises it).
 *
 * The scanner never decides a line is bad: whatever it is not sure DuckDB reads exactly as
 * it would, it leaves to DuckDB (which is the reference: the tests compare the two on
 * random and hostile lines). So a line is slow when it is not strict RFC 8259 JSON (a lone
 * surrogate escape included), nests deeper than MAX_DEPTH, names a key with a backslash
 * escape, a wanted key twice, when a wanted value is an object, an array, a string with a
 * \u escape, a number other than a plain integer of at most 18 digits (DuckDB prints "-0"
 * as "0", 1.50 as "1.5"), when a row array or one of its elements is not what DuckDB
 * explodes without a complaint, or (without `derive`) when the columns complete one of
 * "groups" (rows of the project's own tables keep their JSON).
 *
 * The pure-Python twin is readegress.fleet.duckdb_engine._Scanner.whole: every line whole.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "_logscan.h"

#define MAX_DEPTH 128
#define MAX_PATHS 256
#define MAX_GROUPS 16
#define HASH_SLOTS 512 /* a power of two, twice MAX_PATHS */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} buf_t;

static int buf_grow(buf_t *b, Py_ssize_t more) {
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    char *p = realloc(b->p, (size_t)cap);
    if (p == NULL) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* (inline: a few calls for every value of every line; growing is rare) */
static inline int buf_reserve(buf_t *b, Py_ssize_t more) {
    return b->len + more <= b->cap ? 0 : buf_grow(b, more);
}

static inline int buf_put(buf_t *b, const void *src, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    if (n) memcpy(b->p + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

typedef struct {
    int scope; /* 0 top level, 1 decorations, 2 columns */
    int output; /* 1 a field of the fast rows, 2 packed in their payload (else matched only) */
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
    int n, n_out, n_packed;
    int out[MAX_PATHS];    /* the paths that are fields, in order */
    int packed[MAX_PATHS]; /* the paths packed in the payload, in order */
    path_t paths[MAX_PATHS];
    int heads[3][HASH_SLOTS];
    uint64_t lengths[3]; /* length_bit of every key of the scope: most keys are rejected on it */
    int n_groups;
    int group_len[MAX_GROUPS];
    int groups[MAX_GROUPS][MAX_PATHS];
    int host;
    int derive;         /* compute the event fields (derive_row); take row arrays */
    int dpath[16];      /* the path of each DERIVE_INPUTS value */
    const char *group_tables[MAX_GROUPS]; /* the table each group's rows belong to */
    int n_cols, cols[MAX_PATHS];          /* the paths of scope 2 (columns) */
} spec_t;

/* The values derive_row reads, in the order of the `derive` argument. */
enum {
    D_ACTION, /* top level: the line's action */
    D_OPERATION, D_PID, D_PPID, D_TIME, D_PATH, D_CACTION, D_RADDR, D_RPORT, D_STATUS,
    D_SUCCESS, D_FAMILY, D_CMDLINE, D_PARENT, D_SYSCALL,
    D_N
};

/* The row arrays of a batch or snapshot line. */
enum { ACT_ADDED, ACT_REMOVED, ACT_SNAPSHOT };
static const char *const ACT_WORDS[] = {"added", "removed", "snapshot"};

/* One element of a row array: where its object starts, which array, its 1-based index. */
typedef struct {
    const unsigned char *start;
    int act;
    Py_ssize_t idx;
} elem_t;

/* Per line. */
typedef struct {
    const spec_t *spec;
    const unsigned char *p, *end;
    found_t found[MAX_PATHS];
    int seen_columns, seen_decorations, seen_diff, seen_snapshot;
    const unsigned char *cols_start, *cols_end; /* the "columns" object */
    elem_t *elems;
    Py_ssize_t n_elems, cap_elems;
} line_t;

/* Bytes that end a run of plain string bytes: the quote, the backslash, control bytes. */
static const unsigned char string_stop[256] = {[0 ... 0x1f] = 1, ['"'] = 1, ['\\'] = 1};

/* The first byte at or after p (before end) that string_stop marks, or end. With SSE2
 * (every x86-64), 16 bytes a step while 16 are left in the line, the rest one by one:
 * most of a log is strings (keys, paths, numbers as strings), and the byte loop was a
 * fifth of the scanner's time. */
static inline const unsigned char *string_run(const unsigned char *p, const unsigned char *end) {
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i control = _mm_set1_epi8(0x1f);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        /* a control byte is one whose unsigned min with 0x1f is itself */
        __m128i stop = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
        stop = _mm_or_si128(stop, _mm_cmpeq_epi8(_mm_min_epu8(v, control), v));
        int bits = _mm_movemask_epi8(stop);
        if (bits) return p + __builtin_ctz((unsigned)bits);
        p += 16;
    }
#endif
    while (p < end && !string_stop[*p]) p++;
    return p;
}

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

/* The value of 4 hex digits at p, or -1. */
static int hex4(const unsigned char *p, const unsigned char *end) {
    if (end - p < 4) return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char h = p[i];
        int d = (h >= '0' && h <= '9')   ? h - '0'
                : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                         : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
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
        p = string_run(p, end);
        if (p >= end || *p < 0x20) return -1;
        if (*p == '"') break;
        /* backslash */
        if (p + 1 >= end) return -1;
        unsigned char c = p[1];
        if (c == 'u') {
            /* DuckDB's parser (yyjson) rejects a lone surrogate: a high one must be
             * followed by an escaped low one */
            int code = hex4(p + 2, end);
            if (code < 0 || (code >= 0xDC00 && code <= 0xDFFF)) return -1;
            p += 6;
            if (code >= 0xD800 && code <= 0xDBFF) {
                int low = (p + 1 < end && p[0] == '\\' && p[1] == 'u') ? hex4(p + 2, end) : -1;
                if (low < 0xDC00 || low > 0xDFFF) return -1;
                p += 6;
            }
            *has_u = 1;
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

static int scan_fields(line_t *L, int scope);

static int add_elem(line_t *L, const unsigned char *start, int act, Py_ssize_t idx) {
    if (L->n_elems == L->cap_elems) {
        Py_ssize_t cap = L->cap_elems ? L->cap_elems * 2 : 64;
        elem_t *e = realloc(L->elems, (size_t)cap * sizeof(elem_t));
        if (e == NULL) return -1;
        L->elems = e;
        L->cap_elems = cap;
    }
    L->elems[L->n_elems++] = (elem_t){start, act, idx};
    return 0;
}

/* After a member or an element: 1 past a comma (another follows), 0 past `close`, or -1. */
static inline int separator(line_t *L, char close) {
    skip_ws(L);
    if (L->p >= L->end) return -1;
    if (*L->p == ',') {
        L->p++;
        return 1;
    }
    if (*L->p == close) {
        L->p++;
        return 0;
    }
    return -1;
}

/* A row array at L->p: its elements recorded (each an object: another element is a bad
 * row, which DuckDB reports). */
static int scan_array(line_t *L, int act) {
    skip_ws(L);
    if (L->p >= L->end || *L->p != '[') return -1;
    L->p++;
    skip_ws(L);
    if (L->p < L->end && *L->p == ']') {
        L->p++;
        return 0;
    }
    for (Py_ssize_t idx = 1;; idx++) {
        skip_ws(L);
        if (L->p >= L->end || *L->p != '{') return -1;
        if (add_elem(L, L->p, act, idx) < 0 || skip_value(L) < 0) return -1;
        int more = separator(L, ']');
        if (more <= 0) return more;
    }
}

/* The members of the object at L->p ('{'), whose keys have no escape: `member` reads each
 * value (L->p at it, past the colon). */
typedef int (*member_fn)(line_t *L, const unsigned char *key, Py_ssize_t n, void *ctx);

static inline int walk_object(line_t *L, member_fn member, void *ctx) {
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
        if (member(L, s, n, ctx) < 0) return -1;
        int more = separator(L, '}');
        if (more <= 0) return more;
    }
}

/* A member of "diffResults": "added" and "removed", once each, are row arrays. */
static int diff_member(line_t *L, const unsigned char *s, Py_ssize_t n, void *ctx) {
    int *seen = ctx; /* added, removed */
    if (n == 5 && memcmp(s, "added", 5) == 0) return seen[0]++ ? -1 : scan_array(L, ACT_ADDED);
    if (n == 7 && memcmp(s, "removed", 7) == 0) return seen[1]++ ? -1 : scan_array(L, ACT_REMOVED);
    return skip_value(L);
}

/* "diffResults" at L->p: an object whose "added" and "removed", when there, are row arrays. */
static int scan_diff(line_t *L) {
    int seen[2] = {0, 0};
    skip_ws(L);
    if (L->p >= L->end || *L->p != '{') return -1;
    return walk_object(L, diff_member, seen);
}

static int field_member(line_t *L, const unsigned char *s, Py_ssize_t n, void *ctx);

/* An object at L->p whose wanted keys are in `scope`: 0 the line itself, whose "columns"
 * and "decorations" objects are scanned in turn as scopes 2 and 1. */
static int scan_fields(line_t *L, int scope) { return walk_object(L, field_member, &scope); }

static int field_member(line_t *L, const unsigned char *s, Py_ssize_t n, void *ctx) {
    const spec_t *S = L->spec;
    int scope = *(int *)ctx;
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
        const unsigned char *start = L->p;
        if ((*seen)++ || L->p >= L->end || *L->p != '{' || scan_fields(L, inner) < 0) return -1;
        if (inner == 2) {
            L->cols_start = start;
            L->cols_end = L->p;
        }
        return 0;
    }
    if ((i = match(S, scope, s, n)) >= 0) return take_value(L, i);
    if (scope == 0 && S->derive && n == 11 && memcmp(s, "diffResults", 11) == 0)
        return L->seen_diff++ ? -1 : scan_diff(L);
    if (scope == 0 && S->derive && n == 8 && memcmp(s, "snapshot", 8) == 0)
        return L->seen_snapshot++ ? -1 : scan_array(L, ACT_SNAPSHOT);
    return skip_value(L);
}

/* The first group whose paths all have a value (a row of a project table), or -1. */
static int complete_group(const spec_t *S, const found_t *found) {
    for (int g = 0; g < S->n_groups; g++) {
        int all = 1;
        for (int k = 0; k < S->group_len[g] && all; k++) {
            int kind = found[S->groups[g][k]].kind;
            all = kind == F_SPAN || kind == F_ESCAPED;
        }
        if (all) return g;
    }
    return -1;
}

enum { LINE_SLOW, LINE_EVENT, LINE_ARRAYS };

/* The whole line: LINE_EVENT (a "columns" object), LINE_ARRAYS (row arrays, in L->elems;
 * only with `derive`) or LINE_SLOW. */
static int scan_line(line_t *L) {
    const spec_t *S = L->spec;
    memset(L->found, 0, sizeof(found_t) * (size_t)S->n);
    L->seen_columns = L->seen_decorations = L->seen_diff = L->seen_snapshot = 0;
    L->cols_start = L->cols_end = NULL;
    L->n_elems = 0;
    skip_ws(L);
    if (L->p >= L->end || *L->p != '{' || scan_fields(L, 0) < 0) return LINE_SLOW;
    skip_ws(L);
    if (L->p != L->end) return LINE_SLOW;
    const found_t *h = &L->found[S->host];
    if (!h->string || h->len == 0) return LINE_SLOW;
    if (L->seen_columns) {
        /* (its row arrays, if any, are not rows: DuckDB reads the columns) */
        if (!S->derive) return complete_group(S, L->found) < 0 ? LINE_EVENT : LINE_SLOW;
        const found_t *a = &L->found[S->dpath[D_ACTION]];
        if (!(a->string && a->kind == F_SPAN &&
              ((a->len == 5 && memcmp(a->at, "added", 5) == 0) ||
               (a->len == 7 && memcmp(a->at, "removed", 7) == 0) ||
               (a->len == 8 && memcmp(a->at, "snapshot", 8) == 0))))
            return LINE_SLOW;
        return LINE_EVENT;
    }
    /* no rows at all: DuckDB reports the line */
    return (L->seen_diff || L->seen_snapshot) ? LINE_ARRAYS : LINE_SLOW;
}

/* The elements that are rows: a snapshot array counts only when there is no diffResults. */
static inline int elem_is_row(const line_t *L, const elem_t *e) {
    return !(L->seen_diff && e->act == ACT_SNAPSHOT);
}

/* Element e's object scanned into the columns' values (the previous element's cleared). */
static int scan_elem(line_t *L, const elem_t *e, const unsigned char *line_end) {
    const spec_t *S = L->spec;
    for (int k = 0; k < S->n_cols; k++) L->found[S->cols[k]] = (found_t){F_NONE, 0, NULL, 0};
    L->p = e->start;
    L->end = line_end;
    return scan_fields(L, 2);
}

/* ----- the event fields of a fast row: readegress.fleet.sql.derived_sql's twin ------------
 *
 * (recognise_sql's project tables are the groups', in their order, after the event tables)
 *
 * A value is SQL NULL when absent or JSON null. An escaped string (F_ESCAPED) is never equal
 * to one of the words compared below, never empty and never digits: none of them holds a
 * character JSON escapes. SQL's three-valued logic is kept where it shows: `sure` is NULL
 * (-1 here) when its conjunction has no false term and a NULL one. */

static inline int present(const found_t *x) { return x->kind == F_SPAN || x->kind == F_ESCAPED; }

/* COALESCE(x, '') = '' */
static inline int blank(const found_t *x) { return !present(x) || (x->kind == F_SPAN && x->len == 0); }

static inline int is_word(const found_t *x, const char *w) {
    size_t n = strlen(w);
    return x->kind == F_SPAN && (size_t)x->len == n && memcmp(x->at, w, n) == 0;
}

/* regexp_full_match(x, '[0-9]{1,15}'): -1 NULL, 0, 1. */
static int digits(const found_t *x) {
    if (!present(x)) return -1;
    if (x->kind != F_SPAN || x->len < 1 || x->len > 15) return 0;
    for (Py_ssize_t i = 0; i < x->len; i++)
        if (x->at[i] < '0' || x->at[i] > '9') return 0;
    return 1;
}

static int64_t digits_value(const found_t *x) {
    int64_t v = 0;
    for (Py_ssize_t i = 0; i < x->len; i++) v = v * 10 + (x->at[i] - '0');
    return v;
}

/* SQL AND of three-valued terms (-1 NULL). */
static inline int and3(int a, int b) { return (a == 0 || b == 0) ? 0 : (a < 0 || b < 0) ? -1 : 1; }
static inline int or3(int a, int b) { return (a == 1 || b == 1) ? 1 : (a < 0 || b < 0) ? -1 : 0; }

enum { T_NONE, T_FILE, T_SOCKET, T_PROCESS };
enum { K_NONE, K_READ, K_CONN, K_EXEC, K_FORK };
static const char *const TABLE_NAMES[] = {NULL, "file", "socket", "process"};
static const char *const KIND_NAMES[] = {NULL, "read", "conn", "exec", "fork"};

typedef struct {
    int tbl, kind;
    const char *tbl_name;
    int has_t, has_pid, has_ppid;
    int64_t t, pid, ppid;
    int sure; /* -1 NULL */
    int odd;
} derived_t;

/* recognise_sql's event tables (T_NONE: none of them). */
static int event_table(const spec_t *S, const found_t *found) {
    const found_t *v[D_N];
    for (int i = 0; i < D_N; i++) v[i] = &found[S->dpath[i]];
    if (present(v[D_OPERATION]) && present(v[D_PATH]) && present(v[D_PID])) return T_FILE;
    if (present(v[D_CACTION]) && present(v[D_RADDR])) return T_SOCKET;
    if (present(v[D_CMDLINE]) && present(v[D_PARENT]) && present(v[D_PID])) return T_PROCESS;
    return T_NONE;
}

static void derive_row(const spec_t *S, const found_t *found, derived_t *d) {
    const found_t *v[D_N];
    for (int i = 0; i < D_N; i++) v[i] = &found[S->dpath[i]];
    d->tbl = event_table(S, found);
    int g = d->tbl == T_NONE ? complete_group(S, found) : -1;
    d->tbl_name = g >= 0 ? S->group_tables[g] : TABLE_NAMES[d->tbl];
    int g_time = digits(v[D_TIME]), g_pid = digits(v[D_PID]), g_ppid = digits(v[D_PPID]);
    int g_parent = digits(v[D_PARENT]), g_port = digits(v[D_RPORT]);
    int g_family = digits(v[D_FAMILY]);
    const found_t *status = v[D_STATUS], *success = v[D_SUCCESS], *family = v[D_FAMILY];
    int status_ok = is_word(status, "succeeded") || is_word(status, "in_progress");
    int success_ok = is_word(success, "1") || is_word(success, "true") || is_word(success, "True");
    int family_ok = is_word(family, "2") || is_word(family, "10");
    d->kind = K_NONE;
    if (d->tbl == T_FILE && (is_word(v[D_OPERATION], "open") || is_word(v[D_OPERATION], "read"))) {
        d->kind = K_READ;
    } else if (d->tbl == T_SOCKET && is_word(v[D_CACTION], "connect") &&
               !(!blank(status) && !status_ok) &&
               !(blank(status) && present(success) && !success_ok) && !blank(v[D_RADDR]) &&
               !blank(v[D_RPORT]) && !(g_family == 1 && !family_ok)) {
        d->kind = K_CONN;
    } else if (d->tbl == T_PROCESS) {
        const found_t *sc = v[D_SYSCALL];
        if (blank(sc) || is_word(sc, "execve") || is_word(sc, "execveat"))
            d->kind = K_EXEC;
        else if (is_word(sc, "fork") || is_word(sc, "vfork") || is_word(sc, "clone") ||
                 is_word(sc, "clone3"))
            d->kind = K_FORK;
    }
    d->has_t = g_time == 1;
    d->t = d->has_t ? digits_value(v[D_TIME]) : 0;
    d->has_pid = g_pid == 1;
    d->pid = d->has_pid ? digits_value(v[D_PID]) : 0;
    d->has_ppid = 0;
    d->ppid = 0;
    if (d->kind == K_READ && g_ppid == 1) {
        d->has_ppid = 1;
        d->ppid = digits_value(v[D_PPID]);
    } else if ((d->kind == K_EXEC || d->kind == K_FORK) && g_parent == 1) {
        d->has_ppid = 1;
        d->ppid = digits_value(v[D_PARENT]);
    }
    /* sure: kind = 'conn' AND (status IN (..) OR (COALESCE(status, '') = '' AND success IN
     * (..))) AND (COALESCE(family, '') = '' OR family IN (..)) AND COALESCE(remote_address,
     * '') <> '' AND g_port */
    int is_conn = d->kind == K_NONE ? -1 : d->kind == K_CONN;
    int status_in = present(status) ? status_ok : -1;
    int success_in = present(success) ? success_ok : -1;
    int ok = or3(status_in, and3(blank(status), success_in));
    int sure = and3(is_conn, ok);
    sure = and3(sure, blank(family) || family_ok);
    sure = and3(sure, !blank(v[D_RADDR]));
    d->sure = and3(sure, g_port);
    d->odd = d->kind != K_NONE &&
             (g_pid != 1 || g_time != 1 ||
              (d->kind == K_READ && !blank(v[D_PPID]) && g_ppid == 0) ||
              ((d->kind == K_EXEC || d->kind == K_FORK) && !blank(v[D_PARENT]) && g_parent == 0));
}

static int parse_spec(PyObject *paths, PyObject *groups, int host, PyObject *derive, spec_t *S) {
    Py_ssize_t n = PyTuple_Check(paths) ? PyTuple_GET_SIZE(paths) : -1;
    if (n < 1 || n > MAX_PATHS) {
        PyErr_SetString(PyExc_ValueError, "paths: a tuple of 1 to 256 (scope, key, output)");
        return -1;
    }
    S->n = (int)n;
    S->n_out = S->n_packed = 0;
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
        if (!PyArg_ParseTuple(item, "iy#i", &scope, &key, &key_len, &output)) return -1;
        if (output < 0 || output > 2) {
            PyErr_SetString(PyExc_ValueError, "paths: output 0, 1 or 2");
            return -1;
        }
        if (scope < 0 || scope > 2) {
            PyErr_SetString(PyExc_ValueError, "paths: scope 0, 1 or 2");
            return -1;
        }
        path_t *p = &S->paths[i];
        p->scope = scope;
        p->output = output;
        if (output == 1) S->out[S->n_out++] = (int)i;
        if (output == 2) S->packed[S->n_packed++] = (int)i;
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
    S->n_cols = 0;
    for (int i = 0; i < S->n; i++)
        if (S->paths[i].scope == 2) S->cols[S->n_cols++] = i;
    S->derive = derive != Py_None;
    if (S->derive) {
        PyObject *inputs = NULL, *tables = NULL;
        if (!PyTuple_Check(derive) || PyTuple_GET_SIZE(derive) != 2 ||
            !PyTuple_Check(inputs = PyTuple_GET_ITEM(derive, 0)) ||
            PyTuple_GET_SIZE(inputs) != D_N || !PyTuple_Check(tables = PyTuple_GET_ITEM(derive, 1)) ||
            PyTuple_GET_SIZE(tables) != S->n_groups) {
            PyErr_SetString(PyExc_ValueError,
                            "derive: None or (15 path indices, a table name for each group)");
            return -1;
        }
        for (int g = 0; g < S->n_groups; g++) {
            PyObject *name = PyTuple_GET_ITEM(tables, g);
            if (!PyBytes_Check(name)) {
                PyErr_SetString(PyExc_TypeError, "derive: table names are bytes");
                return -1;
            }
            S->group_tables[g] = PyBytes_AS_STRING(name);
        }
        for (int k = 0; k < D_N; k++) {
            long v = PyLong_AsLong(PyTuple_GET_ITEM(inputs, k));
            if (v == -1 && PyErr_Occurred()) return -1;
            if (v < 0 || v >= n || S->paths[v].scope != (k == D_ACTION ? 0 : 2)) {
                PyErr_SetString(PyExc_ValueError,
                                "derive: a top-level path, then 14 paths of columns");
                return -1;
            }
            S->dpath[k] = (int)v;
        }
    }
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

/* The derived columns of the fast rows: Arrow layouts (validity bitmaps, int64 values,
 * boolean bitmaps). */
enum { O_T, O_PID, O_PPID, O_N_INTS };
typedef struct {
    field_t tbl, kind, keep, payload;
    buf_t idx; /* int64: 0 for a line, the row's 1-based index in its array */
    buf_t int_valid[O_N_INTS], ints[O_N_INTS];
    buf_t sure_valid, sure, odd;
} derived_out_t;

typedef struct {
    Py_ssize_t n_fast, n_slow, cap_rows;
    buf_t fast_lines, slow_lines, slow_offsets, slow_data;
    field_t fields[MAX_PATHS];
    derived_out_t d;
} out_t;

static void field_free(field_t *f) {
    free(f->validity.p);
    free(f->offsets.p);
    free(f->data.p);
}

static void out_free(out_t *o, int n) {
    free(o->fast_lines.p);
    free(o->slow_lines.p);
    free(o->slow_offsets.p);
    free(o->slow_data.p);
    for (int i = 0; i < n; i++) field_free(&o->fields[i]);
    field_free(&o->d.tbl);
    field_free(&o->d.kind);
    field_free(&o->d.keep);
    field_free(&o->d.payload);
    free(o->d.idx.p);
    for (int i = 0; i < O_N_INTS; i++) {
        free(o->d.int_valid[i].p);
        free(o->d.ints[i].p);
    }
    free(o->d.sure_valid.p);
    free(o->d.sure.p);
    free(o->d.odd.p);
}

/* The per-row buffers are written by row number (their len is set at the end): room for
 * `cap` rows, bitmaps zeroed past the old room. */
static int grow_bitmap(buf_t *b, Py_ssize_t old_cap, Py_ssize_t cap) {
    Py_ssize_t old_n = old_cap ? old_cap / 8 + 1 : 0, n = cap / 8 + 1;
    if (buf_reserve(b, n) < 0) return -1;
    memset(b->p + old_n, 0, (size_t)(n - old_n));
    return 0;
}

static int grow_field(field_t *f, Py_ssize_t old_cap, Py_ssize_t cap) {
    if (buf_reserve(&f->offsets, (cap + 1) * 4) < 0) return -1;
    ((int32_t *)f->offsets.p)[0] = 0;
    return grow_bitmap(&f->validity, old_cap, cap);
}

static int grow_rows(out_t *o, const spec_t *S, Py_ssize_t need) {
    Py_ssize_t old = o->cap_rows, cap = old ? old : 1024;
    while (cap < need) cap *= 2;
    if (buf_reserve(&o->fast_lines, cap * 8) < 0) return -1;
    for (int j = 0; j < S->n_out; j++)
        if (grow_field(&o->fields[j], old, cap) < 0) return -1;
    if (S->derive) {
        derived_out_t *d = &o->d;
        if (grow_field(&d->tbl, old, cap) < 0 || grow_field(&d->kind, old, cap) < 0 ||
            grow_field(&d->keep, old, cap) < 0 || grow_field(&d->payload, old, cap) < 0 ||
            buf_reserve(&d->idx, cap * 8) < 0)
            return -1;
        for (int i = 0; i < O_N_INTS; i++)
            if (grow_bitmap(&d->int_valid[i], old, cap) < 0 || buf_reserve(&d->ints[i], cap * 8) < 0)
                return -1;
        if (grow_bitmap(&d->sure_valid, old, cap) < 0 || grow_bitmap(&d->sure, old, cap) < 0 ||
            grow_bitmap(&d->odd, old, cap) < 0)
            return -1;
    }
    o->cap_rows = cap;
    return 0;
}

static inline void set_bit(buf_t *b, Py_ssize_t row) { b->p[row >> 3] |= (char)(1 << (row & 7)); }

/* Bytes (or NULL: at NULL) as row `row` of string field f; `escaped`: JSON string escapes. */
static int put_text(field_t *f, Py_ssize_t row, const void *at, Py_ssize_t n, int escaped) {
    if (at != NULL) {
        set_bit(&f->validity, row);
        if ((escaped ? put_unescaped(&f->data, at, n) : buf_put(&f->data, at, n)) < 0) return -1;
        if (f->data.len > INT32_MAX) return -1;
    }
    ((int32_t *)f->offsets.p)[row + 1] = (int32_t)f->data.len;
    return 0;
}

static int put_word(field_t *f, Py_ssize_t row, const char *w) {
    return put_text(f, row, w, w != NULL ? (Py_ssize_t)strlen(w) : 0, 0);
}

static int put_derived(derived_out_t *o, Py_ssize_t row, const derived_t *d) {
    if (put_word(&o->tbl, row, d->tbl_name) < 0) return -1;
    if (put_word(&o->kind, row, KIND_NAMES[d->kind]) < 0) return -1;
    const int has[O_N_INTS] = {d->has_t, d->has_pid, d->has_ppid};
    const int64_t val[O_N_INTS] = {d->t, d->pid, d->ppid};
    for (int i = 0; i < O_N_INTS; i++) {
        if (has[i]) set_bit(&o->int_valid[i], row);
        ((int64_t *)o->ints[i].p)[row] = has[i] ? val[i] : 0;
    }
    if (d->sure >= 0) set_bit(&o->sure_valid, row);
    if (d->sure == 1) set_bit(&o->sure, row);
    if (d->odd) set_bit(&o->odd, row);
    return 0;
}

/* One fast row: the line's (idx 0) or its array element's (`act`, `idx`: the element's
 * values are in L->found, its action is its array's); `keep` (NULL: none) the JSON its
 * rows keep -- a project table's columns, or "" for a line whose rows are its arrays'. */
static int emit_row(out_t *o, const spec_t *S, const line_t *L, long long line,
                    Py_ssize_t idx, int act, const unsigned char *keep, Py_ssize_t keep_len) {
    Py_ssize_t row = o->n_fast;
    if (row >= o->cap_rows && grow_rows(o, S, row + 1) < 0) return -1;
    o->n_fast++;
    ((int64_t *)o->fast_lines.p)[row] = line;
    for (int j = 0; j < S->n_out; j++) {
        const found_t *x = &L->found[S->out[j]];
        int rc;
        if (act >= 0 && S->out[j] == S->dpath[D_ACTION])
            rc = put_word(&o->fields[j], row, ACT_WORDS[act]);
        else if (x->kind == F_SPAN || x->kind == F_ESCAPED)
            rc = put_text(&o->fields[j], row, x->at, x->len, x->kind == F_ESCAPED);
        else
            rc = put_text(&o->fields[j], row, NULL, 0, 0);
        if (rc < 0) return -1;
    }
    if (S->derive) {
        derived_t dv;
        derive_row(S, L->found, &dv);
        ((int64_t *)o->d.idx.p)[row] = idx;
        if (put_derived(&o->d, row, &dv) < 0 ||
            put_text(&o->d.keep, row, keep, keep_len, 0) < 0)
            return -1;
        buf_t *pl = &o->d.payload.data;
        for (int k = 0; k < S->n_packed; k++) {
            const found_t *x = &L->found[S->packed[k]];
            if (k && buf_put(pl, "\x1f", 1) < 0) return -1;
            if (x->kind == F_SPAN || x->kind == F_ESCAPED) {
                if ((x->kind == F_ESCAPED ? put_unescaped(pl, x->at, x->len)
                                          : buf_put(pl, x->at, x->len)) < 0)
                    return -1;
            } else if (buf_put(pl, "\x1e", 1) < 0) {
                return -1;
            }
        }
        if (pl->len > INT32_MAX) return -1;
        ((int32_t *)o->d.payload.offsets.p)[row + 1] = (int32_t)pl->len;
    }
    return 0;
}

/* The rows of a line of row arrays: itself ("" kept: its rows are its elements'), then
 * each element -- or 0 when an element is not one the scanner takes (nothing emitted). */
static int emit_arrays(out_t *o, const spec_t *S, line_t *L, long long line) {
    const unsigned char *line_end = L->end;
    for (Py_ssize_t k = 0; k < L->n_elems; k++)
        if (elem_is_row(L, &L->elems[k]) && scan_elem(L, &L->elems[k], line_end) < 0) return 0;
    for (int c = 0; c < S->n_cols; c++) L->found[S->cols[c]] = (found_t){F_NONE, 0, NULL, 0};
    if (emit_row(o, S, L, line, 0, -1, (const unsigned char *)"", 0) < 0) return -1;
    for (Py_ssize_t k = 0; k < L->n_elems; k++) {
        const elem_t *e = &L->elems[k];
        if (!elem_is_row(L, e)) continue;
        scan_elem(L, e, line_end); /* it passed above */
        /* (a row keeps its JSON when it is a project table's: arows_raw) */
        int project = event_table(S, L->found) == T_NONE && complete_group(S, L->found) >= 0;
        if (emit_row(o, S, L, line, e->idx, e->act, project ? e->start : NULL,
                     project ? L->p - e->start : 0) < 0)
            return -1;
    }
    return 1;
}

/* The scan, without the GIL: 0, or -1 when out of memory. */
static int scan_all(const spec_t *S, const unsigned char *data, Py_ssize_t size,
                    long long first_line, out_t *o, line_t *L) {
    /* Room for a row a line up front (a line of row arrays may need more). */
    Py_ssize_t lines = 1;
    for (const unsigned char *q = data; (q = memchr(q, '\n', (size_t)(data + size - q)));
         q++)
        lines++;
    if (grow_rows(o, S, lines) < 0) return -1;
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
            int kind = scan_line(L), fast = 0;
            if (kind == LINE_EVENT) {
                int project = S->derive && complete_group(S, L->found) >= 0;
                if (emit_row(o, S, L, line, 0, -1, project ? L->cols_start : NULL,
                             project ? L->cols_end - L->cols_start : 0) < 0)
                    return -1;
                fast = 1;
            } else if (kind == LINE_ARRAYS) {
                fast = emit_arrays(o, S, L, line);
                if (fast < 0) return -1;
            }
            if (!fast) {
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
    Py_ssize_t n = o->n_fast, bits = (n + 7) / 8;
    o->fast_lines.len = n * 8;
    for (int j = 0; j < S->n_out; j++) {
        o->fields[j].offsets.len = (n + 1) * 4;
        o->fields[j].validity.len = bits;
    }
    if (S->derive) {
        derived_out_t *d = &o->d;
        field_t *strings[] = {&d->tbl, &d->kind, &d->keep, &d->payload};
        for (int i = 0; i < 4; i++) {
            strings[i]->offsets.len = (n + 1) * 4;
            strings[i]->validity.len = bits;
        }
        d->idx.len = n * 8;
        for (int i = 0; i < O_N_INTS; i++) {
            d->int_valid[i].len = bits;
            d->ints[i].len = n * 8;
        }
        d->sure_valid.len = d->sure.len = d->odd.len = bits;
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
    PyObject *paths, *groups, *derive = Py_None;
    int host;
    if (!PyArg_ParseTuple(args, "y*LO!O!i|O", &view, &first_line, &PyTuple_Type, &paths,
                          &PyTuple_Type, &groups, &host, &derive))
        return NULL;
    PyObject *result = NULL;
    spec_t *S = calloc(1, sizeof(spec_t));
    out_t *o = calloc(1, sizeof(out_t));
    line_t *L = calloc(1, sizeof(line_t));
    if (S == NULL || o == NULL || L == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (parse_spec(paths, groups, host, derive, S) < 0) goto done;
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
    PyObject *derived = Py_None;
    Py_INCREF(derived);
    if (S->derive) {
        derived_out_t *d = &o->d;
        Py_DECREF(derived);
        derived = Py_BuildValue(
            "((NNN)(NNN)(NN)(NN)(NN)(NN)NN(NNN)(NN))", as_bytes(&d->tbl.validity),
            as_bytes(&d->tbl.offsets), as_bytes(&d->tbl.data), as_bytes(&d->kind.validity),
            as_bytes(&d->kind.offsets), as_bytes(&d->kind.data), as_bytes(&d->int_valid[O_T]),
            as_bytes(&d->ints[O_T]), as_bytes(&d->int_valid[O_PID]), as_bytes(&d->ints[O_PID]),
            as_bytes(&d->int_valid[O_PPID]), as_bytes(&d->ints[O_PPID]),
            as_bytes(&d->sure_valid), as_bytes(&d->sure), as_bytes(&d->odd), as_bytes(&d->idx),
            as_bytes(&d->keep.validity), as_bytes(&d->keep.offsets), as_bytes(&d->keep.data),
            as_bytes(&d->payload.offsets), as_bytes(&d->payload.data));
        if (derived == NULL) {
            Py_DECREF(fields);
            goto done;
        }
    }
    result = Py_BuildValue("(nNNnNNNN)", o->n_fast, as_bytes(&o->fast_lines), fields, o->n_slow,
                           as_bytes(&o->slow_lines), as_bytes(&o->slow_offsets),
                           as_bytes(&o->slow_data), derived);
done:
    PyBuffer_Release(&view);
    if (o != NULL && S != NULL) out_free(o, S->n_out);
    free(o);
    free(S);
    if (L != NULL) free(L->elems);
    free(L);
    return result;
}
