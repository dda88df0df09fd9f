"""The per-user directory that holds named and shared synchronization state.

Every process of one user finds the same directory: ``<root>/ntshim-<uid>``, where the root
is ``$NTSHIM_SYNC_ROOT`` or ``/dev/shm`` (tmpfs: shared memory files cost no disk I/O).  The
choice depends on nothing else (``$XDG_RUNTIME_DIR`` is unset under cron, sudo and in
containers), so that processes which must share objects never look in two places.  The
directory is created mode 0700 and refused unless it is a real directory owned by this user
with no access for anyone else: another user can create the name first (``/dev/shm`` is
world-writable) to spy on us or block us.  A refusal says what to remove, who can remove it,
and how to point ntshim elsewhere meanwhile.
"""

from __future__ import annotations

import os
import stat

#: Where the per-user directories live; tests point it elsewhere.
ROOT_ENV_VAR = "NTSHIM_SYNC_ROOT"
DEFAULT_ROOT = "/dev/shm"

_ELSEWHERE = (
    f"Meanwhile, set {ROOT_ENV_VAR} to a directory of yours (for example $XDG_RUNTIME_DIR) in the environment "
    "of every process that must share sync objects: processes that look in different places do not see each "
    "other's objects."
)


def _removal(path: str, owner: int, root: str) -> str:
    """Who can remove path, and how."""
    if owner == os.geteuid():
        return f"Remove it (rm -rf {path}) and ntshim will create its own."
    try:
        sticky = bool(os.stat(root).st_mode & stat.S_ISVTX)
    except OSError:
        sticky = False
    who = f"{root} is sticky, so only root or uid {owner} can remove it" if sticky else "Root can remove it"
    return (
        f"It belongs to uid {owner}: another user created it, perhaps to read or block this user's sync objects.  "
        f"{who}: sudo rm -rf {path}."
    )


def _kind(info: os.stat_result, path: str) -> str:
    if stat.S_ISLNK(info.st_mode):
        return f"a symbolic link (to {os.readlink(path)})"
    if stat.S_ISREG(info.st_mode):
        return "a regular file"
    return "not a directory either"


def user_directory() -> str:
    """The directory, created if needed.  PermissionError (saying what to do) if it exists
    but is not ours alone; OSError if it cannot be created."""
    root = os.environ.get(ROOT_ENV_VAR) or DEFAULT_ROOT
    uid = os.geteuid()
    path = os.path.join(root, f"ntshim-{uid}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise OSError(
            e.errno, f"cannot create the per-user sync directory {path}: {e.strerror}.  {_ELSEWHERE}"
        ) from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(
            f"{path} is not a directory but {_kind(info, path)}, so ntshim cannot keep this user's sync objects "
            f"there.  {_removal(path, info.st_uid, root)}  {_ELSEWHERE}"
        )
    if info.st_uid != uid:
        raise PermissionError(
            f"{path} belongs to uid {info.st_uid}, not to this user ({uid}), so ntshim cannot keep this user's sync "
            f"objects there.  {_removal(path, info.st_uid, root)}  {_ELSEWHERE}"
        )
    if info.st_mode & 0o077:
        raise PermissionError(
            f"{path} is accessible to other users (mode {stat.S_IMODE(info.st_mode):o}): chmod 700 it, or remove it "
            f"(rm -rf {path}) and ntshim will create it again.  {_ELSEWHERE}"
        )
    return path
