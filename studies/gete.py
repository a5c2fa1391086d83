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
#: the --quick check: one conventional cell (8 atoms), hills every 10 steps so that
#: its few dozen steps deposit and feel some (a check of the machinery, not a result)
QUICK_REPEAT = 1
QUICK_STRIDE = 10

#: the training-set comparison (issue 11, item 4), fixed before any training:
#: test frames made with CHGNet (studies.gete_nnp), then from each training set
#: (the plain MD and each G-metaD run in ``g_runs``: 1000 reference evaluations
#: each) a pool evenly spaced over its frames, ``train_frames`` by farthest-point
#: sampling, ``test_frames`` held out; one committee per set, identical settings.
#: One NNP-G per G-metaD run, so that each NNP-G has exactly NNP-MD's budget and
#: the four show how much NNP-G varies from run to run.
#: Amorphous: 8 % below the crystal's density (amorphous GeTe is 5.6 g/cm3 against
#: the crystal's 6.1), a liquid at 2000 K (twice GeTe's melting point) from random
#: positions, quenched to 300 K in 0.8 ps, annealed 0.5 ps. Rhombohedral: 0.6 ps
#: at 300 K from the distorted cell.
COMPARISON: dict[str, Any] = {
    "amorphous": {"repeat": 2, "density_factor": 0.92, "melt_temperature": 2000.0, "melt_steps": 250,
                  "quench_steps": 400, "final_temperature": 300.0, "anneal_steps": 250, "every": 5,
                  "timestep": TIMESTEP, "seed": 7},
    "rhombohedral": {"repeat": 2, "u": 0.3, "strain": 0.02, "temperature": 300.0, "steps": 300, "every": 5,
                     "timestep": TIMESTEP, "seed": 11},
    "reference_run": "plain", "g_runs": [f"gmetad-{seed}" for seed in GMETAD_SEEDS],
    "pool": 500, "train_frames": 150, "test_frames": 50,
    "training": {"committee": 3, "epochs": 80, "patience": 30, "seed": 0, "symmetry": SYMMETRY},
}
#: the same at toy size (--quick): 8 atoms, a few dozen MD steps, a few epochs
QUICK_COMPARISON: dict[str, Any] = {
    **COMPARISON,
    "amorphous": {**COMPARISON["amorphous"], "repeat": 1, "melt_steps": 15, "quench_steps": 15,
                  "anneal_steps": 10, "closest": 2.3},
    "rhombohedral": {**COMPARISON["rhombohedral"], "repeat": 1, "steps": 20},
    "pool": 40, "train_frames": 12, "test_frames": 6,
    "training": {**COMPARISON["training"], "epochs": 4, "patience": 4},
}


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


