"""cffi (API mode) build of the G-metaD C kernels.

Used by setup.py (``cffi_modules``) at ``pip install``; ``python ckernels/build.py``
builds the extension in place for development. Compiles with -O3 and with OpenMP
when the compiler supports it; the vector kernels carry an AVX2 + FMA copy chosen at
run time (ckernels/dispatch.c), so a default build is fast on current CPUs and
runs on any x86-64.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
# symmetry.c and gaussians.c are compiled twice: as they are (baseline x86-64) and,
# through their *_avx2.c wrappers, for AVX2 + FMA; dispatch.c picks at run time.
SOURCES = ["neighbours.c", "symmetry.c", "symmetry_avx2.c", "gaussians.c", "gaussians_avx2.c",
           "dispatch.c"]
# the contractions of the derivative blocks (forces and virial, J J^T): baseline build only
SOURCES += ["contractions.c"]
# the merge of two adaptive hills (moment matching, Cholesky inversions): baseline build only
SOURCES += ["merges.c"]


def _cdef_from_header(path: str) -> str:
    """The header's #define constants and prototypes, as cffi's cdef wants them."""
    text = open(path).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        if line.startswith("#define GM_"):
            name = line.split()[1]
            lines.append(f"#define {name} ...")
        elif not line.startswith("#"):
            lines.append(line)
    return "\n".join(lines)


def _openmp_flags() -> list[str]:
    """['-fopenmp'] when the C compiler accepts it, else []."""
    if os.environ.get("GMETAD_NO_OPENMP"):
        return []
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        try:
            ok = subprocess.run([cc, "-fopenmp", src, "-o", os.path.join(tmp, "t")],
                                capture_output=True).returncode == 0
        except OSError:
            ok = False
    return ["-fopenmp"] if ok else []


ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header(os.path.join(HERE, "gmetad.h")))
_omp = _openmp_flags()
ffibuilder.set_source(
    "biasserver._kernels",
    '#include "gmetad.h"',
    sources=[os.path.join(HERE, s) for s in SOURCES],
    include_dirs=[HERE],
    extra_compile_args=["-O3", "-std=c99", "-D_DEFAULT_SOURCE"] + _omp,
    extra_link_args=_omp,
    libraries=["m"],
)

if __name__ == "__main__":
    # Development build in place: python ckernels/build.py
    import shutil

    root = os.path.dirname(HERE)
    built = ffibuilder.compile(tmpdir=os.path.join(root, "build", "cffi"), verbose=True)
    package = os.path.join(root, "biasserver")
    for stale in os.listdir(package):  # one extension only, or imports may pick an old one
        if stale.startswith("_kernels.") and stale.endswith(".so"):
            os.remove(os.path.join(package, stale))
    shutil.copy2(built, os.path.join(package, os.path.basename(built)))
    sys.exit(0)
