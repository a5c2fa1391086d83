"""cffi (API mode) build of the Stillinger-Weber engine sw.c, on first use.

Like benchmarks/reference_kernel.py: a benchmark-only module compiled with the
package's flags (-O3 -std=c99, no OpenMP: the engine is serial) into
benchmarks/.cache/engines/. The module name carries a hash of sw.c and sw.h, so an
edited source is rebuilt, and the shared object is moved into place atomically, so
two runs starting together do not load a half-written file.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(os.path.dirname(HERE), ".cache", "engines")
SOURCES = [os.path.join(HERE, "sw.c")]
HEADER = os.path.join(HERE, "sw.h")


def _cdef() -> str:
    """sw.h without comments, as cffi's cdef wants it."""
    import re
    return re.sub(r"/\*.*?\*/", "", open(HEADER).read(), flags=re.S)


def _module_name() -> str:
    digest = hashlib.sha256()
    for path in SOURCES + [HEADER]:
        with open(path, "rb") as f:
            digest.update(f.read())
    return "_sw_engine_" + digest.hexdigest()[:12]


def load():
    """(ffi, lib) of the Stillinger-Weber engine, compiled on first use."""
    name = _module_name()
    if BUILD not in sys.path:
        sys.path.insert(0, BUILD)
    try:
        module = importlib.import_module(name)
    except ImportError:
        from cffi import FFI

        builder = FFI()
        builder.cdef(_cdef())
        builder.set_source(name, '#include "sw.h"', sources=SOURCES, include_dirs=[HERE],
                           extra_compile_args=["-O3", "-std=c99"], libraries=["m"])
        os.makedirs(BUILD, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=BUILD, prefix="tmp_")
        try:
            built = builder.compile(tmpdir=tmp)
            os.replace(built, os.path.join(BUILD, os.path.basename(built)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        importlib.invalidate_caches()
        module = importlib.import_module(name)
    return module.ffi, module.lib
