"""The C extensions live here; everything else is in pyproject.toml."""
from glob import glob

from setuptools import Extension, setup

CORE = "src/ntshim/_core"
COMMON = dict(
    include_dirs=[CORE],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
    extra_link_args=["-pthread"],
)

setup(
    ext_modules=[
        # The library: one directory per subsystem (common, memory, writewatch, sync), one header each.
        Extension(
            "ntshim._core",
            sources=sorted(glob(f"{CORE}/*/*.c")),
            depends=sorted(glob(f"{CORE}/*.h") + glob(f"{CORE}/*/*.h")),
            **COMMON,
        ),
        # Benchmark and test-only natives, never imported by the library; _core's helpers
        # compiled in, its trackers and sync arena reached through its capsule (capi.h).
        Extension(
            "ntshim._bench",
            sources=sorted(glob("src/ntshim/_bench/*.c")) + [f"{CORE}/common/common.c"],
            depends=sorted(glob("src/ntshim/_bench/*.h") + glob(f"{CORE}/*.h") + glob(f"{CORE}/*/*.h")),
            **COMMON,
        ),
    ]
)
