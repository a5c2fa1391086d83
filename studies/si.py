"""The Si study (the paper's Fig. 4): does an NNP trained on G-metaD frames do better?

Three training sets of diamond Si, each from the same number of reference
evaluations (MD steps, every one a truth call through ``gmetad driver``):

- **L**: plain MD at the low temperature (one run, NVT at the crystal's a0);
- **H**: plain MD at a high temperature: one run of the crystal at ``T_high``
  and one of the liquid at ``T_liquid`` (above melting), half the budget each.
  The liquid run starts from random positions at the crystal's density (no two
  atoms closer than ``liquid_min_distance``): a perfect crystal superheats (Si64
  SW at 2500 K, 3 ps: still four-coordinated everywhere), a random start is a
  liquid from the first steps, and no reference evaluation outside the budget is
  spent on melting;
- **G**: G-metaD at the low temperature, NPT (i-PI's flexible cell: shape and
  volume may change, as in the method's own runs), a lower wall on interatomic
  distances (no two atoms closer than ``wall_distance``: stops a collapse, leaves
  every bonded environment open), ``g_runs`` independent runs with different
  seeds sharing the budget.

The G-metaD settings are chosen by a **scan** before anything else is trained or
computed: every candidate of :data:`SCAN_CANDIDATES` runs for ``scan_steps``
steps; a candidate qualifies when the run stays stable
(:func:`studies.pipeline.stability`: the mean temperature of its second half
within 25 % of the target, the cell volume within 0.75-1.5 times its start, all
numbers finite); among those the one whose run covers the most environments
wins (coverage: :mod:`biasserver.coverage`, standardised by the L run, radius 1).
Ties go to the earlier candidate. Every candidate's numbers are reported. No
property enters the choice.

Then the same number of frames is selected from each set by the same rule,
three committees are trained identically, each NNP is tested on each set's
held-out frames (cross table) and every committee member computes the
properties of :mod:`studies.si_properties`, as does the truth.

``SiSettings`` holds every number; :func:`settings` gives the full or the quick
(toy) scale and applies overrides (a YAML mapping of field names).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, TextIO

import numpy as np
from ase.build import bulk as ase_bulk

from . import pipeline
from .pipeline import Pipeline, RunSpec

#: candidate G-metaD settings of the scan, fixed before any run: the method's Si
#: height (1 meV) with tempering, the 5 meV that stayed stable at 500 K NVT, the same
#: without tempering, and a narrower width (the method's earlier sigma). Heights in
#: eV, widths in A, well_tempered (bias temperature Delta T) in K or None.
SCAN_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"height": 0.001, "width": 1.0, "stride": 20, "well_tempered": 3000.0},
    {"height": 0.005, "width": 1.0, "stride": 20, "well_tempered": 3000.0},
    {"height": 0.005, "width": 1.0, "stride": 20, "well_tempered": None},
    {"height": 0.005, "width": 0.6, "stride": 20, "well_tempered": 3000.0},
)

SYMMETRY = {"default": {"elements": ["Si"], "cutoff": 6.0}}


@dataclass
class SiSettings:
    """Every number of the study (K, fs, A, eV; steps are MD steps = reference
    evaluations). ``budget``: steps per training set; ``pool``: frames spread over a
    set from which ``train_frames`` are chosen by farthest-point sampling, and
    ``test_frames`` held out; ``training``: nnp TrainConfig keys, the same for all
    three NNPs; ``properties``: keys of studies.si_properties.UNITS to compute (None:
    all); ``quick_properties``: the recipes' quick cells (64-atom defect cells,
    4-layer slabs; the truth's point-defect energies there differ from the full
    216-atom values by 3-5 %, docs/results/si-recipes.md; every NNP uses the same
    cells, so the ratios are like for like), false: the full cells (2-3 times the
    time); ``jobs``: processes
    running at the same time (sampling runs, trainings, property evaluations)."""

    supercell: int = 2                      # cubic 8-atom cells per edge: 2 -> Si64
    t_low: float = 300.0
    t_high: float = 1500.0
    t_liquid: float = 2000.0
    liquid_min_distance: float = 2.1
    timestep: float = 1.0
    budget: int = 6000
    g_runs: int = 6
    scan_steps: int = 1000
    scan_candidates: list = field(default_factory=lambda: [dict(c) for c in SCAN_CANDIDATES])
    scan_temperature_tolerance: float = 0.25
    scan_volume_range: list = field(default_factory=lambda: [0.75, 1.5])
    compression: float | None = 0.3
    wall_distance: float = 1.8
    wall_k: float = 10.0
    coverage_radius: float = 1.0
    coverage_stride: int = 20
    pool: int = 1500
    train_frames: int = 300
    test_frames: int = 100
    training: dict = field(default_factory=lambda: {"committee": 3, "epochs": 30, "seed": 0, "patience": 10})
    properties: list | None = None
    quick_properties: bool = True
    jobs: int = 2

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


QUICK_OVERRIDES: dict[str, Any] = {
    "budget": 180, "g_runs": 3, "scan_steps": 120,
    "scan_candidates": [dict(SCAN_CANDIDATES[0]), dict(SCAN_CANDIDATES[1])],
    "coverage_stride": 5, "pool": 60, "train_frames": 24, "test_frames": 12,
    "training": {"committee": 2, "epochs": 8, "seed": 0, "patience": 8},
    "quick_properties": True,
}


def settings(quick: bool = False, overrides: Mapping[str, Any] | None = None,
             where: str = "overrides") -> SiSettings:
    """The full or quick settings with ``overrides`` (field -> value) applied;
    unknown fields raise ValueError naming ``where`` and the key."""
    values = dict(QUICK_OVERRIDES) if quick else {}
    known = {f.name for f in dataclasses.fields(SiSettings)}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ValueError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        values[key] = value
    s = SiSettings(**values)
    if s.budget % (2 * s.g_runs) and s.budget % 2:
        raise ValueError(f"{where}: budget {s.budget} must split evenly into 2 H runs and {s.g_runs} G runs")
    if s.budget % s.g_runs or s.budget % 2:
        raise ValueError(f"{where}: budget {s.budget} must be divisible by 2 and by g_runs = {s.g_runs}")
    if s.properties is not None:
        from .si_properties import UNITS
        bad = [k for k in s.properties if k not in UNITS]
        if bad:
            raise ValueError(f"{where}: unknown property {bad[0]!r} (known: {', '.join(UNITS)})")
    return s


# ------------------------------------------------------------------ run specs


def crystal(s: SiSettings):
    """The starting diamond supercell at the truth's a0 (SW: 5.431 A)."""
    return ase_bulk("Si", "diamond", a=5.431, cubic=True) * ((s.supercell,) * 3)


