"""Progress streams at scale: one shared reader, resume, shutdown, LISTEN/NOTIFY."""

import asyncio
import itertools
import signal
import threading

import httpx
import pytest
from django.db import connection
from django.test import AsyncClient, override_settings

from generator.models import GenerationSession, Status
from generator.web.hub import ProgressHub, _db_thread
from tests.sse_client import iter_events
from tests.support.processes import WebServer, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def advance(session, **fields):
    GenerationSession.objects.filter(pk=session.pk).update(**fields)


async def read_stream(client, url, connected, headers=None):
    messages = []
    async with client.stream("GET", url, headers=headers or {}) as response:
        lines = response.aiter_lines()
        buffer = []
        async for line in lines:
            buffer.append(line)
            if line == "":
                for event in iter_events(buffer):
                    if event.data:
                        messages.append(event.data)
                        if event.data["type"] == "connected":
                            connected()
                buffer = []
    return messages


def test_fifty_streams_on_one_session_get_the_same_messages(web_server, start_worker, make_session):
    session = make_session(steps=12, width=128, height=128)
    url = f"{web_server.url}/api/progress/{session.pk}"
    count = 50
    ready = []

    async def watch_all():
        limits = httpx.Limits(max_connections=count + 5)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            tasks = [
                asyncio.create_task(read_stream(client, url, lambda: ready.append(1)))
                for _ in range(count)
            ]
            while len(ready) < count:  # every stream is open before the job starts
                await asyncio.sleep(0.02)
            await asyncio.to_thread(start_worker)
            return await asyncio.wait_for(asyncio.gather(*tasks), 180)

    results = asyncio.run(watch_all())

    assert len(results) == count
    assert all(messages == results[0] for messages in results)
    messages = results[0]
    assert messages[-1]["type"] == "complete"
    steps = [m["current_step"] for m in messages if m["type"] == "progress"]
    assert steps == sorted(set(steps)) and steps[-1] == 12


def count_hub_queries(hub_work):
    """Run `hub_work(hub)` on an event loop; return (reads, SQL queries) of the hub thread."""
    queries = []

    def install():
        from django.db import connections

        def count(execute, sql, params, many, context):
            queries.append(sql)
            return execute(sql, params, many, context)

        connections["default"].execute_wrappers.append(count)
        return connections["default"]

    wrapped = _db_thread.submit(install).result()

    async def main():
        hub = ProgressHub(interval=0.02)
        await hub_work(hub)
        # The streams are gone: let the hub finish its last read, so each query
        # made is counted as a read too.
        if hub._task is not None:
            await asyncio.wait_for(hub._task, 5)
        return hub

    try:
        hub = asyncio.run(main())
    finally:
        _db_thread.submit(wrapped.execute_wrappers.clear).result()
    return hub.reads, len(queries)


@pytest.mark.parametrize("streams", [1, 10, 200])
def test_the_hub_makes_one_query_per_tick_whatever_the_number_of_streams(make_session, streams):
    sessions = [make_session(prompt=f"s{i}") for i in range(5)]

    async def watch(hub):
        async def one(n):
            async with hub.subscribe(sessions[n % len(sessions)].pk) as subscription:
                # the first tick's snapshot
                await asyncio.wait_for(subscription.next_snapshot(), 5)
                await asyncio.sleep(0.2)  # several more ticks

        await asyncio.gather(*(one(n) for n in range(streams)))

    reads, queries = count_hub_queries(watch)

    assert reads >= 5
    assert queries == reads


