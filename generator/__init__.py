"""sdsite's Django app: the queue, the worker, the web and the dialects."""

__version__ = "0.2.0"
"""sdsite's version (pyproject.toml says the same), written into every image's metadata."""
