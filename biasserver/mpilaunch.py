"""Starting ``gmetad serve`` as an MPI job: the launcher's command line and environment.

Open MPI refuses to run as root and to start more ranks than there are cores
unless told; a walkers job of a few DFT walkers on a laptop, or CI running as
root, needs both. Blocked ranks are also told to yield their core. The environment variables below are Open MPI's own switches
for that (ignored by other MPI implementations, whose ``mpiexec`` allows both).
"""
from __future__ import annotations

import os
import shutil

#: Open MPI: allow root (containers, CI) and more ranks than cores
OPEN_MPI_PERMISSIVE = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    # a rank blocked in MPI yields its core (walkers share nodes with force engines)
    "OMPI_MCA_mpi_yield_when_idle": "1",
}


class LauncherMissing(RuntimeError):
    """No MPI launcher on PATH."""


def mpirun() -> str:
    """The MPI launcher (``mpirun``, else ``mpiexec``) on PATH."""
    for name in ("mpirun", "mpiexec"):
        found = shutil.which(name)
        if found:
            return found
    raise LauncherMissing("walkers need MPI: no mpirun or mpiexec on PATH (scripts/setup.sh installs "
                          "Debian's openmpi-bin)")


def mpi_command(ranks: int, argv: list[str]) -> list[str]:
    """``mpirun -n RANKS argv...``."""
    return [mpirun(), "-n", str(int(ranks))] + list(argv)


def mpi_environment(base: dict | None = None) -> dict:
    """``base`` (default: this process's environment) with Open MPI allowed to run
    as root and oversubscribed, and one kernel thread and one BLAS thread per rank
    unless set (OpenBLAS's threads make a 70 x 70 eigendecomposition of a hill's
    metric ten times slower on a busy node)."""
    env = dict(os.environ if base is None else base)
    for key, value in OPEN_MPI_PERMISSIVE.items():
        env.setdefault(key, value)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env
