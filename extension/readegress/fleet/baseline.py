"""``readegress fleet baseline``: propose approved pairs from what many hosts do.

From the report's prevalence (:mod:`readegress.fleet.report`): every pair
(sender executable, class, destination network, port) that alerted, with the
sender's image the reader's (what an approval suppresses), on at least
``min_hosts`` hosts, and never one seen on a single host (a destination only
one host reached is the rare chain the report must keep, whatever
``min_hosts`` says). Pairs already approved raise no candidate, so they are
not proposed again.

The output is a config file on its own: only ``[[approved]]`` entries, each
with a comment (how many hosts, which, since when) and an owner to fill in,
so ``readegress replay --config FILE`` (or ``--config BASE --config FILE``,
later files extending earlier ones) takes it as is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from typing import Any, Optional

OWNER_PLACEHOLDER = "TO FILL IN: the team that answers for this job"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def proposed_pairs(
    prevalence: Sequence[dict[str, Any]],
    min_hosts: int,
    known_classes: Optional[Collection[str]] = None,
) -> list[dict[str, Any]]:
    """Pairs to propose; a class the config does not know (an extension row from a
    host with another catalogue) is left out: the file would not load."""
    need = max(int(min_hosts), 2)
    return [
        p
        for p in prevalence
        if int(p.get("approvable_hosts", 0)) >= need
        and (known_classes is None or p["sensitive_class"] in known_classes)
    ]


def baseline_toml(
    prevalence: Sequence[dict[str, Any]],
    min_hosts: int,
    *,
    sources: Sequence[str] = (),
    known_classes: Optional[Collection[str]] = None,
) -> str:
    pairs = proposed_pairs(prevalence, min_hosts, known_classes)
    out = [
        "# readegress fleet baseline: approved jobs proposed from the fleet's results logs.",
        f"# Pairs seen on at least {max(min_hosts, 2)} hosts; a pair seen on one host only",
        "# is never proposed. Review every entry and set its owner before use.",
    ]
    if sources:
        out.append("# From: " + ", ".join(sources))
    out.append(f"# {len(pairs)} pairs.")
    for p in pairs:
        hosts = p.get("host_names") or []
        reason = f"fleet baseline: {p['approvable_hosts']} hosts since {_when(p['first_seen'])}"
        shown = ", ".join(hosts[:5]) + (f" and {len(hosts) - 5} more" if len(hosts) > 5 else "")
        out += [
            "",
            "[[approved]]",
            f"# alerted on {p['approvable_hosts']} hosts ({shown}) since {_when(p['first_seen'])},"
            f" last {_when(p['last_seen'])}",
            f"executable = {json.dumps(p['executable'])}",
            f"class = {json.dumps(p['sensitive_class'])}",
        ]
        if "/" in str(p["destination"]):
            out.append(f"destination = {json.dumps(p['destination'])}")
        out += [
            f"port = {int(p['port'])}",
            f"owner = {json.dumps(OWNER_PLACEHOLDER)}",
            f"reason = {json.dumps(reason)}",
        ]
    return "\n".join(out) + "\n"
