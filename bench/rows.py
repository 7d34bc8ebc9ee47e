"""Synthetic ``socket_bytes`` rows: the real 26 columns with realistic values.

Used where the serving path is measured, not the kernel: the values are
precomputed once (seeded, so every run and both servers get the same rows) and
each table call only builds its row objects from them. The mix mirrors a busy
host: mostly established TCP with byte counts spread over several orders of
magnitude, some IPv6, some listeners, and a few UDP sockets (NULL counters)
and unowned sockets (NULL pid/fd/start_time), because NULLs are where osquery
string conversion differs (``None`` must become ``""``).
"""

from __future__ import annotations

import random
from typing import Any, Optional

Values = tuple[Any, ...]


def synthetic_values(n: int, seed: int = 20251128) -> list[Values]:
    """``n`` value tuples in ``socket_bytes`` column order."""
    rng = random.Random(seed)
    pids = [rng.randrange(300, 60000) for _ in range(40)]
    starts = {p: 1_759_990_000 + rng.randrange(0, 80_000) for p in pids}
    now = 1_760_080_000
    out: list[Values] = []
    for i in range(n):
        v6 = rng.random() < 0.3
        udp = rng.random() < 0.04
        owned = rng.random() > 0.02
        pid: Optional[int] = rng.choice(pids) if owned else None
        family = 10 if v6 else 2
        local = "fd00:3::15" if v6 else "10.0.3.15"
        roll = rng.random()
        if udp:
            connected = roll < 0.5
            state = "ESTABLISHED" if connected else "UNCONNECTED"
            direction = "outbound" if connected else "none"
            remote, rport = ("2606:4700:4700::1111", 53) if v6 else ("1.1.1.1", 53)
            if not connected:
                remote, rport = ("::", 0) if v6 else ("0.0.0.0", 0)
            rclass = "public" if connected else "unspecified"
        elif roll < 0.03:
            state, direction = "LISTEN", "listen"
            remote, rport, rclass = (
                ("::", 0, "unspecified") if v6 else ("0.0.0.0", 0, "unspecified")
            )
        else:
            state = "ESTABLISHED" if roll < 0.9 else rng.choice(("CLOSE_WAIT", "TIME_WAIT"))
            direction = "outbound" if rng.random() < 0.7 else "inbound"
            if v6:
                remote = f"2606:2800:{rng.randrange(65536):x}::{rng.randrange(65536):x}"
            else:
                remote = f"93.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            rport = rng.choice((443, 443, 443, 80, 22, rng.randrange(1024, 65536)))
            rclass = "public"
        if udp or state == "LISTEN":
            sent = acked = received = segs_out = segs_in = None
            last_sent = last_recv = None
        else:
            sent = int(rng.lognormvariate(8.0, 3.0))
            acked = max(0, sent - rng.randrange(0, 1500)) + (direction == "outbound")
            received = int(rng.lognormvariate(9.0, 3.0))
            segs_out = 2 + sent // 1400
            segs_in = 2 + received // 1400
            last_sent = rng.randrange(0, 3_600_000)
            last_recv = rng.randrange(0, 3_600_000)
        if udp:
            last_sent = last_recv = None
        first_seen = now - rng.randrange(0, 86_400)
        out.append(
            (
                pid,
                3 + rng.randrange(4000) if owned else None,
                20_000_000 + 3 * i,
                40_000 + 7 * i + rng.randrange(7),
                family,
                17 if udp else 6,
                state,
                direction,
                local,
                rng.randrange(32768, 61000) if direction != "listen" else 8080,
                remote,
                rport,
                rclass,
                sent,
                acked,
                received,
                segs_out,
                segs_in,
                last_sent,
                last_recv,
                rng.random() < 0.1,
                first_seen,
                now - first_seen,
                rng.choice((0, 0, 1000, 33)),
                starts[pid] if pid is not None else None,
                4026531840 if rng.random() < 0.9 else 4026532200 + rng.randrange(50),
            )
        )
    return out
