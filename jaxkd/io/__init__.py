"""A run's files: the workdir and its lock, run and model checkpoints, metric logs (JSON lines, TensorBoard,
wandb), paths local or gs://, atomic writes, and stop requests (docs/faults.md)."""
