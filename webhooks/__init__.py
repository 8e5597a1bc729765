"""Webhooks in the Standard Webhooks convention (the one Replicate uses): a job's events are recorded in the
deliveries table from its row (derive.py) and sent, signed (signing.py), by a sender thread in every worker
(sender.py), never by the API. URLs are checked at request time and again at send time (urls.py).

Stands on db/ and service/ only; torch-free, FastAPI-free.
"""
