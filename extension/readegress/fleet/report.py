"""``readegress fleet report``: detections, prevalence, coverage and top talkers across hosts.

Where the data comes from: an engine's tables (:mod:`readegress.fleet.duckdb_engine`
or :mod:`readegress.fleet.spark_engine`) and the candidates the per-host
Correlators raised from them (:func:`readegress.fleet.pipeline.correlate`),
plus the rows of the extension's own tables as the packs log them
(``read_then_egress``, ``readegress_health``, ``process_net_bytes``,
``socket_bytes``).

Definitions:

- A *pair* is (sender executable, sensitive class, destination network, port)
  where the network is the destination's /24 (IPv4, IPv4-mapped included) or
  /48 (IPv6). Its prevalence counts the hosts with a candidate of that pair at
  any score (below the threshold too: a job that scores low still shows how
  common it is) or a ``read_then_egress`` row of it.
- ``destination_hosts`` of a detection: how many hosts made any egress
  connection to its exact address in the logs.
- ``priority`` = :func:`readegress.detect.priority.priority` (score x host
  criticality x data classification, decorations of the host's lines passed)
  x the prevalence factor ``1 / (1 + log2(pair hosts))`` (1 on one host, 1/2
  on two, 1/3 on four, 1/4 on eight) x 1.5 when no other host contacted the
  destination, rounded. So a job many hosts run sinks, a destination only
  this host talks to rises, and a single-host chain keeps its full weight.
- Detections come from the logs' events (score >= threshold) and from the
  extension's ``read_then_egress`` rows, deduplicated by id (the log-derived
  record wins: it names the log lines).
- Coverage: per host, the latest ``readegress_health`` snapshot's checks that
  are not ok (status = the worst: fail > warn > ok), ``silent`` when its last
  query run is older than the fleet's last by more than ``silent_intervals``
  times its usual interval (median gap between its runs), ``no_events`` when
  it logged no event-table row at all.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from readegress.detect.config import Config
from readegress.detect.core import LONG_LIVED_SECONDS
from readegress.detect.priority import priority
from readegress.fleet.pipeline import Correlated, Engine
from readegress.logs.replay import detection_record
from readegress.net.classify import unmapped_address

#: Extra weight of a destination no other host contacted.
UNIQUE_DESTINATION_WEIGHT = 1.5
STATUS_RANK = {"ok": 0, "warn": 1, "fail": 2}
TOP_N = 20


@functools.lru_cache(maxsize=65536)
def destination_network(address: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) of an address; the address itself if it is none.

    Cached: a fleet's candidates name a few destinations many times, and
    ``ipaddress`` parses slowly.
    """
    a = unmapped_address(address)
    if a is None:
        return address
    prefix = 24 if a.version == 4 else 48
    return str(ipaddress.ip_network(f"{a}/{prefix}", strict=False))


def prevalence_factor(pair_hosts: int, destination_hosts: int) -> float:
    f = 1.0 / (1.0 + math.log2(max(1, pair_hosts)))
    if destination_hosts <= 1:
        f *= UNIQUE_DESTINATION_WEIGHT
    return f


@dataclass
class Pair:
    executable: str
    sensitive_class: str
    destination: str
    port: int
    hosts: set[str] = field(default_factory=set)
    first_seen: float = math.inf
    last_seen: float = -math.inf
    addresses: set[str] = field(default_factory=set)
    #: Hosts where the pair alerted (score >= threshold) with the reader's image
    #: the sender's: what an approval of this pair would suppress.
    approvable: set[str] = field(default_factory=set)

    def add(self, host: str, t: float, address: str, approvable: bool) -> None:
        self.hosts.add(host)
        if approvable:
            self.approvable.add(host)
        self.first_seen = min(self.first_seen, t)
        self.last_seen = max(self.last_seen, t)
        self.addresses.add(address)

    def to_json(self) -> dict[str, Any]:
        return {
            "executable": self.executable,
            "sensitive_class": self.sensitive_class,
            "destination": self.destination,
            "port": self.port,
            "hosts": len(self.hosts),
            "host_names": sorted(self.hosts),
            "approvable_hosts": len(self.approvable),
            "first_seen": int(self.first_seen),
            "last_seen": int(self.last_seen),
        }


def pair_key(executable: str, cls: str, address: str, port: int) -> tuple[str, str, str, int]:
    return (executable, cls, destination_network(address), port)


def _int(v: Any) -> Optional[int]:
    try:
        return int(str(v))
    except (TypeError, ValueError):
        try:
            return int(float(str(v)))
        except (TypeError, ValueError, OverflowError):
            return None


def _in_period(t: Optional[float], since: Optional[float], until: Optional[float]) -> bool:
    if t is None:
        return since is None and until is None
    return (since is None or t >= since) and (until is None or t <= until)


