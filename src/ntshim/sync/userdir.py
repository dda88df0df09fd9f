"""The per-user directory that holds named and shared synchronization state.

Every process of one user finds the same directory; other users can neither open nor
tamper with it.  It lives in /dev/shm (tmpfs: shared memory files cost no disk I/O), is
created mode 0700, and is refused unless it is a real directory owned by this user with
no access for anyone else (someone could have created it first to spy on us).
"""

from __future__ import annotations

import os
import stat

#: Where the per-user directories live; tests point it elsewhere.
ROOT_ENV_VAR = "NTSHIM_SYNC_ROOT"
DEFAULT_ROOT = "/dev/shm"


def user_directory() -> str:
    """The directory, created if needed.  PermissionError if it exists but is not ours alone."""
    root = os.environ.get(ROOT_ENV_VAR) or DEFAULT_ROOT
    uid = os.geteuid()
    path = os.path.join(root, f"ntshim-{uid}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"{path} is not a directory; remove it so ntshim can create its per-user directory")
    if info.st_uid != uid:
        raise PermissionError(
            f"{path} belongs to uid {info.st_uid}, not to this user ({uid}): someone else created it; "
            "remove it (as root) so ntshim can create its own"
        )
    if info.st_mode & 0o077:
        raise PermissionError(
            f"{path} is accessible to other users (mode {stat.S_IMODE(info.st_mode):o}); "
            "chmod 700 it or remove it"
        )
    return path
