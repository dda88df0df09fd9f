"""The C extension lives here; everything else is in pyproject.toml."""
from glob import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ntshim._core",
            sources=sorted(glob("src/ntshim/_core/*.c")),
            depends=["src/ntshim/_core/core.h"],
            extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
            extra_link_args=["-pthread"],
        )
    ]
)
