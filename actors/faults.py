"""A crash a test can schedule: the process dies mid-call the way a preempted node or an OOM
kill would, and Ray restarts the actor (which comes back unarmed)."""

from __future__ import annotations

import os


class CrashOnRequest:
    _crash_armed = False

    def arm_crash(self) -> bool:
        """The next phase call exits the process (os._exit) after doing its work."""
        self._crash_armed = True
        return True

    def _maybe_crash(self) -> None:
        if self._crash_armed:
            os._exit(1)