def test_streams_opening_together_share_their_first_reads(make_session, django_user_model):
    """Each opening stream needs its viewer (from the cookie) and its session's first
    snapshot: those of streams opening together are read together, a few queries in all."""
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import Client

    from generator.ownership import OWNER_KEY

    browsers = []
    for n in range(20):
        store = SessionStore()
        store[OWNER_KEY] = f"browser-{n}"
        store.create()
        browsers.append(store.session_key)
    sessions = [make_session(owner_key=f"browser-{n}") for n in range(20)]
    user = django_user_model.objects.create_user("signed-in", password="x")
    signed_in = Client()
    signed_in.force_login(user)
    user_cookie = signed_in.cookies["sessionid"].value
    theirs = make_session(owner=user)
    opened = []

    async def open_many(hub):
        async def one(n):
            cookie, session = (
                (user_cookie, theirs) if n % 50 == 0 else (browsers[n % 20], sessions[n % 20])
            )
            viewer = await hub.read_viewer(cookie)
            first = await hub.read_one(session.pk)
            return viewer.can_see(first.owner_id, first.owner_key), viewer.user_id

        opened.extend(await asyncio.gather(*(one(n) for n in range(400))))

    _, queries = count_hub_queries(open_many)

    assert all(allowed for allowed, _ in opened) and len(opened) == 400
    assert {user_id for _, user_id in opened} == {None, user.pk}
    # Opened one by one: 800 reads. Together: a handful of batches (the signed-in
    # cookie adds get_user's own queries once).
    assert queries <= 12


def stats(server):
    return httpx.get(f"{server.url}/api/stats/progress").json()


def test_client_disconnects_release_their_subscriptions(web_server, make_session):
    import psutil

    session = make_session()
    url = f"{web_server.url}/api/progress/{session.pk}"
    web = psutil.Process(web_server.popen.pid)
    clients = [httpx.Client(timeout=10) for _ in range(20)]
    streams = [client.stream("GET", url) for client in clients]
    # Keep each line iterator alive: dropping one closes its response.
    readers = []
    for opened, stream in enumerate(streams, start=1):
        readers.append(stream.__enter__().iter_lines())
        next(readers[-1])  # the stream is open
        wait_for(lambda n=opened: stats(web_server)["streams"] == n, timeout=20)
        if opened == 1:
            threads_with_one_stream = web.num_threads()
    # No thread per stream: nineteen more streams, and at most a pool or executor
    # thread that happened to start meanwhile (Django's handler would add 19).
    assert web.num_threads() <= threads_with_one_stream + 2

    for stream, client in zip(streams, clients, strict=True):
        stream.__exit__(None, None, None)
        client.close()

    wait_for(
        lambda: (
            {k: stats(web_server)[k] for k in ("streams", "sessions")}
            == {"streams": 0, "sessions": 0}
        ),
        timeout=20,
        message="the hub to forget every stream",
    )


def test_a_reconnect_with_last_event_id_resumes_without_repeats(web_server, make_session):
    session = make_session(steps=10)
    advance(session, status=Status.RUNNING, phase="denoising", current_step=4, total_steps=10)
    url = f"{web_server.url}/api/progress/{session.pk}"
    with httpx.Client(timeout=20) as client:
        with client.stream("GET", url) as response:
            events = (e for e in iter_events(response.iter_lines()) if e.data)
            first_stream = list(itertools.islice(events, 3))
        assert [e.data["type"] for e in first_stream] == ["connected", "phase", "progress"]
        last_id = first_stream[-1].id

        advance(session, current_step=6)
        with client.stream("GET", url, headers={"Last-Event-ID": last_id}) as response:
            resumed = iter_events(response.iter_lines())
            first = next(e for e in resumed if e.data)
            assert first.data["type"] == "phase"  # the current activity, then news only
            second = next(e for e in resumed if e.data)
            assert second.data["current_step"] == 6
            advance(session, status=Status.COMPLETED, current_step=10, image="images/r.png")
            rest = [e for e in resumed if e.data]

    assert [e.data["type"] for e in rest] == ["progress", "complete"]
    ids = [int(e.id) for e in [*first_stream, first, second, *rest]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    with httpx.Client(timeout=20) as client:
        after_end = client.get(url, headers={"Last-Event-ID": rest[-1].id})
    assert after_end.status_code == 204


def test_a_reconnect_after_the_end_without_the_final_message_gets_it(web_server, make_session):
    session = make_session(steps=10)
    advance(session, status=Status.FAILED, current_step=3, error="boom")
    url = f"{web_server.url}/api/progress/{session.pk}"
    with (
        httpx.Client(timeout=20) as client,
        client.stream("GET", url, headers={"Last-Event-ID": "3000"}) as response,
    ):
        assert response.status_code == 200
        messages = [e.data for e in iter_events(response.iter_lines()) if e.data]
    assert messages == [{"type": "error", "message": "boom"}]


def test_server_shutdown_ends_open_streams_cleanly(tmp_path, make_session):
    server = WebServer(tmp_path, graceful_shutdown=60)  # so a hang would show
    session = make_session()
    url = f"{server.url}/api/progress/{session.pk}"
    try:
        with httpx.Client(timeout=30) as client, client.stream("GET", url) as response:
            lines = response.iter_lines()
            assert "connected" in next(line for line in lines if line.startswith("data:"))
            assert "queued" in next(line for line in lines if line.startswith("data:"))
            server.popen.send_signal(signal.SIGTERM)
            rest = list(lines)  # ends without a protocol error: the stream was closed cleanly
        assert not any(line.startswith("data:") for line in rest)
        # uvicorn re-raises the signal once it has shut down
        assert server.popen.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        server.stop()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="LISTEN/NOTIFY is PostgreSQL's")
