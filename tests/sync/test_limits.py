"""The sync limits are defined once, in the C core (whose arena is sized by them); the Python
layers read them from there, and they are Windows' own."""

from __future__ import annotations

import ntshim.sync
from ntshim import _core
from ntshim.sync import backend


def test_limits_come_from_the_c_core_and_match_windows() -> None:
    assert ntshim.sync.MAX_WAIT_OBJECTS == backend.MAX_WAIT_OBJECTS == _core.SYNC_MAX_WAIT == 64  # MAXIMUM_WAIT_OBJECTS
    assert ntshim.sync.MAX_NAME_BYTES == backend.MAX_NAME_BYTES == _core.SYNC_MAX_NAME == 255
