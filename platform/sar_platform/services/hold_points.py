"""Named points where a process can be held until released, so that fault-injection tests act at
an exact moment instead of racing the run.

A point is armed by creating the file `<SAR_HOLD_DIR>/<point>`. The first process to reach an armed
point claims it (an atomic rename to `<point>.held`) and waits until that file is removed; other
processes pass. Without `SAR_HOLD_DIR` a point costs one environment lookup.

The points: `<run>.checkpoint-<step>` (a train worker, right after that checkpoint is reported),
`<run>.final-evaluation` (before the final evaluation), `mlflow-server.started` (the server process
is running and recorded, not yet answering). Armed only by tests (tests/support/holds.py).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "SAR_HOLD_DIR"


def hold(point: str, poll: float = 0.05) -> None:
    """Wait here while `point` is armed and claimed by this process."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    armed, held = Path(folder) / point, Path(folder) / f"{point}.held"
    try:
        armed.rename(held)
    except OSError:  # not armed, or claimed by another process
        return
    while held.exists():
        time.sleep(poll)
