"""Server-Sent Events read from lines (the text/event-stream format: `event:` / `data:` fields, a blank line
ends an event, `:` starts a comment). The service sends one JSON document per event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator


@dataclass(frozen=True)
class Event:
    name: str  # snapshot, progress, preview, image, status, error
    data: Any  # the decoded JSON payload


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield Event(name, json.loads("\n".join(data)))
            name, data = "message", []
            continue
        if line.startswith(":"):  # keepalive comments
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    # A stream cut mid-event drops that event: its data may be incomplete JSON.
