"""Stillinger-Weber in C as an ASE calculator, for the long benchmark runs.

The same potential as matscipy's ``Manybody(**StillingerWeber(parameters))`` (the
parameters default to matscipy's Stillinger_Weber_PRB_31_5262_Si table), computed by
benchmarks/engines/sw.c from biasserver.kernels.neighbour_list: well under a
millisecond for Si64 where matscipy takes 10-160 ms. One element; every atom is
treated as that element.
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from biasserver.kernels import neighbour_list

from .build import load


def matscipy_parameters(name: str = "Stillinger_Weber_PRB_31_5262_Si") -> dict:
    """A parameter table of matscipy.calculators.manybody.explicit_forms.stillinger_weber."""
    from matscipy.calculators.manybody.explicit_forms import stillinger_weber
    return dict(getattr(stillinger_weber, name))


class StillingerWeberC(Calculator):
    """Stillinger-Weber energy (eV), forces (eV/A) and stress (eV/A^3, ASE's sign and
    Voigt order xx, yy, zz, yz, xz, xy) of one element.

    parameters: matscipy's keys (epsilon in eV; sigma in A; a, lambda1, gamma, A, B,
    p dimensionless; costheta0 = +1/3 for the tetrahedral angle, matscipy's sign);
    an optional q (default 0, the original form). Default: matscipy's
    Stillinger_Weber_PRB_31_5262_Si. Stress needs a cell of nonzero volume.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, parameters: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        par = matscipy_parameters() if parameters is None else dict(parameters)
        self.sw = {k: float(par[k]) for k in ("epsilon", "sigma", "a", "lambda1", "gamma", "A", "B",
                                              "p", "costheta0")}
        self.sw["q"] = float(par.get("q", 0.0))
        self.cutoff = self.sw["a"] * self.sw["sigma"]
        self._ffi, self._lib = load()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        nl = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff)
        n = len(atoms)
        first = np.ascontiguousarray(nl.first, dtype=np.int32)
        second = np.ascontiguousarray(nl.second, dtype=np.int32)
        vectors = np.ascontiguousarray(nl.vectors, dtype=np.float64)
        offset = np.ascontiguousarray(nl.offset, dtype=np.int64)
        forces = np.zeros((n, 3))
        virial = np.zeros((3, 3))
        energy = self._ffi.new("double *")
        ffi, s = self._ffi, self.sw
        ptr = lambda t, a: ffi.cast(t, ffi.from_buffer(a))  # noqa: E731
        code = self._lib.sw_compute(n, ptr("int *", first), ptr("int *", second),
                                    ptr("double *", vectors), ptr("long long *", offset),
                                    s["epsilon"], s["sigma"], s["a"], s["lambda1"], s["gamma"],
                                    s["A"], s["B"], s["p"], s["q"], s["costheta0"], energy,
                                    ptr("double *", forces), ptr("double *", virial))
        if code != 0:
            raise RuntimeError(f"sw_compute failed with code {code}")
        self.results["energy"] = self.results["free_energy"] = float(energy[0])
        self.results["forces"] = forces
        volume = abs(np.linalg.det(atoms.cell.array))
        if volume > 0:   # always: a later get_stress() then needs no second call
            w = 0.5 * (virial + virial.T) / volume
            self.results["stress"] = w[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        elif "stress" in properties:
            raise ValueError("stress needs a cell of nonzero volume")
