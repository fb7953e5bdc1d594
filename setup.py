"""Build hook for the optional compiled kernel; all other metadata is in pyproject.toml.

``initdiag.recording._kernel`` computes per-channel moments of a float32 tensor in CPU memory in one
pass, a pure function of memory behind ``initdiag.recording.moments.reduce``. It is optional: without a C
compiler the build skips it and the recorder uses torch operations (the same numbers, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "initdiag.recording._kernel",
            ["initdiag/recording/_kernel.c"],
            extra_compile_args=["-O3", "-fopenmp-simd"],
            optional=True,
        )
    ]
)
