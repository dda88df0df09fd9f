"""Where the sync state lives (issue 11, item 12): the per-user directory and the arena file.

Another user can squat ``<root>/ntshim-<uid>``: refusing it is right, being stuck is not, so
the refusal says what to remove, who can, and how to point ntshim elsewhere.  Every ntshim
version uses one arena file name, whose header says its layout: a file of another layout is
replaced when nobody uses it and refused loudly otherwise, and the first layout's file
(``sync-v1-<size>.arena``) is retired once none of its processes is alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from required import require_sync_backend

from ntshim import _core
from ntshim.sync.userdir import ROOT_ENV_VAR, user_directory

ROOT_UID = os.geteuid() == 0
OTHER = 65534


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root like /dev/shm: world-writable and sticky."""
    path = tmp_path / "shm"
    path.mkdir()
    os.chmod(path, 0o1777)
    monkeypatch.setenv(ROOT_ENV_VAR, str(path))
    return path


def _userdir(root: Path) -> Path:
    return root / f"ntshim-{os.geteuid()}"


def _works_elsewhere(tmp_path: Path) -> None:
    """The way out the message gives: another root, for a fresh process."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", "from ntshim.sync import Event\nEvent(manual=True, name='x', backend='futex').close()"],
        capture_output=True, text=True, timeout=60, check=False, env=dict(os.environ, **{ROOT_ENV_VAR: str(elsewhere)}),
    )
    assert proc.returncode == 0, proc.stderr


def _squat(root: Path, tmp_path: Path, shape: str) -> Path:
    path = _userdir(root)
    if shape == "directory":
        path.mkdir(mode=0o700)
        os.chown(path, OTHER, OTHER)
    elif shape == "symlink":
        target = tmp_path / "theirs"
        target.mkdir(mode=0o700)
        os.chown(target, OTHER, OTHER)
        os.symlink(target, path)
        os.lchown(path, OTHER, OTHER)
    else:
        path.write_bytes(b"")
        os.chown(path, OTHER, OTHER)
    return path


@pytest.mark.parametrize("shape", ["directory", "symlink", "file"])
def test_a_squatted_user_directory_is_refused_with_a_way_out(root: Path, tmp_path: Path, shape: str) -> None:
    if not ROOT_UID:
        pytest.skip("only root can make files that belong to another user")
    path = _squat(root, tmp_path, shape)
    with pytest.raises(PermissionError) as info:
        user_directory()
    message = str(info.value)
    assert str(path) in message
    assert f"uid {OTHER}" in message
    assert f"{root} is sticky, so only root or uid {OTHER} can remove it" in message
    assert f"sudo rm -rf {path}" in message
    assert ROOT_ENV_VAR in message and "every process that must share" in message
    assert {"directory": "belongs to uid", "symlink": "symbolic link", "file": "regular file"}[shape] in message
    _works_elsewhere(tmp_path)


@pytest.mark.parametrize("shape", ["symlink", "file"])
def test_our_own_impostor_is_refused_with_a_way_out(root: Path, tmp_path: Path, shape: str) -> None:
    path = _userdir(root)
    if shape == "file":
        path.write_bytes(b"")
    else:
        (tmp_path / "mine").mkdir(mode=0o700)
        os.symlink(tmp_path / "mine", path)
    with pytest.raises(PermissionError) as info:
        user_directory()
    assert f"Remove it (rm -rf {path})" in str(info.value) and ROOT_ENV_VAR in str(info.value)


def test_a_user_directory_open_to_others_is_refused_with_a_way_out(root: Path, tmp_path: Path) -> None:
    path = _userdir(root)
    path.mkdir()
    os.chmod(path, 0o755)
    with pytest.raises(PermissionError) as info:
        user_directory()
    assert "chmod 700" in str(info.value) and ROOT_ENV_VAR in str(info.value)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755  # refused, not "fixed" behind our back
    _works_elsewhere(tmp_path)


# --- the arena file -------------------------------------------------------------------------

MAGIC = 0x4E545359


def _attach(root: Path) -> subprocess.CompletedProcess[str]:
    """A fresh process attaches to the arena under root: prints its layout, or the error."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import errno, os
            from ntshim import _core
            from ntshim.sync import futex
            try:
                path = futex.arena_path()
            except OSError as e:
                print("error", errno.errorcode.get(e.errno), e)
            else:
                fd = os.open(path, os.O_RDONLY)
                print("attached", *_core.sync_layout(fd))
        """)],
        capture_output=True, text=True, timeout=60, check=False, env=dict(os.environ, **{ROOT_ENV_VAR: str(root)}),
    )


def _other_layout(root: Path, version: int = 99, size: int = 1 << 20) -> Path:
    """An arena file as another ntshim version would leave it."""
    directory = _userdir(root)
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / "sync.arena"
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(struct.pack("=IIQ", MAGIC, version, size))
    os.chmod(path, 0o600)
    return path


def _current() -> str:
    from ntshim import _core

    return f"attached {MAGIC} {_core.SYNC_LAYOUT} {_core.SYNC_ARENA_SIZE}"


@pytest.fixture
def _futex() -> None:
    require_sync_backend("futex")


@pytest.mark.usefixtures("_futex")
@pytest.mark.parametrize("version", [0, 1, 99])
def test_an_arena_of_another_layout_nobody_uses_is_replaced(root: Path, version: int) -> None:
    path = _other_layout(root, version)
    before = path.stat().st_ino
    proc = _attach(root)
    assert proc.stdout.strip() == _current(), proc.stderr
    assert path.stat().st_ino != before


@contextlib.contextmanager
def _attached(path: Path, slot: int) -> Iterator[None]:
    """Hold the liveness lock of a process slot, as a process attached to that file does
    (in every layout: an OFD lock on byte <slot>)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hh4xqqi4x", fcntl.F_WRLCK, 0, slot, 1, 0))
        yield
    finally:
        os.close(fd)


