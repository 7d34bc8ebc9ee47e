"""Fleet-wide evaluation of osquery results logs on a columnar engine (DuckDB or Spark)."""
