"""The job runners: Celery tasks (train, generate), runs, the reconciler and DDP ranks; see docs/architecture.md."""
