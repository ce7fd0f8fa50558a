"""Single-machine peers: the same CRM workload written with pandas, DuckDB or Polars."""
