"""A small webhook receiver that checks every delivery the way yours should: the signature recomputed with
the secret, repeats of a webhook-id answered 200 but not counted twice.

    python -m webhooks.receiver --secret whsec_... --port 9000     # prints each accepted event
    (and submit jobs with "webhook_url": "http://<this host>:9000/"; a private address needs
    O1LORA_WEBHOOK_ALLOW_PRIVATE=1 on the service)

The tests use it in-process: ``fail_first`` answers 500 to the first N attempts of each webhook-id, the way a
flaky receiver would.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from webhooks.signing import SignatureError, verify


class Receiver:
    def __init__(
        self, secret: str, host: str = "127.0.0.1", port: int = 0, fail_first: int = 0, echo: bool = False
    ):
        self.secret, self.fail_first, self.echo = secret, fail_first, echo
        self.lock = threading.Lock()
        self.accepted: dict[str, dict[str, Any]] = {}  # webhook-id -> body, once each
        self.accepted_order: list[str] = []
        self.attempts: Counter[str] = Counter()  # webhook-id -> requests seen
        self.rejected: list[str] = []  # why a request was refused (bad signature...)
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def start(self) -> "Receiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[str]:
        """The accepted events' types, in the order they were accepted (e.g. training.start)."""
        with self.lock:
            return [self.accepted[i]["type"] for i in self.accepted_order]

    def _handle(self, headers: dict[str, str], raw: bytes) -> int:
        try:
            verify(self.secret, headers, raw)
        except SignatureError as e:
            with self.lock:
                self.rejected.append(str(e))
            return 401
        msg_id = headers["webhook-id"]
        with self.lock:
            self.attempts[msg_id] += 1
            if self.attempts[msg_id] <= self.fail_first:
                return 500
            if msg_id not in self.accepted:
                self.accepted[msg_id] = json.loads(raw)
                self.accepted_order.append(msg_id)
                if self.echo:
                    print(msg_id, raw.decode(), flush=True)
        return 200

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                code = receiver._handle({k.lower(): v for k, v in self.headers.items()}, raw)
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):  # quiet: the tests and the printout say what matters
                pass

        return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m webhooks.receiver", description=__doc__.splitlines()[0])
    ap.add_argument("--secret", required=True, help="whsec_... from GET /v1/webhooks/default/secret")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    args = ap.parse_args(argv)
    receiver = Receiver(args.secret, args.host, args.port, echo=True)
    print(f"listening at {receiver.url}", flush=True)
    try:
        receiver.server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