def test_notify_delivers_steps_without_waiting_for_the_poll(tmp_path, start_worker, make_session):
    server = WebServer(tmp_path, SD_PROGRESS_INTERVAL="60")  # the poll would see one tick
    try:
        session = make_session(steps=10, width=128, height=128)
        url = f"{server.url}/api/progress/{session.pk}"
        with httpx.Client(timeout=120) as client, client.stream("GET", url) as response:
            events = iter_events(response.iter_lines())
            assert next(events).data["type"] == "connected"
            wait_for(lambda: stats(server)["listening"], timeout=20, message="the listener")
            start_worker()
            messages = [e.data for e in events if e.data]
        steps = [m["current_step"] for m in messages if m["type"] == "progress"]
        assert messages[-1]["type"] == "complete"
        assert len(steps) >= 5  # many steps arrived long before the next 60 s poll
        assert stats(server)["notifications"] >= 10
    finally:
        server.stop()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="LISTEN/NOTIFY is PostgreSQL's")
def test_every_change_of_a_session_row_is_announced_by_the_database(make_session):
    import psycopg

    from generator.notify import CHANNEL, listener_conninfo
    from generator.services import session_cancel

    first, second = make_session(), make_session()
    with psycopg.connect(listener_conninfo(), autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        # A write with no announcing code of its own: the trigger announces it.
        GenerationSession.objects.filter(pk=first.pk).update(phase="anything")
        session_cancel(second.pk)
        GenerationSession.objects.filter(pk=first.pk).delete()
        payloads = [n.payload for n in listener.notifies(timeout=10, stop_after=3)]
    assert payloads == [str(first.pk), str(second.pk), str(first.pk)]


@override_settings(
    MIDDLEWARE=[
        "django.middleware.gzip.GZipMiddleware",
        "django.middleware.common.CommonMiddleware",
    ]
)
def test_the_stream_stays_out_of_gzip(make_session):
    session = make_session(steps=2)
    advance(session, status=Status.CANCELLED)

    async def fetch():
        response = await AsyncClient().get(
            f"/api/progress/{session.pk}", headers={"Accept-Encoding": "gzip"}
        )
        return response, b"".join([chunk async for chunk in response.streaming_content])

    response, body = asyncio.run(fetch())
    assert response["Content-Encoding"] == "identity"
    assert b'"type":"cancelled"' in body


def test_a_stream_that_opens_while_the_hub_winds_down_is_served(make_session):
    """A page reload: the old stream closes, and the new one opens as the hub stops reading."""
    old, new = make_session(), make_session()
    holding, gate = threading.Event(), threading.Event()

    def hold():
        holding.set()
        gate.wait(10)

    async def main():
        hub = ProgressHub(interval=5)
        async with hub.subscribe(old.pk) as first:
            await asyncio.wait_for(first.next_snapshot(), 5)
            _db_thread.submit(hold)  # hold the hub's database thread
            assert holding.wait(5)
            hub.wake(old.pk)
        # The last stream is gone, so the woken hub winds down: its last step
        # (giving the connection back) waits behind the gate in the thread's queue.
        while _db_thread._work_queue.qsize() < 1:
            await asyncio.sleep(0.01)
        async with hub.subscribe(new.pk) as second:
            gate.set()
            return await asyncio.wait_for(second.next_snapshot(), 5)

    assert asyncio.run(main()).status == Status.PENDING


def test_changes_a_stream_cannot_write_at_once_reach_it_through_its_task_in_order(make_session):
    """Under uvicorn the hub writes each change to the streams itself, unless a stream cannot
    take it at once: `connections.BodyWriter` refuses while the client's socket is full
    (filling one over loopback takes megabytes), which this writer stands in for by
    refusing every third write. Refused changes, and all after them until the stream's
    task has sent them, go through the task: the client gets every step once, in order."""
    from generator.web.snapshots import Snapshot
    from generator.web.sse import session_events

    session = make_session(steps=9)
    sent = []  # (who sent it, text), in the order the client would get them
    refusals = itertools.cycle([False, False, True])

    def write_body(text):
        if next(refusals):
            return False
        sent.append(("hub", text))
        return True

    def snapshot(step, status=Status.RUNNING):
        done = status == Status.COMPLETED
        return Snapshot(
            status=status,
            phase="" if done else "denoising",
            current_step=step,
            total_steps=9,
            step_recorded_at=None,
            image_url="/media/images/x.png" if done else None,
            error="",
        )

    async def main():
        hub = ProgressHub(interval=60)
        first = await hub.read_one(session.pk)
        events = session_events(hub, session.pk, first, write_body=write_body)

        async def client():
            async for text in events:
                sent.append(("task", text))

        task = asyncio.create_task(client())
        while hub.reads < 1:  # subscribed, and the hub's first read published the row
            await asyncio.sleep(0.01)
        (subscription,) = hub.subscribers[session.pk]
        for step in range(1, 10):
            hub._publish({session.pk: snapshot(step)})
            while subscription.busy or not subscription.queue.empty():
                await asyncio.sleep(0)
        hub._publish({session.pk: snapshot(9, Status.COMPLETED)})
        await asyncio.wait_for(task, 5)

    asyncio.run(main())

    text = "".join(t.decode() for _, t in sent)
    events = [e for e in iter_events(text.split("\n")) if e.data]
    steps = [e.data["current_step"] for e in events if e.data["type"] == "progress"]
    assert steps == list(range(1, 10))
    assert events[-1].data == {"type": "complete", "image_url": "/media/images/x.png"}
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids))
    senders = [who for who, t in sent if b'"progress"' in t]
    assert senders.count("hub") == 6 and senders.count("task") == 3
    assert sent[-1][0] == "task"  # the end goes through the task, which ends the response