def reproduce(workdir: str, quick: bool = False, stream: TextIO = sys.stderr) -> dict[str, Any]:
    """The whole GeTe study in ``workdir`` as cached stages (:class:`studies.pipeline.Pipeline`):
    ``sample-<run>`` for the four G-metaD runs and the plain MD (a finished run of
    the same specification found in a stage's folder is collected, not rerun), then
    ``analysis`` (``analysis/gete.json``, ``gete.png``, ``gete-snapshots.png``),
    then the training-set comparison (:func:`training_comparison`, settings
    :data:`COMPARISON`; ``comparison/gete-nnp.json``). ``quick``: 8 atoms,
    :data:`QUICK_STEPS` steps, hills every :data:`QUICK_STRIDE` steps, and
    :data:`QUICK_COMPARISON`. Returns the analysis stage's outputs with the
    comparison's under ``comparison``."""
    from .gete_analysis import analyse
    from .pipeline import Pipeline, run_matches, sample, single_threaded

    single_threaded()
    steps = QUICK_STEPS if quick else FULL_STEPS
    repeat = QUICK_REPEAT if quick else 2
    bias = dict(METHOD_BIAS, stride=QUICK_STRIDE) if quick else dict(METHOD_BIAS)
    specs = run_specs(steps, repeat, bias)
    pipeline = Pipeline(workdir, stream)
    pipeline.say(f"GeTe study{' (quick)' if quick else ''}: {len(specs)} runs of {steps} steps, "
                 f"{len(specs[0].structure)} atoms, CHGNet reference, in {pipeline.workdir}")
    folders = {}
    for spec in specs:
        name = f"sample-{spec.name}"

        def run(folder: str, resume: bool, spec=spec) -> dict:
            return sample(spec, folder, SYMMETRY, stream=stream).to_dict()

        # a finished run of this very spec found in the stage folder is collected, not rerun
        pipeline.stage(name, {"run": spec.describe(), "symmetry": SYMMETRY}, run,
                       adopt=lambda folder, spec=spec: run_matches(spec, folder, SYMMETRY))
        folders[spec.name] = pipeline.path(name)
    settings = {"steps": steps, "atoms": len(specs[0].structure), "temperature_K": TEMPERATURE,
                "timestep_fs": TIMESTEP, "bias": bias, "seeds": list(GMETAD_SEEDS), "plain_seed": PLAIN_SEED}

    def analysis(folder: str, resume: bool) -> dict:
        data = analyse(folders, folder, reference="plain", stride=1 if quick else 10, settings=settings)
        return {"json": os.path.join(folder, "gete.json"), "figure": os.path.join(folder, "gete.png"),
                "snapshots": os.path.join(folder, "gete-snapshots.png"), "summary": summary(data)}

    outputs = pipeline.stage("analysis", settings, analysis, depends=[f"sample-{s.name}" for s in specs])
    for line in outputs["summary"]:
        pipeline.say(line)
    comparison = training_comparison(pipeline, QUICK_COMPARISON if quick else COMPARISON)
    for line in comparison["summary"]:
        pipeline.say(line)
    return {**outputs, "comparison": comparison}


