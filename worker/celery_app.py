"""The worker's Celery entry point:

    celery -A worker.celery_app worker -Q train            # a training worker (GPU)
    celery -A worker.celery_app worker -Q generate         # a generation worker (GPU, keeps the model resident)

The app and every Celery setting live in jobqueue.celery_app (the API sends through the same app); its
``include`` makes the worker import worker.tasks, the only module that registers task code.
"""

from jobqueue.celery_app import app  # noqa: F401
