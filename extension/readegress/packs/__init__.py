"""Query packs from one source: ``packs/src/*.toml`` → every format under ``packs/``.

- :mod:`readegress.packs.source` reads the source files (one per query, plus
  ``packs.toml`` for the packs), keeping the line of every key for errors.
- :mod:`readegress.packs.formats` renders the osquery pack JSON, the Fleet
  documents (``kind: report``/``kind: query``/``kind: label``/legacy
  ``kind: pack``), the GitOps files and the agent options.
- :mod:`readegress.packs.check` validates the source and the generated files
  (``readegress packs check``).
- :mod:`readegress.packs.osquery_schema` holds the columns of osquery's own
  tables the packs use.
"""
