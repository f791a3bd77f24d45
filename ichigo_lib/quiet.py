"""The one place that silences third-party noise with no fix at its cause, by logger and message.

torchao 0.15 (pinned to what torchtune imports with) logs a warning through the ``torchao``
logger when imported under torch 2.13: its optional C++ kernels are skipped, which nothing in the
book uses. ``import ichigo_lib`` calls :func:`install`, so the CLI and every notebook kernel drop
that record, and only that one, before torchtune first imports torchao.
"""

from __future__ import annotations

import logging

DROPPED = {"torchao": ("Skipping import of cpp extensions due to incompatible torch version",)}


class DropMessages(logging.Filter):
    """Drop the records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def install() -> None:
    """Attach the filters of ``DROPPED`` to their loggers (once per logger)."""
    for name, prefixes in DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(prefixes))
