"""GeTe from rock salt (the paper's Fig. 3), with CHGNet standing in for DFT.

Four G-metaD runs of 64-atom rock-salt GeTe with both elements biased, and one
plain MD of the same length, all NVT through the real path: i-PI + ``gmetad
serve`` + ``gmetad driver chgnet`` (:func:`studies.pipeline.sample`). The
analysis (:mod:`studies.gete_analysis`) turns their frames into the figure:
potential energy per atom relative to rock salt against time, snapshots, the
coverage of environment space and the fraction of atoms no longer rock-salt-like.

Settings and how they were chosen (rule fixed before the production runs):

- The method's own settings for GeTe (design notes, section 4): h = 1 meV,
  adaptive sigma = 1 A, stride 20, reg = 1e-4, the same coefficient 1 for Ge and
  Te, the default 70 functions per centre (8 G2 per neighbour element, 18 G4 per
  element pair, Rc = 6 A); no well-tempering, no merging, no walls.
- NVT (fixed cell: the authors' NPT example blew its cell apart) at 600 K, below
  GeTe's melting point, Langevin thermostat tau = 100 fs, timestep 2 fs.
- They are kept if the first run is *stable*: the thermostat holds (mean
  temperature of the second half within 25 % of 600 K, every logged value finite,
  :func:`studies.pipeline.stability`) and no two atoms come closer than
  :data:`MIN_DISTANCE` (CHGNet's training data hold no Ge/Te pair that close);
  and if it *covers* more environments than the plain MD of the same length (the
  coverage measure of :mod:`biasserver.coverage`, standardised by the plain run).
  Otherwise the first remedy is a repulsive distance wall at :data:`MIN_DISTANCE`
  + 0.2 A; every setting tried is recorded with its measurements.

Units: angstrom, eV, K, fs (simulation times in ps).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Sequence, TextIO

from ase import Atoms
from ase.build import bulk

#: CHGNet 0.3.0's relaxed rock-salt GeTe: lattice constant (A) and energy (eV/atom)
A_ROCK_SALT = 6.012
E_ROCK_SALT = -4.14716
#: temperature (K) and timestep (fs) of every run
TEMPERATURE = 600.0
TIMESTEP = 2.0
#: stability: closest approach allowed between any two atoms (A)
MIN_DISTANCE = 2.0
#: the bias of the method's GeTe runs (both elements, same coefficient)
METHOD_BIAS: dict[str, Any] = {"height": 0.001, "width": 1.0, "stride": 20, "regularization": 1e-4,
                               "species": {"Ge": 1.0, "Te": 1.0}}
#: the symmetry section of the runs' YAML: 70 functions per centre, Rc = 6 A
SYMMETRY: dict[str, Any] = {"default": {"elements": ["Ge", "Te"], "cutoff": 6.0}}
#: the reference engine, as the runner starts it
DRIVER = "gmetad driver chgnet --structure {structure} --address {address}"
#: i-PI seeds of the four G-metaD runs and of the plain MD
GMETAD_SEEDS = (101, 102, 103, 104)
PLAIN_SEED = 201
#: run lengths (MD steps): full study and the --quick check
FULL_STEPS = 1000
QUICK_STEPS = 40


def rock_salt(repeat: int = 2, a: float = A_ROCK_SALT) -> Atoms:
    """Rock-salt GeTe, ``repeat``^3 conventional cells (8 atoms each; 2 -> 64 atoms)."""
    return bulk("GeTe", "rocksalt", a=a, cubic=True) * (repeat, repeat, repeat)


def run_specs(steps: int = FULL_STEPS, repeat: int = 2, bias: Mapping[str, Any] | None = None,
              walls: Sequence[Mapping[str, Any]] = (), seeds: Sequence[int] = GMETAD_SEEDS,
              plain_seed: int = PLAIN_SEED) -> list:
    """The sampling runs: ``gmetad-<seed>`` for each G-metaD seed and ``plain``
    (bias off, same walls), each ``steps`` MD steps from rock salt."""
    from .pipeline import RunSpec

    structure = rock_salt(repeat)
    bias = dict(METHOD_BIAS if bias is None else bias)
    common = dict(structure=structure, steps=int(steps), temperature=TEMPERATURE, timestep=TIMESTEP,
                  driver=DRIVER, walls=[dict(w) for w in walls], ensemble="nvt")
    specs = [RunSpec(name=f"gmetad-{seed}", bias=bias, seed=int(seed), **common) for seed in seeds]
    specs.append(RunSpec(name="plain", bias=None, seed=int(plain_seed), **common))
    return specs


def sample_all(workdir: str, specs: Sequence, stream: TextIO = sys.stderr) -> dict[str, Any]:
    """Run every spec in ``workdir/<name>/`` one after the other (a finished run
    is not redone, an interrupted one resumes from i-PI's checkpoint); returns
    {name: RunResult}."""
    from .pipeline import sample

    results = {}
    for spec in specs:
        folder = os.path.join(workdir, spec.name)
        done = os.path.join(folder, "output", "gmetad", "md.out")
        print(f"gete: run {spec.name} ({spec.steps} steps) in {folder}", file=stream, flush=True)
        results[spec.name] = sample(spec, folder, SYMMETRY, stream=stream)
        if not os.path.exists(done):
            raise RuntimeError(f"run {spec.name}: no i-PI property file {done} after the run")
    return results
