"""The job queue, shared by the API and the worker: the job kinds (task name, queue, row functions), the Celery
app and the one enqueue path. Stands on db/ and service/; torch-free, and never imports api/ or worker/."""
