"""The o1lora client: `O1LoraClient` (Python, over the public HTTP API) and the `o1lora` command built on it.

It imports nothing of the service (no api/, db/, worker/, core/): it talks HTTP only, with the same key as curl.
"""

from client.api import O1LoraClient
from client.errors import ApiError, ClientError, JobEnded

__all__ = ["O1LoraClient", "ApiError", "ClientError", "JobEnded"]
