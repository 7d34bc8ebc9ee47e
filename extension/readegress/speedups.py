"""The optional compiled accelerator, or ``None``: one switch for every caller.

``readegress._speedups`` (``_speedups.c``) is built by setuptools when the
package is installed from source with a C compiler, and ships in the platform
wheels; the ``.ext`` zipapp and the ``_all.deb`` cannot load it (zipimport
loads ``.py`` only) and run the pure-Python code. Each compiled function has a
pure-Python twin next to its caller, which stays the reference: the two give
the same results and the same errors (tests run both).

``READEGRESS_PURE=1`` (any value but empty or ``0``) forces the pure-Python
paths, read once at import.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Optional

PURE_ENV = "READEGRESS_PURE"


def load() -> Optional[ModuleType]:
    """The compiled module, or ``None`` when it is absent or ``READEGRESS_PURE`` is set."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    try:
        from readegress import _speedups
    except ImportError:
        return None
    return _speedups


#: The compiled module this process uses (``None``: pure Python).
native: Optional[ModuleType] = load()
