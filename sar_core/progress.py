"""Progress bars that stay readable when stderr is a log, not a terminal.

Under Ray every carriage-return redraw of a bar becomes its own log line, so away from a terminal
the bar redraws at most every 30 s instead of tqdm's 0.1 s."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, **kwargs) -> tqdm:
    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 30.0)
    return tqdm(iterable, **kwargs)
