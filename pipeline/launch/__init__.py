"""Launching: where a sweep's jobs run (one GPU per local job, SLURM requeue, the tracking server)."""