def random_start(s: SiSettings, seed: int = 7):
    """The crystal's cell filled with the same number of atoms at random positions,
    no two closer than ``s.liquid_min_distance`` (A, minimum image); seeded."""
    from ase.geometry import get_distances

    atoms = crystal(s)
    rng = np.random.default_rng(seed)
    cell = atoms.cell.array
    placed: list[np.ndarray] = []
    tries = 0
    while len(placed) < len(atoms):
        tries += 1
        if tries > 200000:
            raise RuntimeError(f"cannot place {len(atoms)} atoms {s.liquid_min_distance} A apart in the cell")
        trial = rng.random(3) @ cell
        if placed:
            _, d = get_distances(trial[None, :], np.array(placed), cell=cell, pbc=True)
            if d.min() < s.liquid_min_distance:
                continue
        placed.append(trial)
    atoms.positions = np.array(placed)
    return atoms


def driver_command(truth: str) -> str:
    return f"gmetad driver {truth} --structure {{structure}} --address {{address}}"


def walls(s: SiSettings) -> list[dict]:
    return [{"kind": "distance", "min_distance": s.wall_distance, "k": s.wall_k}]


def g_bias(s: SiSettings, candidate: Mapping[str, Any]) -> dict[str, Any]:
    bias = dict(candidate)
    bias.setdefault("regularization", 1e-4)
    if s.compression is not None:
        bias["compression"] = s.compression
    return bias


