"""Test helpers shipped with readegress: a protocol-faithful osquery core.

Use :class:`OsqueryCore` to test any osquery extension without osqueryd.
"""

from readegress.testing.core import FixtureTable, GenerateCall, OsqueryCore

__all__ = ["FixtureTable", "GenerateCall", "OsqueryCore"]
