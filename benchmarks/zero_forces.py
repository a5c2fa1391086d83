"""A force engine that costs nothing: zero energy and forces (benchmarks only).

When the environment variable GMETAD_BENCH_TIMES names a file, the time of every
call (time.perf_counter, s) is written there at exit, one per line, so that the
steady-state time per MD step can be read off the intervals between calls.
"""
import atexit
import os
import time

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

_CALL_TIMES: list[float] = []


@atexit.register
def _write_times() -> None:
    path = os.environ.get("GMETAD_BENCH_TIMES")
    if path and _CALL_TIMES:
        with open(path, "w") as handle:
            handle.writelines(f"{t!r}\n" for t in _CALL_TIMES)


class ZeroForces(Calculator):
    """E = 0, F = 0, stress = 0: isolates the cost of the socket chain."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        _CALL_TIMES.append(time.perf_counter())
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": 0.0, "free_energy": 0.0, "forces": np.zeros((n, 3)), "stress": np.zeros(6)}
