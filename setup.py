"""Build hook for the optional C kernel; all other metadata is in pyproject.toml.

``initdiag._fastmoments`` computes per-channel moments of a float32 CPU tensor in one pass. It is
optional: when there is no C compiler, the build skips it and the recorder uses torch operations
(same numbers, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "initdiag._fastmoments",
            ["initdiag/_fastmoments.c"],
            extra_compile_args=["-O3", "-fopenmp-simd"],
            optional=True,
        )
    ]
)
