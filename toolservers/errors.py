"""Exception tree of the tool servers.

ToolServerError
├── ToolInputError      bad arguments from the model: shown to it as "Error: ..." text
└── IndexUnusableError  the search index is missing, stale or built for another model
    └── StaleIndexError
"""

from __future__ import annotations


class ToolServerError(Exception):
    """Base of every error this package raises on purpose."""


class ToolInputError(ToolServerError):
    """The model's arguments cannot be served. The message says what to do instead."""


class IndexUnusableError(ToolServerError):
    """The index on disk cannot serve this corpus; the message says how to rebuild it."""


class StaleIndexError(IndexUnusableError):
    """The corpus changed since the index was built."""
