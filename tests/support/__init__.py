"""Helpers that both the tests and bench/ use: real uvicorn, worker, nginx and PostgreSQL
processes (processes.py, forked.py), and hostile inputs (hostile.py). bench/ imports nothing
else from tests/ (tests/test_layout.py)."""
