"""The run config: its defaults, the command-line overrides, and the checks every key passes before a run."""
