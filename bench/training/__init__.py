"""Training: the trainer (steps, checkpoints with exact resume, DDP), its schedule, precision and checkpoint files."""
