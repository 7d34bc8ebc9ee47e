"""Event sources: osquery event tables (live or logged) and native kernel sources."""
