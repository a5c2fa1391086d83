"""cffi (API mode) build of the Stillinger-Weber engine sw.c, on first use: a
benchmark-only module compiled with the package's flags (-O3 -std=c99, no OpenMP:
the engine is serial) into benchmarks/.cache/engines/ (benchmarks/cffi_cache.py:
rebuilt when sw.c or sw.h change, moved into place atomically).
"""
from __future__ import annotations

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, "sw.c")]
HEADER = os.path.join(HERE, "sw.h")


def load():
    """(ffi, lib) of the Stillinger-Weber engine, compiled on first use."""
    benchmarks = os.path.dirname(HERE)
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    import cffi_cache

    cdef = re.sub(r"/\*.*?\*/", "", open(HEADER).read(), flags=re.S)   # sw.h without comments
    return cffi_cache.load("_sw_engine", "engines", cdef, '#include "sw.h"', SOURCES, headers=[HEADER],
                           include_dirs=[HERE], compile_args=["-O3"])