def specs_l(s: SiSettings, truth: str) -> list[RunSpec]:
    return [RunSpec("L", crystal(s), s.budget, s.t_low, driver_command(truth), seed=11, timestep=s.timestep)]


def specs_h(s: SiSettings, truth: str) -> list[RunSpec]:
    half = s.budget // 2
    return [RunSpec("H-crystal", crystal(s), half, s.t_high, driver_command(truth), seed=21, timestep=s.timestep),
            RunSpec("H-liquid", random_start(s), half, s.t_liquid, driver_command(truth), seed=22, timestep=s.timestep)]


def specs_g(s: SiSettings, truth: str, candidate: Mapping[str, Any], steps: int, seeds, prefix: str = "G"):
    return [RunSpec(f"{prefix}-{k + 1}", crystal(s), steps, s.t_low, driver_command(truth), ensemble="npt",
                    bias=g_bias(s, candidate), walls=walls(s), seed=seed, timestep=s.timestep)
            for k, seed in enumerate(seeds)]


# ------------------------------------------------------------------ stages


def run_study(workdir: str, s: SiSettings, truth: str = "sw", stream: TextIO = sys.stderr,
              stop_after: str | None = None) -> dict[str, Any]:
    """Run (or resume) the whole Si study in ``workdir``; returns the results dict
    also written to ``workdir/si-results.json``."""
    from biasserver.symmetry import SymmetryFunctions

    p = Pipeline(workdir, stream=stream, stop_after=stop_after)
    sf = SymmetryFunctions.default(SYMMETRY["default"]["elements"], SYMMETRY["default"]["cutoff"])
    p.say(f"Si study in {p.workdir} (truth: {truth}, {'quick' if s.quick_properties else 'full'} property cells)")
    results: dict[str, Any] = {"settings": s.describe(), "truth": truth}

    def sampling(specs):
        return pipeline.sampling_stage(p, specs, SYMMETRY, s.jobs)

    l_specs, h_specs = specs_l(s, truth), specs_h(s, truth)
    runs_l = p.stage("sample_L", {"runs": [x.describe() for x in l_specs]}, sampling(l_specs))

    # -- the G-metaD settings scan: stability + coverage, no property involved
    scan_specs = []
    for k, cand in enumerate(s.scan_candidates):
        scan_specs += specs_g(s, truth, cand, s.scan_steps, [101 + k], prefix=f"scan{k + 1}")

    def scan(folder, resume):
        out = pipeline.sample_all(scan_specs, folder, SYMMETRY, s.jobs, stream)
        reference = pipeline.read_frames(p.absolute(runs_l["L"]["frames"]), s.coverage_stride)
        rows = []
        for k, (cand, spec) in enumerate(zip(s.scan_candidates, scan_specs)):
            r = out[spec.name]
            stab = pipeline.stability(pipeline.md_log(r["md_out"]), s.t_low, s.scan_temperature_tolerance,
                                      tuple(s.scan_volume_range))
            curve = pipeline.coverage_curves({spec.name: [r["frames"]]}, reference, sf, s.coverage_stride,
                                             s.timestep, s.coverage_radius)[spec.name]
            rows.append({"candidate": k + 1, **cand, "temperature": s.t_low, **stab,
                         "coverage": curve["centres"][-1], "seconds": r["seconds"]})
            p.say(f"scan candidate {k + 1} {cand}: stable={stab['stable']} "
                  f"(T2 {stab['temperature_mean_second_half']:.0f} K, V {stab['volume_ratio_min']:.2f}-"
                  f"{stab['volume_ratio_max']:.2f}), coverage {curve['centres'][-1]}")
        stable = [r for r in rows if r["stable"]]
        if stable:
            best = max(stable, key=lambda r: (r["coverage"], -r["candidate"]))
            rule = "stable, then most coverage"
        else:   # nothing qualified: the one closest to the target temperature, flagged
            best = min(rows, key=lambda r: abs(r["temperature_mean_second_half"] - s.t_low))
            rule = "NO candidate was stable: the one closest to the target temperature"
        chosen = {k: best[k] for k in s.scan_candidates[best["candidate"] - 1]}
        return {"rows": rows, "chosen": chosen, "chosen_candidate": best["candidate"], "rule": rule}

    scan_out = p.stage("scan", {"runs": [x.describe() for x in scan_specs],
                                "rule": [s.scan_temperature_tolerance, s.scan_volume_range, s.coverage_radius,
                                         s.coverage_stride]}, scan, depends=["sample_L"])
    results["scan"] = scan_out

    g_specs = specs_g(s, truth, scan_out["chosen"], s.budget // s.g_runs, [31 + k for k in range(s.g_runs)])
    runs_g = p.stage("sample_G", {"runs": [x.describe() for x in g_specs]}, sampling(g_specs), depends=["scan"])

    runs_h = p.stage("sample_H", {"runs": [x.describe() for x in h_specs]}, sampling(h_specs))
    sets = {"L": [runs_l["L"]], "H": [runs_h[x.name] for x in h_specs], "G": [runs_g[x.name] for x in g_specs]}
    set_files = {name: [p.absolute(r["frames"]) for r in runs] for name, runs in sets.items()}
    results["runs"] = {name: [{k: v for k, v in r.items()} for r in runs] for name, runs in sets.items()}
    results["runs_stability"] = {}
    for name, runs in sets.items():
        for r, spec in zip(runs, {"L": l_specs, "H": h_specs, "G": g_specs}[name]):
            log = pipeline.md_log(p.absolute(r["md_out"]))
            results["runs_stability"][r["name"]] = pipeline.stability(log, spec.temperature)

    def coverage(folder, resume):
        reference = pipeline.read_frames(set_files["L"][0], s.coverage_stride)
        runs = {name: files for name, files in set_files.items()}
        return pipeline.coverage_curves(runs, reference, sf, s.coverage_stride, s.timestep, s.coverage_radius)

    results["coverage"] = p.stage("coverage", {"radius": s.coverage_radius, "stride": s.coverage_stride},
                                  coverage, depends=["sample_L", "sample_H", "sample_G"])

    def select(folder, resume):
        out = pipeline.select_equal_budget(set_files, s.train_frames, s.test_frames, s.pool, sf, folder)
        for v in out.values():
            v["train"], v["test"] = p.relative(v["train"]), p.relative(v["test"])
        return out

    selection = p.stage("select", {"pool": s.pool, "train": s.train_frames, "test": s.test_frames}, select,
                        depends=["sample_L", "sample_H", "sample_G"])
    results["selection"] = {k: {kk: vv for kk, vv in v.items() if not kk.endswith("indices")}
                            for k, v in selection.items()}

    def train(folder, resume):
        tasks = [(name, p.absolute(selection[name]["train"]), os.path.join(folder, f"nnp-{name}.pt"))
                 for name in ("L", "H", "G")]
        out = pipeline.parallel(pipeline.train_task, [(path, model, dict(s.training), os.path.join(folder, f"nnp-{name}.train.log"))
                                     for name, path, model in tasks], s.jobs, p.say, [t[0] for t in tasks])
        return {name: {**o, "model": p.relative(o["model"])} for (name, _, _), o in zip(tasks, out)}

    models = p.stage("train", {"training": s.training}, train, depends=["select"])
    results["models"] = models

    def cross(folder, resume):
        return pipeline.cross_table({f"NNP-{n}": p.absolute(m["model"]) for n, m in models.items()},
                                    {n: p.absolute(v["test"]) for n, v in selection.items()})

    results["cross_table"] = p.stage("cross", {}, cross, depends=["train", "select"])

    keys = s.properties

    def properties(folder, resume):
        tasks, labels = [("truth", None, truth)], ["truth"]
        model_info = {}
        for name, m in models.items():
            from nnp.model import load_model
            n_members = load_model(p.absolute(m["model"])).n_members
            model_info[name] = n_members
            for k in range(n_members):
                tasks.append((f"NNP-{name}", p.absolute(m["model"]), k))
                labels.append(f"NNP-{name} member {k + 1}")
        compute = functools.partial(compute_properties, quick=s.quick_properties, keys=keys)
        args = [(compute, t[1], t[2], os.path.join(folder, f"{t[0]}-{i}.json")) for i, t in enumerate(tasks)]
        records = pipeline.parallel(pipeline.property_task, args, s.jobs, p.say, labels)
        out = {"truth": pipeline.summarise_members([records[0]])}
        i = 1
        for name, n in model_info.items():
            out[f"NNP-{name}"] = pipeline.summarise_members(records[i:i + n])
            i += n
        out["seconds"] = {label: r["seconds"] for label, r in zip(labels, records)}
        return out

    results["properties"] = p.stage("properties", {"quick": s.quick_properties, "keys": keys, "truth": truth},
                                    properties, depends=["train"])

    def gaps(folder, resume):
        a0 = results["properties"]["truth"]["a0"]["mean"] or 5.431
        return pipeline.environment_gaps({n: p.absolute(v["train"]) for n, v in selection.items()},
                                         probe_structures(a0), sf, s.coverage_radius)

    results["gaps"] = p.stage("gaps", {"radius": s.coverage_radius}, gaps, depends=["select", "properties"])

    results["stage_seconds"] = p.timings()
    results["wall_seconds_this_invocation"] = time.monotonic() - p.started
    results["ratios"] = ratios(results["properties"])

    def report(folder, resume):
        from . import plots
        figures = {
            "fig4": plots.fig4(results, os.path.join(folder, "si-fig4.png")),
            "coverage": plots.coverage_plot(results["coverage"], os.path.join(folder, "si-coverage.png")),
            "cross": plots.cross_table_plot(results["cross_table"], os.path.join(folder, "si-cross.png")),
        }
        results["figures"] = {k: p.relative(v) for k, v in figures.items()}
        pipeline.write_json(os.path.join(folder, "si-results.json"), results)
        with open(os.path.join(folder, "si-summary.md"), "w") as handle:
            handle.write(summary_markdown(results))
        return {"json": p.relative(os.path.join(folder, "si-results.json")),
                "summary": p.relative(os.path.join(folder, "si-summary.md")), "figures": results["figures"]}

    # the report always reflects the stages above: its key is theirs
    rep = p.stage("report", {"version": 1}, report,
                  depends=["scan", "coverage", "select", "train", "cross", "properties", "gaps"])
    results["report"] = rep
    p.say(f"Si study finished: {p.path(rep['json'])}, {p.path(rep['summary'])}")
    return results


def probe_structures(a0: float) -> dict[str, Any]:
    """Unrelaxed structures of the test properties' environments, at lattice constant
    ``a0`` (A): the perfect crystal (control), bulk-terminated (100) and (111) slabs
    (10 A of vacuum), a vacancy and a tetrahedral interstitial in Si64, and the
    framework's Sigma3 (112) grain boundary and (111) 3x3 DAS slab."""
    from ase import Atom
    from ase.build import diamond100, diamond111
    from ase.io import read

    from .si_properties import DATA_DIR

    cube = ase_bulk("Si", "diamond", a=a0, cubic=True) * (2, 2, 2)
    vacancy = cube.copy()
    del vacancy[0]
    tetrahedral = cube.copy()
    tetrahedral.append(Atom("Si", (0.5 * a0, 0.5 * a0, 0.5 * a0)))
    probes = {"bulk": cube, "vacancy": vacancy, "interstitial_T": tetrahedral,
              "surface_100": diamond100("Si", (2, 2, 8), a=a0, vacuum=10.0),
              "surface_111": diamond111("Si", (2, 2, 8), a=a0, vacuum=10.0),
              "gb_sigma3_112": read(DATA_DIR / "gb_sigma3_112.xyz", format="extxyz"),
              "das_3x3": read(DATA_DIR / "si111_3x3_das_8layer.xyz", format="extxyz")}
    for atoms in probes.values():
        atoms.pbc = True           # slabs: periodic with vacuum wider than the cutoff
        atoms.set_constraint()
    return probes


def ratios(props: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """NNP/truth of each property: the committee-mean ratio and the spread ratio."""
    truth = props["truth"]
    out: dict[str, dict] = {}
    for name, values in props.items():
        if not name.startswith("NNP-"):
            continue
        out[name] = {}
        for key, v in values.items():
            t = truth[key]["mean"]
            ok = t is not None and v["mean"] is not None and t != 0
            out[name][key] = {"ratio": v["mean"] / t if ok else None,
                              "spread": v["std"] / abs(t) if ok else None}
    return out


# ------------------------------------------------------------------ workers (top-level: picklable)


def compute_properties(calc, quick: bool, keys=None) -> tuple[dict, dict]:
    """(values, failures) of the Si recipes; ``keys``: a subset (None: all)."""
    from . import si_properties as sp

    if keys is None:
        failures: dict[str, str] = {}
        return sp.compute_all(calc, quick=quick, failures=failures), failures
    failures = {}
    values: dict[str, float] = {}
    b = None
    try:
        b = sp.si_bulk(calc, quick)
    except Exception as err:  # noqa: BLE001 - recorded
        failures["a0"] = f"{type(err).__name__}: {err}"
    recipes = {
        "a0": lambda: b.a0,
        "cohesive_energy": lambda: sp.cohesive_energy(calc, quick=quick, bulk=b),
        "surface_100_2x1": lambda: sp.surface_100_2x1(calc, quick=quick, bulk=b),
        "surface_110": lambda: sp.surface_110(calc, quick=quick, bulk=b),
        "surface_111_shuffle": lambda: sp.surface_111_shuffle(calc, quick=quick, bulk=b),
        "surface_111_das_3x3": lambda: sp.surface_111_das_3x3(calc, quick=quick, bulk=b),
        "vacancy": lambda: sp.vacancy_formation(calc, quick=quick, bulk=b),
        "interstitial_tetrahedral": lambda: sp.interstitial_tetrahedral(calc, quick=quick, bulk=b),
        "interstitial_hexagonal": lambda: sp.interstitial_hexagonal(calc, quick=quick, bulk=b),
        "interstitial_dumbbell": lambda: sp.interstitial_dumbbell(calc, quick=quick, bulk=b),
        "vacancy_migration": lambda: sp.vacancy_migration(calc, quick=quick, bulk=b),
        "gb_sigma3_112": lambda: sp.gb_sigma3_112(calc, quick=quick, bulk=b),
        "usf_shuffle": lambda: sp.unstable_stacking_fault(calc, quick=quick, bulk=b, plane="shuffle"),
        "usf_glide": lambda: sp.unstable_stacking_fault(calc, quick=quick, bulk=b, plane="glide"),
    }
    elastic = ("bulk_modulus", "C11", "C12", "C44", "C44_unrelaxed")
    elastic_values = None
    for key in keys:
        try:
            if b is None:
                raise RuntimeError("no relaxed bulk (the a0 recipe failed)")
            if key in elastic:
                if elastic_values is None:
                    elastic_values = sp.elastic_constants(calc, quick=quick, bulk=b)
                values[key] = float(elastic_values[key])
            else:
                values[key] = float(recipes[key]())
        except Exception as err:  # noqa: BLE001 - recorded per property
            values[key] = float("nan")
            failures[key] = f"{type(err).__name__}: {err}"
    return values, failures


# ------------------------------------------------------------------ summary


def summary_markdown(results: Mapping[str, Any]) -> str:
    """A short markdown summary of a finished study."""
    from .si_properties import SW_REFERENCE, UNITS

    s = results["settings"]
    lines = ["# Si study: NNP-L, NNP-H, NNP-G against the truth", "",
             f"Truth: `{results['truth']}`. Budget {s['budget']} reference evaluations per set "
             f"(Si{8 * s['supercell'] ** 3}); {s['train_frames']} training frames per set from a pool of "
             f"{s['pool']}; committees of {s['training'].get('committee')}, {s['training'].get('epochs')} epochs.", "",
             "## G-metaD settings scan (chosen before any property was computed)", "",
             "| # | h (eV) | sigma (A) | stride | Delta T (K) | stable | T 2nd half (K) | V/V0 | coverage |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["scan"]["rows"]:
        lines.append(f"| {r['candidate']} | {r['height']} | {r['width']} | {r['stride']} | {r['well_tempered']} | "
                     f"{'yes' if r['stable'] else 'no'} | {r['temperature_mean_second_half']:.0f} | "
                     f"{r['volume_ratio_min']:.2f}-{r['volume_ratio_max']:.2f} | {r['coverage']} |")
    lines += ["", f"Chosen: candidate {results['scan']['chosen_candidate']} ({results['scan']['rule']}).", "",
              "## Coverage at the end of each set (centres, radius "
              f"{s['coverage_radius']}, standardised by L)", ""]
    for name, c in results["coverage"].items():
        lines.append(f"- {name}: {c['centres'][-1]} after {c['time_ps'][-1]:.2f} ps")
    lines += ["", "## Force RMSE (eV/A) of each NNP on each set's test frames", "",
              "| | " + " | ".join(results["cross_table"][next(iter(results["cross_table"]))]) + " |",
              "|---|" + "---|" * len(results["cross_table"][next(iter(results["cross_table"]))])]
    for m, row in results["cross_table"].items():
        lines.append(f"| {m} | " + " | ".join(f"{v['force_rmse']:.3f}" for v in row.values()) + " |")
    lines += ["", "## Properties (committee mean +- spread over members; ratio to the truth)", "",
              "| property | unit | truth | SW ref. | NNP-L | NNP-H | NNP-G |", "|---|---|---|---|---|---|---|"]
    props = results["properties"]

    def fmt(v, t):
        if v["mean"] is None:
            return f"failed ({len(v['failures'])})"
        r = f" ({v['mean'] / t:.2f})" if t else ""
        return f"{v['mean']:.4g} +- {v['std']:.2g}{r}"

    for key in props["truth"]:
        t = props["truth"][key]["mean"]
        ref = SW_REFERENCE.get(key)
        lines.append(f"| {key} | {UNITS[key]} | {t if t is None else f'{t:.4g}'} | {ref if ref is not None else '-'} | "
                     + " | ".join(fmt(props[f'NNP-{n}'][key], t) for n in ("L", "H", "G")) + " |")
    if "gaps" in results:
        g = results["gaps"]
        sets = list(next(iter(g["probes"].values())))
        lines += ["", f"## Distance of test-structure atoms to each training set (largest; fraction beyond "
                      f"{g['radius']}, {g['scale']})", "",
                  "| structure | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        for label, row in g["probes"].items():
            lines.append(f"| {label} | " + " | ".join(f"{row[n]['max']:.2f} ({row[n]['far_fraction']:.0%})"
                                                      for n in sets) + " |")
    lines += ["", "Stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["stage_seconds"].items()), ""]
    return "\n".join(lines)
