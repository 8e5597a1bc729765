"""The service's contracts, below both the API and the worker: settings, the job kinds, the one enqueue path,
the artifact store and the live-event channel. Torch-free and free of api/ and worker/ (tests/test_import_
boundaries.py holds it to that), so db/, migrations/, api/ and worker/ can all stand on it."""
