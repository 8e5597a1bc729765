"""Celery workers (train, generate), the reconciler and the embedded launcher; see docs/architecture.md."""
