"""Build hook for the optional compiled kernel; all other metadata is in pyproject.toml.

``initdiag/recording/_kernel.c`` is a plain C shared library (no Python headers, a C ABI: pointers,
strides and sizes in, float64 sums out) that ``initdiag.recording.moments`` loads with ctypes to compute
per-channel moments of a float32 tensor in CPU memory. setuptools builds it like an extension
module, so it lands beside ``moments.py`` as ``_kernel<EXT_SUFFIX>`` in a wheel and in an editable install
alike. It is optional: without a C compiler the build skips it and the recorder uses torch operations.
"""

from __future__ import annotations

import os
import re

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_GNU_LIKE = re.compile(r"(^|-)(gcc|clang|cc)(-[0-9.]+)?$")
"""A compiler executable that takes GCC-style flags: gcc, clang, cc, x86_64-linux-gnu-gcc, clang-17, ..."""


class BuildKernel(build_ext):
    """build_ext for a library that is not a Python module: exports only what its source marks for export
    (no ``PyInit_`` symbol is required), and asks GCC/Clang for ``-O3`` (vectorization). Other compilers
    (MSVC, ...) keep their defaults. Never ``-ffast-math``: the kernel's error bound needs IEEE arithmetic."""

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return list(ext.export_symbols or [])

    def build_extension(self, ext: Extension) -> None:
        command = getattr(self.compiler, "compiler_so", None) or []
        if self.compiler.compiler_type == "unix" and any(_GNU_LIKE.search(os.path.basename(w)) for w in command[:2]):
            ext.extra_compile_args = [*ext.extra_compile_args, "-O3"]
        super().build_extension(ext)


setup(
    ext_modules=[Extension("initdiag.recording._kernel", ["initdiag/recording/_kernel.c"], optional=True)],
    cmdclass={"build_ext": BuildKernel},
)
