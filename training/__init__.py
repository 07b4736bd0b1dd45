"""Training: one trainer that owns a run, and the task definitions (sasv, asv, cm) that say what differs."""
