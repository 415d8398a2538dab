"""The analysis worker: recomputes round snapshots off the request path.

Filled in by the analysis integration; `init_worker` starts it when configured.
"""

from __future__ import annotations

from flask import Flask


def init_worker(app: Flask) -> None:
    """Start the in-process analysis worker thread when ANALYSIS_WORKER == 'thread'."""
    return None
