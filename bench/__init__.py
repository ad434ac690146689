"""Benchmarks that compare taskexec with raw Celery and Flower in the same run."""
