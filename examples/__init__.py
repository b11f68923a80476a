"""Runnable examples of flamingock-async pipelines; run them from the repository root."""
