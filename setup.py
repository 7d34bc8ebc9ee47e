"""The optional compiled accelerator (everything else is in pyproject.toml).

``readegress._speedups`` (extension/readegress/_speedups.c, CPython C API, no
third-party build dependency) is built when a C compiler and the Python
headers are there; ``optional=True`` lets an install without them go on, and
readegress then runs its pure-Python twins (readegress/speedups.py). Hosts
install the platform wheel built in CI and never need a compiler.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "readegress._speedups",
            sources=["extension/readegress/_speedups.c", "extension/readegress/_logscan.c"],
            depends=["extension/readegress/_logscan.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
