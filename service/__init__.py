"""The service's ground floor, below the database and everything else of the service: settings, the artifact
store and the live-event channel. Torch-free and importing nothing of the project but itself
(tests/test_import_boundaries.py holds it to that)."""
