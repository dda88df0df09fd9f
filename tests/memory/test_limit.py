"""``limit_address_space``: while it holds, every new mapping of the process lands below the
limit; ``release()`` restores normal placement.  Each case runs in a child process: the
limit applies to the whole process, and pytest's own allocations must not feel it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ntshim.memory import limit_address_space, placement


def run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_mmap_bytearray_and_thread_stacks_land_below_the_limit_until_released() -> None:
    out = run("""
        import ctypes, mmap, threading
        import numpy as np
        from ntshim.memory import limit_address_space

        LIMIT = 4 << 30

        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_ulong

        def my_stack():
            attr = ctypes.create_string_buffer(128)  # pthread_attr_t: 56 bytes on x86-64
            assert libc.pthread_getattr_np(ctypes.c_ulong(libc.pthread_self()), attr) == 0
            base, size = ctypes.c_void_p(), ctypes.c_size_t()
            assert libc.pthread_attr_getstack(attr, ctypes.byref(base), ctypes.byref(size)) == 0
            libc.pthread_attr_destroy(attr)
            return base.value + size.value - 1  # its last byte

        def placements():
            m = mmap.mmap(-1, 1 << 20)
            big = bytearray(64 << 20)  # above malloc's mmap threshold: a mapping of its own
            array = np.zeros(16 << 20, np.uint8)
            stack = []
            t = threading.Thread(target=lambda: stack.append(my_stack()))
            t.start(); t.join()
            found = {
                "mmap": ctypes.addressof(ctypes.c_char.from_buffer(m)),
                "bytearray": ctypes.addressof(ctypes.c_char.from_buffer(big)),
                "numpy": array.ctypes.data,
                "thread stack": stack[0],
            }
            m.close()
            return found

        with limit_address_space(LIMIT) as handle:
            assert handle.active and handle.reserved
            inside = placements()
        assert not handle.active
        outside = placements()
        for what, address in inside.items():
            assert address < LIMIT, (what, hex(address))
        assert any(address >= LIMIT for address in outside.values()), outside
        print("ok")
    """)
    assert out == "ok\n"


def test_deep_recursion_still_has_its_stack() -> None:
    # The main thread's stack growth room is not reserved.
    run("""
        import sys
        from ntshim.memory import limit_address_space
        sys.setrecursionlimit(100000)
        def down(n): return 0 if n == 0 else 1 + down(n - 1)
        with limit_address_space():
            assert down(20000) == 20000
    """)


def test_release_is_idempotent_and_existing_mappings_stay() -> None:
    run("""
        import mmap, ctypes
        from ntshim.memory import limit_address_space
        before = mmap.mmap(-1, 4096)
        before[0] = 1
        handle = limit_address_space(4 << 30)
        before[1] = 2  # an existing mapping above the limit keeps working
        handle.release(); handle.release()
        assert before[:2] == b"\\x01\\x02"
    """)


@pytest.mark.parametrize("bad", [0, 4096, (4 << 30) + 1, 1 << 60])
def test_bad_limits_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="limit must"):
        limit_address_space(bad)


def test_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match="limit"):
        limit_address_space("4G")  # type: ignore[arg-type]
    assert placement.USER_SPACE_END > 4 << 30
