"""The model as an ASE calculator.

``NNPCalculator(model)`` (an NNPModel or a model file) gives energy (eV), forces
(eV/A) and, for cells periodic in three directions, stress (eV/A^3, ASE's sign:
-virial / volume). Committees give the mean; ``results`` also hold the spread:
``energy_std`` (eV), ``forces_std`` (N, 3) eV/A, ``energies_members`` (K,) eV,
and ``virial`` (3, 3) eV (always, also for slabs).

``member_calculators(model)`` gives one calculator per committee member (each a
single network), for quantities whose spread over members is wanted, e.g. a
relaxed property computed with each member in turn.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .model import NNPModel, load_model


class NNPCalculator(Calculator):
    """Behler-Parrinello NNP (or committee) as an ASE calculator; see the module docstring."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: NNPModel | str | os.PathLike, **kwargs):
        super().__init__(**kwargs)
        self.model = load_model(model)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        pred = self.model.predict(self.atoms)
        self.results = {
            "energy": pred.energy, "free_energy": pred.energy, "forces": pred.forces,
            "virial": pred.virial, "energy_std": pred.energy_std, "forces_std": pred.forces_std,
            "energies_members": pred.members,
        }
        if self.atoms.pbc.all():
            stress = -pred.virial / self.atoms.get_volume()
            self.results["stress"] = stress.reshape(9)[[0, 4, 8, 5, 2, 1]]

    def ipi_extras(self) -> dict[str, Any]:
        """The committee spread of the last calculation, for an i-PI client's JSON extras."""
        if self.model.n_members == 1:
            return {}
        return {"committee": self.model.n_members, "energy_std": float(self.results["energy_std"]),
                "forces_std": np.asarray(self.results["forces_std"]).tolist(),
                "energies_members": np.asarray(self.results["energies_members"]).tolist()}


def member_model(model: NNPModel | str | os.PathLike, k: int) -> NNPModel:
    """Committee member ``k`` (0-based) of ``model`` as a model of its own (same
    symmetry functions, scaling and reference energies; one network)."""
    model = load_model(model)
    if not 0 <= k < model.n_members:
        raise ValueError(f"{model.name}: member {k} requested, the committee has {model.n_members} "
                         f"(0..{model.n_members - 1})")
    return dataclasses.replace(model, members=[model.members[k]], path=f"{model.name}[member {k}]")


def member_calculators(model: NNPModel | str | os.PathLike) -> list[NNPCalculator]:
    """One NNPCalculator per committee member of ``model``, in member order."""
    model = load_model(model)
    return [NNPCalculator(member_model(model, k)) for k in range(model.n_members)]
