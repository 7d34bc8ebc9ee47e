"""Priority: a detection's score weighed by what is at stake.

``priority = round(score * host criticality weight * data classification weight)``

- The host's criticality comes from the config's ``[[asset]]`` rules (hostname
  globs, or an osquery decoration's value in results logs); the highest-
  weighted matching rule wins, and a host no rule names has
  ``default_criticality`` (medium, weight 1.0).
- The class's data classification comes from its ``classification`` key, else
  from its level (high → restricted, medium → confidential, low → internal).

With no ``[[asset]]`` rules and the shipped weights, priority is the score
times 1.5 for the high (restricted) classes and 1.2 for the medium ones: the
threshold still applies to the score, priority only orders what crossed it.
Pure functions of the config: the extension, replay, watch and the fleet
report all call these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from readegress.detect.config import LEVEL_CLASSIFICATION, Config


def host_criticality(
    config: Config, host: str, decorations: Optional[Mapping[str, Any]] = None
) -> str:
    """The criticality level of a host (the heaviest matching ``[[asset]]`` rule)."""
    best = config.default_criticality
    best_w = -1.0
    for rule in config.assets:
        w = config.criticality_weights.get(rule.criticality, 1.0)
        if w > best_w and rule.matches(host, decorations):
            best, best_w = rule.criticality, w
    return best


def data_classification(config: Config, sensitive_class: str) -> str:
    """The data classification of a sensitive class."""
    cl = config.classifications.get(sensitive_class)
    if cl is not None:
        return cl
    c = config.catalogue.by_name.get(sensitive_class)
    return LEVEL_CLASSIFICATION.get(c.level, "internal") if c is not None else "internal"


def priority(
    config: Config,
    score: int,
    host: str,
    sensitive_class: str,
    decorations: Optional[Mapping[str, Any]] = None,
) -> int:
    """``round(score * criticality weight * classification weight)``."""
    crit = config.criticality_weights.get(host_criticality(config, host, decorations), 1.0)
    cls = config.classification_weights.get(data_classification(config, sensitive_class), 1.0)
    return round(score * crit * cls)
