"""The C extension lives here; everything else is in pyproject.toml."""
from glob import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ntshim._core",
            # One directory per subsystem (common, memory, writewatch, sync), one header each.
            sources=sorted(glob("src/ntshim/_core/*/*.c")),
            depends=sorted(glob("src/ntshim/_core/*/*.h")),
            include_dirs=["src/ntshim/_core"],
            extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
            extra_link_args=["-pthread"],
        )
    ]
)
