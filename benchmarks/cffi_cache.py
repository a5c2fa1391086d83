"""Benchmark-only C modules (cffi, API mode), compiled on first use and cached in
benchmarks/.cache/<folder>/.

The module name carries a hash of everything that goes into the build (sources,
headers, cdef, flags), so an edited source or a changed flag is rebuilt rather
than a stale module loaded, and the shared object is moved into place atomically,
so two benchmarks starting together never load a half-written file. Used by the
Stillinger-Weber engine (engines/build.py) and the old hills kernel
(reference_kernel.py).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from typing import Sequence

CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")


def load(prefix: str, folder: str, cdef: str, source: str, sources: Sequence[str],
         headers: Sequence[str] = (), include_dirs: Sequence[str] = (),
         compile_args: Sequence[str] = (), link_args: Sequence[str] = ()):
    """(ffi, lib) of the module ``prefix`` + hash built from C ``sources`` (paths)
    with ``source`` as its cffi set_source text and ``cdef`` as its declarations,
    compiled with -std=c99 plus ``compile_args`` into benchmarks/.cache/``folder``."""
    digest = hashlib.sha256()
    for path in list(sources) + list(headers):
        with open(path, "rb") as f:
            digest.update(f.read())
    for text in (cdef, source, *compile_args, "|", *link_args):
        digest.update(text.encode() + b"\0")
    name = f"{prefix}_{digest.hexdigest()[:12]}"
    build = os.path.join(CACHE, folder)
    if build not in sys.path:
        sys.path.insert(0, build)
    try:
        module = importlib.import_module(name)
    except ImportError:
        from cffi import FFI

        builder = FFI()
        builder.cdef(cdef)
        builder.set_source(name, source, sources=list(sources), include_dirs=list(include_dirs),
                           extra_compile_args=["-std=c99", *compile_args], extra_link_args=list(link_args),
                           libraries=["m"])
        os.makedirs(build, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=build, prefix="tmp_")
        try:
            built = builder.compile(tmpdir=tmp)
            os.replace(built, os.path.join(build, os.path.basename(built)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        importlib.invalidate_caches()
        module = importlib.import_module(name)
    return module.ffi, module.lib
