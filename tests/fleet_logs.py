"""Random multi-host results logs for the fleet engines' property tests (hypothesis).

Small pid spaces and few parents, so pid reuse, lineage, siblings and
pipelines happen; catalogue reads of every level among common reads; connects
to public, private and loopback addresses with every status; the three line
formats, numerics on and off, and now and then a row with odd values (a pid
with a space, a float time) that SQL cannot read exactly as Python does.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

HOSTS = ("h1.example.com", "h2.example.com")
PATHS = (
    "/etc/shadow", "/root/.ssh/id_rsa", "/home/alice/.aws/credentials", "/etc/passwd",
    "/etc/hosts", "/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt", "/etc/group",
)  # fmt: skip
EXES = ("/usr/bin/curl", "/usr/bin/bash", "/usr/bin/tar", "/usr/bin/ssh", "/usr/bin/nc")
ADDRESSES = ("45.33.32.156", "140.82.112.3", "10.0.0.7", "127.0.0.53", "2a00:1450:4001::5")
STATUSES = ("succeeded", "in_progress", "failed", "")
PIDS = st.integers(min_value=100, max_value=106)
PARENTS = st.sampled_from([1, 50, 51, 100, 101, 102])
AUID_UNSET = 4294967295


@st.composite
def event_rows(draw: Any) -> tuple[str, dict[str, Any]]:
    """(host, columns) of one event-table row, with strings or numbers."""
    host = draw(st.sampled_from(HOSTS))
    kind = draw(st.sampled_from(["read", "read", "conn", "conn", "exec", "fork", "other"]))
    pid = draw(PIDS)
    t = 1_700_000_000 + draw(st.integers(min_value=0, max_value=150))
    # A process keeps its parent, uid and image most of the time (so runs of equal
    # observations happen), and now and then changes them (exec, pid reuse).
    stable = draw(st.integers(0, 5)) > 0
    uid = (0, 1000, 1001)[pid % 3] if stable else draw(st.sampled_from([0, 1000, 1001]))
    exe = EXES[pid % len(EXES)] if draw(st.integers(0, 3)) > 0 else draw(st.sampled_from(EXES))
    parent = (50, 51, 100, 101, 1)[pid % 5] if stable else draw(PARENTS)
    # The login uid, or unset (a daemon's process): then the core relates a reader to a
    # sender by uid alone, which osquery's socket rows leave out (they carry no uid).
    auid = uid if pid % 2 == 0 else AUID_UNSET
    if not stable and draw(st.booleans()):
        auid = draw(st.sampled_from([uid, AUID_UNSET]))
    if kind == "read":
        cols: dict[str, Any] = {
            "operation": draw(st.sampled_from(["open", "read", "open", "close", "write"])),
            "pid": pid, "ppid": parent, "time": t, "executable": exe,
            "path": draw(st.sampled_from(PATHS)), "uid": uid, "auid": auid, "eid": 1,
        }  # fmt: skip
    elif kind == "conn":
        status = draw(st.sampled_from(STATUSES))
        cols = {
            "action": draw(st.sampled_from(["connect", "connect", "connect", "bind", "accept"])),
            "pid": pid, "path": exe, "auid": auid, "family": draw(st.sampled_from([2, 10, 1])),
            "remote_address": draw(st.sampled_from(ADDRESSES)),
            "remote_port": draw(st.sampled_from([443, 8443, 22, 4444])), "time": t,
            "success": draw(st.sampled_from([1, 0])), "status": status,
        }  # fmt: skip
        # osquery on Linux logs protocol 0; a UDP connect (17) to an uncommon
        # port is not raw TCP, so it changes the reasons.
        protocol = draw(st.sampled_from([None, 0, 6, 17]))
        if protocol is not None:
            cols["protocol"] = protocol
    elif kind in ("exec", "fork"):
        syscall = draw(st.sampled_from(["execve", "fork", "clone", "vfork", ""]))
        cols = {
            "pid": pid, "parent": parent, "path": exe, "cmdline": f"{exe} x",
            "uid": uid, "auid": auid, "time": t, "syscall": syscall,
        }  # fmt: skip
    else:
        cols = {"name": "x", "value": draw(st.integers(0, 9))}
    if kind in ("read", "exec") and draw(st.integers(0, 4)) == 0:
        # A field left out (or empty): the row names less of its process than others do.
        gone = draw(st.sampled_from(["ppid" if kind == "read" else "parent", "uid", "auid"]))
        if draw(st.booleans()):
            del cols[gone]
        else:
            cols[gone] = ""
    if draw(st.integers(0, 30)) == 0:  # an odd value now and then
        cols["pid" if "pid" in cols else "time"] = draw(st.sampled_from([f" {pid}", f"{t}.0", ""]))
    if draw(st.booleans()):  # --logger_numerics off: every value a string
        cols = {k: str(v) for k, v in cols.items()}
    return host, cols


def _header(host: str, t: int, numerics: bool) -> dict[str, Any]:
    return {
        "name": "pack_x", "hostIdentifier": host, "calendarTime": "x", "unixTime": t,
        "epoch": 0, "counter": 0, "numerics": numerics,
        "decorations": {"role": "web" if host.startswith("h1") else "db"},
    }  # fmt: skip


@st.composite
def results_logs(draw: Any) -> str:
    """A log: event-format lines, with batch and snapshot lines among them."""
    rows = draw(st.lists(event_rows(), min_size=1, max_size=80))
    lines = []
    i = 0
    while i < len(rows):
        fmt = draw(st.sampled_from(["event", "event", "event", "batch", "snapshot"]))
        host = rows[i][0]
        numerics = draw(st.booleans())
        if fmt == "event":
            obj = _header(host, 1_700_000_500, numerics)
            obj["columns"] = rows[i][1]
            obj["action"] = draw(st.sampled_from(["added", "added", "added", "removed"]))
            i += 1
        else:
            n = draw(st.integers(1, 4))
            group = [c for h, c in rows[i : i + n]]
            i += n
            obj = _header(host, 1_700_000_500, numerics)
            if fmt == "batch":
                obj["diffResults"] = {"added": group, "removed": []}
            else:
                obj["snapshot"] = group
                obj["action"] = "snapshot"
        lines.append(json.dumps(obj, separators=(",", ":")))
    return "\n".join(lines) + "\n"
