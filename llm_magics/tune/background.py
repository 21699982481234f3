"""What a sweep and a ladder share: runs one after another in a background thread, views told after each,
and a clean Stop (the current run ends at its next step; the rest are skipped)."""
from __future__ import annotations

import threading
from typing import Callable


class BackgroundJob:
    def __init__(self):
        self.current = None                  # the RunHandle of the run going on now
        self.on_update: list[Callable] = []  # called after each run ends (and when the job ends)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _notify(self) -> None:
        for callback in self.on_update:
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - a broken view must not end the job
                pass

    def stop(self) -> None:
        """End the current run cleanly and skip what is not yet run."""
        self._stop.set()
        if self.current is not None:
            self.current.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.finished
