"""Kept only for bench/abuse.py, which its owner edits alone: it still imports
`tests.processes`. Everything else imports tests.support.processes; delete this module once
bench/abuse.py does too (tests/test_layout.py names it as the one exception)."""

from tests.support.processes import PostgresCluster, WebServer, WorkerProcess

__all__ = ["PostgresCluster", "WebServer", "WorkerProcess"]
