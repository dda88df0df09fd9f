"""Process-level behaviour: fork, real crashes under the mprotect handler, unprivileged users."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
from required import require_backend

import ntshim
from ntshim.errors import BackendUnavailable
from ntshim.memory import PAGE_SIZE as PS
from ntshim.writewatch import registry


def run_in_child(body) -> dict:
    """Fork, run ``body()`` in the child, and return what it returned (a JSON-able dict).
    The child ends with os._exit, never returning into pytest."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            result = {"ok": True, **body()}
        except BaseException as e:  # report everything to the parent
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child died: status {status:#x}"
    return json.loads(data)


def pages(dirty: ntshim.DirtyPages) -> list[int]:
    return [offset // PS for offset in dirty]


def test_forked_child_keeps_running_and_the_parent_keeps_its_state(backend: str) -> None:
    with ntshim.alloc(16 * PS, watch=True, backend=backend) as region:
        with memoryview(region) as view:
            view[2 * PS] = 1

        def child() -> dict:
            with memoryview(region) as view:
                for page in range(16):  # the child writes everywhere, at full speed or tracked
                    view[page * PS + 1] = 7
            try:
                seen = pages(region.write_watch.dirty())
            except RuntimeError as e:
                return {"tracked": False, "message": str(e)}
            return {"tracked": True, "pages": seen}

        result = run_in_child(child)
        assert result["ok"], result
        if registry.backend_class(backend).survives_fork:
            # The child has its own copy of the tracking state: the parent's write, then its own.
            assert result == {"ok": True, "tracked": True, "pages": list(range(16))}
        else:
            assert not result["tracked"] and "forked child" in result["message"]
        # The child's writes went to its own copy of the memory: the parent saw one write.
        assert pages(region.write_watch.dirty()) == [2]
        with memoryview(region) as view:
            assert view[PS + 1] == 0


def _crash_script(enable_faulthandler_first: bool) -> str:
    return textwrap.dedent(
        f"""
        import ctypes, faulthandler, sys
        import ntshim
        if {enable_faulthandler_first}:
            faulthandler.enable()
        first = ntshim.alloc(4 * 4096, watch=True, backend="mprotect")
        if not {enable_faulthandler_first}:
            faulthandler.enable()  # installed above ours: the next watch puts ours back on top
            second = ntshim.alloc(4096, watch=True, backend="mprotect")
        memoryview(first)[4096] = 1  # a fault the handler owns
        assert list(first.write_watch.dirty()) == [4096], list(first.write_watch.dirty())
        print("tracked", flush=True)
        ctypes.string_at(0)  # a real crash
        """
    )


@pytest.mark.parametrize("order", ["faulthandler-first", "faulthandler-after-a-watch"])
def test_real_crashes_still_reach_faulthandler(order: str) -> None:
    require_backend("mprotect")
    script = _crash_script(order == "faulthandler-first")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -11, (proc.returncode, proc.stderr)
    assert proc.stdout == "tracked\n"
    assert "Fatal Python error: Segmentation fault" in proc.stderr
    assert 'File "<string>", line' in proc.stderr  # faulthandler printed the Python traceback


def test_real_crash_without_faulthandler_gets_the_default_action() -> None:
    require_backend("mprotect")
    script = textwrap.dedent(
        """
        import ctypes, ntshim
        r = ntshim.alloc(4096, watch=True, backend="mprotect")
        memoryview(r)[0] = 1
        ctypes.string_at(0)
        """
    )
    proc = subprocess.run([sys.executable, "-X", "faulthandler=0", "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -11


def _as_unprivileged_user() -> None:
    """Become uid/gid 65534 (nobody) with no capabilities, in a forked child."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    # Changing uid marks the process non-dumpable, which makes its /proc/self files
    # root-owned; a process started by an ordinary user is dumpable, so restore that.
    PR_SET_DUMPABLE = 4
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


def test_uffd_async_works_for_an_unprivileged_user() -> None:
    require_backend("uffd-async")

    def child() -> dict:
        if os.geteuid() == 0:
            _as_unprivileged_user()
        ntshim.refresh()  # probe again with the new credentials
        availability = registry.backend_class("uffd-async").availability()
        if not availability.available:
            return {"available": False, "reason": availability.reason}
        with ntshim.alloc(8 * PS, watch=True, backend="uffd-async") as region:
            with memoryview(region) as view:
                view[3 * PS] = 1
                read_end, write_end = os.pipe()
                os.write(write_end, b"kernel")
                os.readv(read_end, [view[6 * PS : 7 * PS]])  # a kernel write, no special handling
            return {
                "available": True,
                "uid": os.geteuid(),
                "kernel_faults": ntshim._kernel.userfaultfd().kernel_faults,
                "pages": pages(region.write_watch.dirty(reset=True)),
                "after": pages(region.write_watch.dirty()),
            }

    result = run_in_child(child)
    assert result["ok"], result
    assert result["available"], result
    assert result["uid"] != 0
    assert result["pages"] == [3, 6] and result["after"] == []
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        if f.read().strip() == "0":
            assert result["kernel_faults"] is False  # really limited to UFFD_USER_MODE_ONLY


def test_uffd_sync_limited_to_user_faults_needs_the_writing_window() -> None:
    """Unprivileged with vm.unprivileged_userfaultfd=0, uffd-sync can only resolve user-mode
    faults: a kernel write into a protected page fails with EFAULT, and writing() is the way."""
    require_backend("uffd-sync")
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        if f.read().strip() != "0" or os.geteuid() != 0:
            pytest.skip("needs root to drop privilege and vm.unprivileged_userfaultfd=0")

    def child() -> dict:
        _as_unprivileged_user()
        ntshim.refresh()
        with ntshim.alloc(8 * PS, watch=True, backend="uffd-sync") as region:
            tracked = region.write_watch.kernel_writes_tracked
            read_end, write_end = os.pipe()
            os.write(write_end, b"kernel!!")
            with memoryview(region) as view:
                try:
                    os.readv(read_end, [view[2 * PS : 3 * PS]])
                    plain = "succeeded"
                except OSError as e:
                    plain = errno.errorcode[e.errno]
            with region.write_watch.writing(5 * PS, PS) as window:
                got = os.readv(read_end, [window])
            dirty = pages(region.write_watch.dirty())
        try:  # a heap object: the kernel's writes to its neighbours would fail too
            ntshim.watch(bytearray(100), backend="uffd-sync").close()
            heap = "watched"
        except BackendUnavailable as e:
            heap = str(e)
        return {"tracked": tracked, "plain": plain, "got": got, "pages": dirty, "heap": heap}

    result = run_in_child(child)
    # The failed read consumed nothing: the window's read gets all eight bytes.
    assert "shares its first or last page" in result.pop("heap"), result
    assert result == {"ok": True, "tracked": False, "plain": "EFAULT", "got": 8, "pages": [5]}, result
