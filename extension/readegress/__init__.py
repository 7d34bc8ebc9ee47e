"""readegress: join sensitive file reads to the network egress that follows.

An osquery extension (served over osquery's Thrift extension protocol) and an
embedded SQLite engine over the same tables. See README.md.
"""

__version__ = "0.1.0"