@pytest.mark.usefixtures("_futex")
def test_an_arena_of_another_layout_in_use_is_refused_loudly(root: Path) -> None:
    path = _other_layout(root, 99)
    with _attached(path, 7):
        proc = _attach(root)
        out = proc.stdout.strip()
        assert out.startswith("error EBUSY"), (out, proc.stderr)
        assert str(path) in out
        assert "layout 99" in out and f"layout {_core.SYNC_LAYOUT}" in out  # both layouts
        assert "Stop the processes" in out and ROOT_ENV_VAR in out  # what to do
        assert path.read_bytes()[:16] == struct.pack("=IIQ", MAGIC, 99, 1 << 20)  # left alone
    assert _attach(root).stdout.strip() == _current()  # once nobody uses it, it is replaced


@pytest.mark.usefixtures("_futex")
def test_a_refused_arena_stops_automatic_selection(root: Path) -> None:
    """Processes still using the arena would not see objects made by the next backend (names
    are per backend): automatic selection must refuse, not quietly pick the server."""
    path = _other_layout(root, 99)
    with _attached(path, 7):
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent("""
                from ntshim import BackendUnavailable
                from ntshim.sync import Event
                try:
                    event = Event(manual=True, name="shared-by-name")
                except BackendUnavailable as e:
                    print("refused", e.backend, "|", e.reason)
                else:
                    print("created on", event.backend)
            """)],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, ROOT_ENV_VAR: str(root), "NTSHIM_SYNC_BACKEND": ""},
        )
    out = proc.stdout.strip()
    assert out.startswith("refused futex |"), (out, proc.stderr)
    assert "layout 99" in out and "NTSHIM_SYNC_BACKEND" in out


# The first layout (ntshim up to commit 837cbc5): sync-v1-<size>.arena, a pid-based process
# table.  Header: the process table's high-water mark at byte 80; the table at 6799360 (file
# size 15601664), entries of {pid u32, in_use u32, start time u64 (/proc/<pid>/stat field 22)}.
V1_SIZE, V1_PROCS, V1_PROC_HW = 15601664, 6799360, 80


def _start_time(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rfind(b")") + 2 :].split()[19])


def _first_layout(root: Path, entries: list[tuple[int, int]], size: int = V1_SIZE) -> Path:
    directory = _userdir(root)
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"sync-v1-{size}.arena"
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(struct.pack("=IIQ", MAGIC, 1, size))
        f.seek(V1_PROC_HW)
        f.write(struct.pack("=I", len(entries)))
        f.seek(V1_PROCS + 16)
        for pid, start in entries:
            f.write(struct.pack("=IIQ", pid, 1, start))
    os.chmod(path, 0o600)
    return path


@pytest.mark.usefixtures("_futex")
def test_a_first_layout_arena_with_a_live_process_is_refused_loudly(root: Path) -> None:
    me = os.getpid()
    path = _first_layout(root, [(me, _start_time(me))])
    out = _attach(root).stdout.strip()
    assert out.startswith("error EBUSY"), out
    assert f"processes {me} use {path}" in out and ROOT_ENV_VAR in out
    assert path.exists()


@pytest.mark.usefixtures("_futex")
def test_a_first_layout_arena_without_live_processes_is_removed(root: Path) -> None:
    me = os.getpid()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = _first_layout(root, [(me, _start_time(me) + 1), (int(gone.stdout), 12345)])  # a reused pid; a dead one
    assert _attach(root).stdout.strip() == _current()
    assert not path.exists()


@pytest.mark.usefixtures("_futex")
def test_a_first_layout_arena_of_an_unknown_size_is_refused_loudly(root: Path) -> None:
    path = _first_layout(root, [], size=V1_SIZE + 4096)
    out = _attach(root).stdout.strip()
    assert out.startswith("error EBUSY") and str(path) in out and "remove it" in out, out
