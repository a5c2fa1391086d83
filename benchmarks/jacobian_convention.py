"""How much the covariance convention (bias.jacobian: folded or images) changes the bias.

Runs G-metaD MD with the ``folded`` bias acting and, along the very same
trajectory, a second bias with ``images`` that deposits at the same steps on the
same structures. At every step after the first deposition it compares the two
bias energies and forces:

- dE = |E_images - E_folded| / E_folded (the hills' energy, eV, relative);
- dF = max |F_images - F_folded| / max |F_folded| (the largest force difference
  relative to the largest force of the hills, walls excluded).

Systems (both in cells narrower than twice the 6 A cutoff):

- Si64 (diamond 2 x 2 x 2, 10.86 A), Stillinger-Weber, 1200 K, 1 fs, the method's
  Si parameters: h = 1 meV, sigma = 1 A, stride 20, reg = 1e-4, Rc = 6 A;
- Pt(111)-H (examples/pt111-h: 3 x 3 slab, 8.3 A wide, one H), EMT, 600 K,
  0.5 fs, the example's parameters: h = 0.02 eV, sigma = 0.5 A, stride 5, only H
  biased, the example's height wall.

Usage: python benchmarks/jacobian_convention.py [--steps N] [--seed S]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.io import read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from biasserver.bias import GMetaDBias  # noqa: E402
from biasserver.symmetry import SymmetryFunctions  # noqa: E402
from biasserver.walls import HeightWall  # noqa: E402
from drivers.calculators import make_calculator  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


class TwoConventions(Calculator):
    """reference + the folded bias; the images bias shadows it and the
    differences of each step are recorded."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, reference, folded: GMetaDBias, images: GMetaDBias):
        super().__init__()
        self.reference, self.folded, self.images = reference, folded, images
        self.rows: list[tuple[int, int, float, float]] = []   # step, hills, dE, dF

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        ref = self.atoms.copy()
        ref.calc = self.reference
        step = self.folded.step_count
        e_f, f_f, _ = self.folded.step(self.atoms)
        e_i, f_i, _ = self.images.step(self.atoms)
        hills_f = self.folded.last_terms["hills"]
        hills_i = self.images.last_terms["hills"]
        if hills_f > 0:
            # the walls act alike on both: compare the hills' forces
            walls = sum((w.energy_forces(self.atoms)[1] for w in self.folded.walls), np.zeros_like(f_f))
            self.rows.append((step, self.folded.n_hills, abs(hills_i - hills_f) / hills_f,
                              float(np.abs(f_i - f_f).max() / np.abs(f_f - walls).max())))
        energy = ref.get_potential_energy() + e_f
        self.results = {"energy": energy, "free_energy": energy, "forces": ref.get_forces() + f_f}


def si64():
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(2)
    sf = SymmetryFunctions.default(["Si"], 6.0)
    params = dict(height=0.001, width=1.0, stride=20, species={"Si": 1.0}, regularization=1e-4)
    return atoms, sf, params, make_calculator("sw"), 1200.0, 1.0


def pt111_h():
    atoms = read(os.path.join(EXAMPLES, "pt111-h", "init.xyz"))
    sf = SymmetryFunctions.default(["Pt", "H"], 6.0)
    wall = HeightWall("H", height=2.5, k=5.0, reference=list(range(27, 36)))
    params = dict(height=0.02, width=0.5, stride=5, species={"H": 1.0, "Pt": 0.0}, walls=[wall])
    return atoms, sf, params, make_calculator("emt"), 600.0, 0.5


def run(name: str, system, steps: int, seed: int) -> None:
    atoms, sf, params, reference, temperature, timestep = system()
    calc = TwoConventions(reference, GMetaDBias(sf, jacobian="folded", **params),
                          GMetaDBias(sf, jacobian="images", **params))
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                   fixcm=False, rng=rng)
    start = time.perf_counter()
    dyn.run(steps)
    rows = np.array(calc.rows)
    d_e, d_f = rows[:, 2], rows[:, 3]
    print(f"| {name} | {steps} | {int(rows[-1, 1])} | {np.median(d_e):.1e} | {d_e.max():.1e} "
          f"| {np.median(d_f):.3f} | {d_f.max():.3f} | {time.perf_counter() - start:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="MD steps per system (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", default="si64,pt111-h")
    args = parser.parse_args()
    systems = {"si64": ("Si64", si64), "pt111-h": ("Pt(111)-H", pt111_h)}
    print("| system | steps | hills (last) | dE median | dE max | dF median | dF max | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key in args.systems.split(","):
        run(*systems[key], args.steps, args.seed)


if __name__ == "__main__":
    main()