def training_comparison(pipeline, c: Mapping[str, Any]) -> dict[str, Any]:
    """The stages of the training-set comparison after the sampling stages of
    ``pipeline``: ``test-amorphous``, ``test-rhombohedral`` (CHGNet MD, ASE),
    ``select-<set>`` and ``train-<set>`` for the plain MD (set ``MD``) and each
    G-metaD run of ``c["g_runs"]`` (set ``G<seed>``), then ``errors`` (every
    committee on both test sets, every set's held-out frames and every set's
    training frames) and ``comparison`` (``comparison/gete-nnp.json``). Returns
    the comparison stage's outputs."""
    from biasserver.symmetry import SymmetryFunctions

    from . import gete_nnp
    from .pipeline import select_equal_budget, train_committee, write_json

    absolute = pipeline.absolute

    def chgnet():
        from drivers.calculators import make_calculator
        return make_calculator("chgnet")

    def amorphous(folder: str, resume: bool) -> dict:
        frames, record = gete_nnp.melt_quench(chgnet(), **c["amorphous"])
        write_json(os.path.join(folder, "amorphous-log.json"), record.pop("log"))
        path = gete_nnp.write_frames(frames, os.path.join(folder, "amorphous.extxyz"))
        return {"frames": pipeline.relative(path), "n_frames": len(frames), "record": record}

    def rhombohedral(folder: str, resume: bool) -> dict:
        frames, record = gete_nnp.rhombohedral_md(chgnet(), **c["rhombohedral"])
        write_json(os.path.join(folder, "rhombohedral-log.json"), record.pop("log"))
        path = gete_nnp.write_frames(frames, os.path.join(folder, "rhombohedral.extxyz"))
        return {"frames": pipeline.relative(path), "n_frames": len(frames), "record": record}

    tests = {"amorphous": pipeline.stage("test-amorphous", c["amorphous"], amorphous),
             "rhombohedral": pipeline.stage("test-rhombohedral", c["rhombohedral"], rhombohedral)}
    sf = SymmetryFunctions.default(SYMMETRY["default"]["elements"], SYMMETRY["default"]["cutoff"])
    runs = {"MD": c["reference_run"], **{"G" + r.split("-")[-1]: r for r in c["g_runs"]}}
    selection, models = {}, {}
    for name, run in runs.items():
        frames_path = pipeline.markers[f"sample-{run}"]["outputs"]["frames"]

        def select(folder: str, resume: bool, name=name, frames_path=frames_path) -> dict:
            out = select_equal_budget({name: [frames_path]}, c["train_frames"], c["test_frames"], c["pool"], sf,
                                      folder)[name]
            return pipeline.relative_paths(out)

        selection[name] = pipeline.stage(f"select-{name}", {k: c[k] for k in ("pool", "train_frames", "test_frames")},
                                         select, depends=[f"sample-{run}"])

        def train(folder: str, resume: bool, name=name) -> dict:
            with open(os.path.join(folder, "train.log"), "a") as log:
                out = train_committee(absolute(selection[name]["train"]), os.path.join(folder, f"nnp-{name}.pt"),
                                      c["training"], stream=log)
            return {**out, "model": pipeline.relative(out["model"])}

        models[name] = pipeline.stage(f"train-{name}", {"training": c["training"]}, train,
                                      depends=[f"select-{name}"])
    frame_sets = {"amorphous": absolute(tests["amorphous"]["frames"]),
                  "rhombohedral": absolute(tests["rhombohedral"]["frames"]),
                  **{f"{n} test": absolute(s["test"]) for n, s in selection.items()},
                  **{f"{n} train": absolute(s["train"]) for n, s in selection.items()}}

    def errors(folder: str, resume: bool) -> dict:
        return gete_nnp.error_table({f"NNP-{n}": absolute(m["model"]) for n, m in models.items()}, frame_sets)

    depends = ["test-amorphous", "test-rhombohedral"] + [f"{k}-{n}" for n in runs for k in ("select", "train")]
    table = pipeline.stage("errors", {"sets": sorted(frame_sets), "version": 2}, errors, depends=depends)

    def report(folder: str, resume: bool) -> dict:
        verdicts = {f"NNP-{n}": gete_nnp.compare(table, f"NNP-{n}", "NNP-MD") for n in runs if n != "MD"}
        together = gete_nnp.across_runs(table, [f"NNP-{n}" for n in runs if n != "MD"], "NNP-MD")
        data = {"settings": dict(c), "tests": tests, "selection": selection, "models": models,
                "errors": table, "verdicts": verdicts, "g_runs_together": together,
                "rock_salt": gete_nnp.order_statistics(rock_salt(c["amorphous"]["repeat"])),
                "stage_seconds": pipeline.timings()}
        path = os.path.join(folder, "gete-nnp.json")
        write_json(path, data)
        return {"json": pipeline.relative(path), "summary": gete_nnp.summary_lines(data)}

    return pipeline.stage("comparison", {"version": 2}, report, depends=["errors"])


def summary(data: Mapping[str, Any]) -> list[str]:
    """One line per run of the analysis JSON: final energy, disorder, coverage, stability."""
    lines = []
    for name, r in data["runs"].items():
        stable = r.get("stability", {}).get("stable")
        coverage = sum(c[-1] for c in r["coverage"].values())
        lines.append(f"{name}: {r['time_ps'][-1]:.2f} ps, E - E(rock salt) = {1000 * r['energy_rel'][-1]:.0f} "
                     f"meV/atom (bias {1000 * r['bias'][-1]:.0f}), not rock-salt-like Ge "
                     f"{r['non_rock_salt']['Ge'][-1]:.2f} Te {r['non_rock_salt']['Te'][-1]:.2f}, "
                     f"{coverage} covering centres, shortest distance {r['min_distance']:.2f} A, "
                     f"thermostat held: {stable}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m studies.gete [--quick] [--workdir DIR]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m studies.gete", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 atoms, a few dozen steps (a check of the machinery)")
    ap.add_argument("--workdir", help="work folder (default: reproduce-gete[-quick])")
    args = ap.parse_args(argv)
    workdir = args.workdir or f"reproduce-gete{'-quick' if args.quick else ''}"
    from .pipeline import StageError

    try:
        reproduce(workdir, args.quick)
    except StageError as err:
        print(f"gete: {err}\ngete: finished stages are kept in {workdir}; run the same command again to resume",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
