"""A small reader of text/event-stream responses, for the tests and the benchmarks."""

import json
from dataclasses import dataclass


@dataclass
class Event:
    id: str | None
    data: dict | None
    comment: str | None = None
    retry: int | None = None


def iter_events(lines):
    """Group the lines of an SSE response into events (comments come as events too)."""
    event_id = retry = None
    data_lines = []
    for line in lines:
        if line == "":
            if data_lines:
                yield Event(id=event_id, data=json.loads("\n".join(data_lines)), retry=retry)
            event_id = retry = None
            data_lines = []
        elif line.startswith(":"):
            yield Event(id=None, data=None, comment=line[1:].strip())
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data_lines.append(line[5:].lstrip())
        elif line.startswith("retry:"):
            retry = int(line[6:].strip())