def build_report(
    engine: Engine,
    config: Config,
    correlated: Correlated,
    *,
    decoration_keys: Sequence[str] = (),
    since: Optional[float] = None,
    until: Optional[float] = None,
    silent_intervals: float = 3.0,
    summary: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """The report as one JSON-able document (``--json`` prints it, the HTML draws it)."""
    deco_cols = "".join(f", d_{i}" for i in range(len(decoration_keys)))
    hostinfo: dict[str, dict[str, Any]] = {}
    for r in engine.fetch(
        f"SELECT host, row_count, event_rows, run_times{deco_cols} FROM hostinfo"
    ):
        runs = sorted(int(x) for x in (r[3] or []) if x is not None)
        decorations = {k: r[4 + i] for i, k in enumerate(decoration_keys) if r[4 + i] is not None}
        hostinfo[r[0]] = {
            "rows": r[1],
            "event_rows": r[2],
            "runs": runs,
            "decorations": decorations,
        }

    candidates = [d for d in correlated.candidates if _in_period(d.egress_time, since, until)]
    # Extension rows: read_then_egress as logged by the packs.
    ext: list[dict[str, Any]] = []
    snapshots: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
    # Of the snapshot tables only each host's latest run is used (_talkers): the
    # others are not fetched (a fleet's socket_bytes runs are millions of rows).
    # A superset of what _talkers keeps: its times are _int's, floor of the number.
    for host, tbl, unix_time, cols in engine.fetch(
        """SELECT host, tbl, unix_time, cols FROM (
             SELECT *, FLOOR(TRY_CAST(unix_time AS DOUBLE)) AS ft,
               MAX(FLOOR(TRY_CAST(unix_time AS DOUBLE))) OVER (PARTITION BY host, tbl) AS last
             FROM proj) p
           WHERE tbl = 'read_then_egress' OR ft IS NULL OR ft = last
           ORDER BY file, line, idx"""
    ):
        try:
            row = json.loads(cols) if cols is not None else None
        except ValueError:
            row = None
        if not isinstance(row, dict):
            continue
        t = _int(unix_time)
        if tbl == "read_then_egress":
            if _in_period(_int(row.get("egress_time")), since, until):
                ext.append({"host": host, **row})
        else:
            snapshots.setdefault(tbl, []).append((host, t if t is not None else 0, row))

    # Which hosts contacted each egress-class address (sure egress rows).
    dest_hosts: dict[str, int] = {}
    new_destinations: list[dict[str, Any]] = []
    for addr, hosts, first, first_host in engine.fetch(
        """SELECT e.c_remote_address, count(DISTINCT e.host), min(e.t),
                  min(e.host) FROM ev e JOIN dest d ON d.addr = e.c_remote_address AND d.egress
           WHERE e.kind = 'conn' AND e.sure GROUP BY e.c_remote_address"""
    ):
        dest_hosts[addr] = int(hosts)
        if int(hosts) == 1:
            new_destinations.append({"destination": addr, "host": first_host, "first_seen": first})
    new_destinations.sort(key=lambda x: (-(x["first_seen"] or 0), x["destination"]))

    pairs: dict[tuple[str, str, str, int], Pair] = {}

    def pair_of(exe: str, cls: str, addr: str, port: int) -> Pair:
        k = pair_key(exe, cls, addr, port)
        p = pairs.get(k)
        if p is None:
            p = pairs[k] = Pair(exe, cls, k[2], port)
        return p

    for d in candidates:
        pair_of(d.executable, d.sensitive_class, d.remote_address, d.remote_port).add(
            d.host,
            d.egress_time,
            d.remote_address,
            d.score >= config.threshold and d.reader_executable == d.executable,
        )
    for row in ext:
        port = _int(row.get("remote_port"))
        t = _int(row.get("egress_time"))
        if port is None or t is None:
            continue
        pair_of(
            str(row.get("executable", "")),
            str(row.get("sensitive_class", "")),
            str(row.get("remote_address", "")),
            port,
        ).add(
            row["host"],
            t,
            str(row.get("remote_address", "")),
            row.get("reader_executable") == row.get("executable"),
        )

    def rank(
        host: str, score: int, cls: str, exe: str, addr: str, port: int
    ) -> tuple[int, int, int]:
        deco = hostinfo.get(host, {}).get("decorations") or None
        base = priority(config, score, host, cls, deco)
        p = pairs.get(pair_key(exe, cls, addr, port))
        n_pair = len(p.hosts) if p is not None else 1
        n_dest = max(dest_hosts.get(addr, 1), 1)
        return round(base * prevalence_factor(n_pair, n_dest)), n_pair, n_dest

    detections: list[dict[str, Any]] = []
    seen: set[str] = set()
    threshold = config.threshold
    for d in candidates:
        if d.score < threshold or d.id in seen:
            continue
        seen.add(d.id)
        rec = detection_record(d)
        rec["priority"], rec["prevalence_hosts"], rec["destination_hosts"] = rank(
            d.host, d.score, d.sensitive_class, d.executable, d.remote_address, d.remote_port
        )
        rec["origin"] = "events"
        detections.append(rec)
    for row in ext:
        rid = str(row.get("id", ""))
        score = _int(row.get("score"))
        port = _int(row.get("remote_port"))
        if not rid or rid in seen or score is None or port is None:
            continue
        seen.add(rid)
        rec = dict(row)
        rec["score"], rec["remote_port"] = score, port
        for k in ("pid", "read_time", "egress_time", "reader_pid", "uid", "auid", "bytes_sent"):
            if k in rec:
                rec[k] = _int(rec[k])
        rec["priority"], rec["prevalence_hosts"], rec["destination_hosts"] = rank(
            row["host"], score, str(row.get("sensitive_class", "")),
            str(row.get("executable", "")), str(row.get("remote_address", "")), port,
        )  # fmt: skip
        rec["origin"] = "read_then_egress"
        detections.append(rec)
    detections.sort(key=lambda r: (-r["priority"], -(r.get("egress_time") or 0), r["id"]))

    coverage = _coverage(hostinfo, snapshots.get("readegress_health", []), silent_intervals)
    top_egress, long_lived = _talkers(snapshots)
    prevalence = sorted(
        (p.to_json() for p in pairs.values()),
        key=lambda p: (-p["hosts"], p["executable"], p["sensitive_class"], p["destination"]),
    )
    return {
        "summary": {
            **(summary or {}),
            "hosts": len(hostinfo),
            "detections": len(detections),
            "candidates": len(candidates),
            "core": correlated.core,
        },
        "detections": detections,
        "prevalence": prevalence,
        "new_destinations": new_destinations[:200],
        "coverage": coverage,
        "top_egress": top_egress,
        "long_lived_sockets": long_lived,
    }


def _coverage(
    hostinfo: dict[str, dict[str, Any]],
    health: list[tuple[str, int, dict[str, Any]]],
    silent_intervals: float,
) -> list[dict[str, Any]]:
    latest: dict[str, int] = {}
    for host, t, _ in health:
        latest[host] = max(latest.get(host, t), t)
    checks: dict[str, list[dict[str, Any]]] = {}
    for host, t, row in health:
        if t == latest[host] and str(row.get("status", "ok")) != "ok":
            checks.setdefault(host, []).append(
                {k: row.get(k) for k in ("name", "status", "value", "detail", "fix")}
            )
    fleet_last = max((i["runs"][-1] for i in hostinfo.values() if i["runs"]), default=0)
    out = []
    for host in sorted(hostinfo):
        info = hostinfo[host]
        runs = info["runs"]
        cs = checks.get(host, [])
        status = max((str(c.get("status")) for c in cs), key=lambda s: STATUS_RANK.get(s, 1),
                     default="ok")  # fmt: skip
        problems = [] if status == "ok" else [status]
        gaps = [b - a for a, b in zip(runs, runs[1:]) if b > a]
        interval = statistics.median(gaps) if gaps else None
        silent_for = fleet_last - runs[-1] if runs else None
        if interval and silent_for is not None and silent_for > silent_intervals * interval:
            problems.append("silent")
        if not info["event_rows"]:
            problems.append("no_events")
        out.append(
            {
                "host": host,
                "status": ",".join(problems) if problems else "ok",
                "checks": cs,
                "last_seen": runs[-1] if runs else None,
                "silent_seconds": silent_for,
                "interval_seconds": interval,
                "event_rows": info["event_rows"],
                "rows": info["rows"],
            }
        )
    out.sort(key=lambda c: (c["status"] == "ok", c["host"]))
    return out


def _talkers(
    snapshots: dict[str, list[tuple[str, int, dict[str, Any]]]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def latest(rows: list[tuple[str, int, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        last: dict[str, int] = {}
        for host, t, _ in rows:
            last[host] = max(last.get(host, t), t)
        return [(h, r) for h, t, r in rows if t == last[h]]

    procs: list[dict[str, Any]] = []
    for host, r in latest(snapshots.get("process_net_bytes", [])):
        sent = _int(r.get("total_bytes_sent"))
        if sent is None:
            continue
        procs.append(
            {
                "host": host,
                "pid": _int(r.get("pid")),
                "executable": r.get("path") or r.get("name"),
                "total_bytes_sent": sent,
                "total_bytes_received": _int(r.get("total_bytes_received")),
                "outbound_sockets": _int(r.get("outbound_sockets")),
                "oldest_outbound_age_seconds": _int(r.get("oldest_outbound_age_seconds")),
            }
        )
    procs.sort(key=lambda p: (-p["total_bytes_sent"], p["host"], p["pid"] or 0))
    socks: list[dict[str, Any]] = []
    for host, r in latest(snapshots.get("socket_bytes", [])):
        age = _int(r.get("age_seconds"))
        if age is None or age < LONG_LIVED_SECONDS or r.get("direction") not in (None, "outbound"):
            continue
        socks.append(
            {
                "host": host,
                "pid": _int(r.get("pid")),
                "remote_address": r.get("remote_address"),
                "remote_port": _int(r.get("remote_port")),
                "remote_class": r.get("remote_class"),
                "age_seconds": age,
                "bytes_sent": _int(r.get("bytes_sent")),
                "keepalive": r.get("keepalive"),
            }
        )
    socks.sort(key=lambda s: (-s["age_seconds"], s["host"], s["pid"] or 0))
    return procs[:TOP_N], socks[:TOP_N]
