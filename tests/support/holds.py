"""Hold points (sar_platform/services/hold_points.py) from the test side: arm a point, wait until a
process is held there, act, release it. Faults land at an exact step however fast the machine is."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from sar_platform.services.hold_points import ENV


class Holds:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        """The environment of a process that should stop at this folder's points."""
        return {**os.environ, ENV: str(self.folder)}

    def arm(self, *points: str) -> None:
        for point in points:
            (self.folder / point).touch()

    def wait(self, point: str, timeout: float = 600, alive=None) -> None:
        """Until a process holds at `point`; `alive()` (optional) must stay true meanwhile."""
        deadline = time.monotonic() + timeout
        while not (self.folder / f"{point}.held").exists():
            assert alive is None or alive(), f"the process ended before it reached {point}"
            assert time.monotonic() < deadline, f"nothing reached {point} in {timeout:.0f}s"
            time.sleep(0.05)

    def release(self, point: str) -> None:
        """Let the held process go on (or forget a process that was killed there)."""
        (self.folder / f"{point}.held").unlink(missing_ok=True)

    def disarm(self, point: str) -> None:
        (self.folder / point).unlink(missing_ok=True)


def session_holds() -> Holds:
    """The folder every process of a test session (Ray workers included) watches: set before Ray starts."""
    if ENV not in os.environ:
        os.environ[ENV] = tempfile.mkdtemp(prefix="sar-holds-")
    return Holds(Path(os.environ[ENV]))
