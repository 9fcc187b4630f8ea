"""Launching: how a sweep becomes jobs (the grid), and where those jobs run."""
