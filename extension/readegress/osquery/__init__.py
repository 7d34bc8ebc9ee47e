"""osquery's Thrift extension protocol: serve readegress's tables to osqueryd/osqueryi.

- :func:`run_extension` — the ``readegress extension`` entry point.
- :class:`ExtensionRuntime` — serving and registration supervision, with
  injectable tables.
- :class:`ManagerClient` / :class:`ExtensionClient` — thread-safe clients of
  the core and of an extension.
"""

from readegress.osquery.client import (
    ExtensionClient,
    ExtensionInfo,
    ManagerClient,
    OptionInfo,
    OsqueryCallError,
    OsqueryUnavailable,
    Status,
)
from readegress.osquery.runtime import (
    ExtensionArgs,
    ExtensionRuntime,
    parse_extension_args,
    run_extension,
)

__all__ = [
    "ExtensionArgs",
    "ExtensionClient",
    "ExtensionInfo",
    "ExtensionRuntime",
    "ManagerClient",
    "OptionInfo",
    "OsqueryCallError",
    "OsqueryUnavailable",
    "Status",
    "parse_extension_args",
    "run_extension",
]
