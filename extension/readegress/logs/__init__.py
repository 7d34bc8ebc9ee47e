"""osquery results logs: the one reader for every format (:mod:`.results`) and
``readegress replay`` (:mod:`.replay`), which correlates a log with the core.
"""