def test_the_compiled_snapshot_read_reads_what_the_orm_query_reads(make_session):
    """`read_snapshots` runs SQL compiled once per number of ids; the ORM's own query
    (`snapshot_rows`) must give the same snapshots: queue places and estimates of pending
    rows, live and lost workers of running ones, finished rows."""
    from datetime import timedelta

    from django.utils import timezone

    from generator.models import WorkerRecord
    from generator.web.snapshots import read_snapshots, snapshot_of, snapshot_rows

    now = timezone.now()
    WorkerRecord.objects.create(id="alive", host="h", pid=1, last_seen_at=now)
    WorkerRecord.objects.create(id="gone", host="h", pid=2, last_seen_at=now - timedelta(hours=1))
    rows = [make_session(steps=n + 2) for n in range(6)]
    advance(rows[0], status=Status.RUNNING, worker_id="alive", current_step=1, eta_seconds=3.5)
    advance(rows[1], status=Status.RUNNING, worker_id="gone", current_step=1, eta_seconds=2.0)
    advance(rows[2], status=Status.COMPLETED, image="images/done.png", current_step=4)
    GenerationSession.objects.filter(pk__in=[r.pk for r in rows]).update(expected_seconds=4.0)
    for count in (1, 2, 6):
        ids = [r.pk for r in rows[-count:]] if count < 6 else [r.pk for r in rows]
        expected = {row.pk: snapshot_of(row) for row in snapshot_rows(ids)}
        assert read_snapshots(ids) == expected
        assert len(expected) == count
    snapshots = read_snapshots([r.pk for r in rows])
    assert [snapshots[r.pk].queue_position for r in rows[3:]] == [1, 2, 3]
    assert snapshots[rows[3].pk].eta_seconds is not None
    assert not snapshots[rows[0].pk].worker_lost and snapshots[rows[1].pk].worker_lost
    assert snapshots[rows[2].pk].image_url == "/media/images/done.png"
