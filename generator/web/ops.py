"""The operator's view: a staff-only /ops page kept live over SSE from `operations.snapshot`."""

import asyncio
import json

from asgiref.sync import sync_to_async
from django.contrib.admin.views.decorators import staff_member_required
from django.http import StreamingHttpResponse
from django.shortcuts import render

from . import operations
from .api_errors import error_response
from .sse import STREAM_HEADERS

INTERVAL = 2.0
"""Seconds between two snapshots on the stream."""


@staff_member_required
def ops_page(request):
    return render(request, "generator/ops.html", {"snapshot": operations.snapshot()})


async def ops_stream(request):
    """`data: <snapshot JSON>` every INTERVAL seconds, until the client goes."""
    user = await request.auser()
    if not (user.is_active and user.is_staff):
        return error_response(403, "For staff only.")

    async def events():
        yield "retry: 5000\n\n"
        while True:
            snapshot = await sync_to_async(operations.snapshot)()
            yield f"event: ops\ndata: {json.dumps(snapshot)}\n\n"
            await asyncio.sleep(INTERVAL)

    response = StreamingHttpResponse(events())
    for header, value in STREAM_HEADERS:
        response[header] = value
    return response
