"""The commands around training: evaluation, robustness, the report, the runner of tables, the benchmark, and
the published numbers they compare against."""
