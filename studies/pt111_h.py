"""The H on Pt(111) study (the paper's Figs. 1 and 2): where do three samplers take
the H atom, and what do NNPs trained on their frames make of its minimum-energy path?

One H atom on the 3x3x4 Pt(111) slab of ``examples/pt111-h`` (36 Pt + 1 H, NVT,
0.5 fs, Langevin thermostat, the example's wall keeping H within ``wall_height``
of the top layer in every run); EMT stands in for DFT (``truth``). Three training
sets, each from ``budget`` MD steps (= reference evaluations) of one run:

- **L**: plain MD at ``t_low`` (600 K), the bottom ``fixed_layers`` layer(s) fixed
  as in the example;
- **H**: plain MD at ``t_high`` (1700 K). EMT's top Pt layer premelts there
  (the full run, 5 ps, two layers fixed; docs/results/pt111-h.md): it moves out
  by 0.5 A, its heights spread over up to 1.7 A, atoms pop out as short-lived
  adatoms (11 % of the frames) and the layer's atoms wander (lateral mean square
  displacement 0.9 A^2), the second layer's 0.4 A^2. A user keeps the slab's
  lower half crystalline by fixing more of it: ``fixed_layers_high`` (2) bottom
  layers (a 4 ps test with one fixed layer let the second layer slide to
  0.4-0.7 A^2); the top layer's disorder is part of what high-temperature MD
  samples;
- **G**: G-metaD at ``t_low``, the bias on H's environment only (its forces
  still push the Pt atoms within H's cutoff: in the full run they tore the top
  layer after 1.6 ps and H went into it), settings chosen by a **scan**
  before anything is trained: every candidate of :data:`SCAN_CANDIDATES` runs
  ``scan_steps`` steps; it qualifies when the run is stable
  (:func:`studies.pipeline.stability`: mean temperature of the second half within
  25 % of the target, all numbers finite) and the slab stays intact (every
  checked frame has as many metal layers, by gaps in height, as the start);
  among those the one whose run covers the most H environments wins (coverage:
  :mod:`biasserver.coverage`, H atoms only, standardised by the L run's H
  environments, radius ``coverage_radius``). Ties go to the earlier candidate.
  No path, barrier or site energy enters the choice.

Then: **Fig. 1** (the H site over time for L, H and G, and the H environments on
the principal axes of H's symmetry functions, with the truth's relaxed sites
marked; site fractions and first-visit times as JSON); the same number of frames
selected from each set by the same rule; three committee NNPs (Pt and H) trained
identically; each NNP on each set's held-out frames (cross table); **Fig. 2**: the
path fcc -> hcp -> top -> fcc -> oct (:mod:`studies.pt111_h_paths`) with the truth
and with every committee member, each relaxing its own endpoints, plus every
member's energies on the truth's images; a markdown summary.

``PtHSettings`` holds every number; :func:`settings` gives the full or quick
(toy) scale and applies overrides (a YAML mapping of field names).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, TextIO

import numpy as np

from . import pipeline
from .adsorption_sites import SITES, metal_layers, site_series
from .pipeline import Pipeline, RunSpec, member_calculator
from .pt111_h_paths import ENDPOINTS

#: candidate G-metaD settings of the scan, fixed before any run: the example's
#: (20 meV hills every 5 steps, adaptive width 0.5 A), half the height, and twice
#: the width. Heights in eV, widths in A (symmetry-function space), stride in steps.
SCAN_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"height": 0.02, "width": 0.5, "stride": 5},
    {"height": 0.01, "width": 0.5, "stride": 5},
    {"height": 0.02, "width": 1.0, "stride": 5},
)

SYMMETRY = {"default": {"elements": ["Pt", "H"], "cutoff": 6.0}}

#: i-PI property stride of the sampling runs (steps between rows of md.out)
PROPERTY_STRIDE = 10


@dataclass
class PtHSettings:
    """Every number of the study (K, fs, A, eV; steps are MD steps = reference
    evaluations). ``budget``: steps per training set (one run each); ``pool``:
    frames spread over a set from which ``train_frames`` are chosen by
    farthest-point sampling, ``test_frames`` held out; ``training``: nnp
    TrainConfig keys, the same for all three NNPs; ``neb_*``: interior images per
    segment, force tolerance (eV/A) and step cap of each NEB; ``relax_*``: the
    same for the endpoints; ``site_stride``: every k-th frame classified for
    Fig. 1; ``jobs``: processes running at the same time."""

    t_low: float = 600.0
    t_high: float = 1700.0
    timestep: float = 0.5
    tau: float = 100.0
    fixed_layers: int = 1
    fixed_layers_high: int = 2
    wall_height: float = 2.5
    wall_k: float = 5.0
    budget: int = 10000
    scan_steps: int = 2000
    scan_candidates: list = field(default_factory=lambda: [dict(c) for c in SCAN_CANDIDATES])
    scan_temperature_tolerance: float = 0.25
    coverage_radius: float = 1.0
    coverage_stride: int = 10
    site_stride: int = 2
    pool: int = 1000
    train_frames: int = 200
    test_frames: int = 60
    training: dict = field(default_factory=lambda: {"committee": 3, "epochs": 100, "seed": 0, "patience": 25})
    neb_images: int = 5
    neb_fmax: float = 0.05
    neb_steps: int = 300
    relax_fmax: float = 0.02
    relax_steps: int = 300
    jobs: int = 2

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


QUICK_OVERRIDES: dict[str, Any] = {
    "budget": 300, "scan_steps": 120,
    "scan_candidates": [dict(SCAN_CANDIDATES[0]), dict(SCAN_CANDIDATES[1])],
    "coverage_stride": 5, "site_stride": 1, "pool": 150, "train_frames": 30, "test_frames": 10,
    "training": {"committee": 2, "epochs": 10, "seed": 0, "patience": 10},
    "neb_images": 2, "neb_fmax": 0.2, "neb_steps": 40, "relax_fmax": 0.02, "relax_steps": 200,
}


def settings(quick: bool = False, overrides: Mapping[str, Any] | None = None,
             where: str = "overrides") -> PtHSettings:
    """The full or quick settings with ``overrides`` (field -> value) applied;
    unknown fields or inconsistent values raise ValueError naming ``where`` and the key."""
    values = dict(QUICK_OVERRIDES) if quick else {}
    known = {f.name for f in dataclasses.fields(PtHSettings)}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ValueError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        values[key] = value
    s = PtHSettings(**values)
    if s.pool > s.budget + 1:
        raise ValueError(f"{where}: pool {s.pool} is larger than the {s.budget + 1} frames of a set (budget + 1)")
    if s.train_frames + s.test_frames > s.pool:
        raise ValueError(f"{where}: train_frames + test_frames ({s.train_frames} + {s.test_frames}) "
                         f"exceed the pool of {s.pool}")
    for key in ("fixed_layers", "fixed_layers_high"):
        if not 0 <= getattr(s, key) <= 2:
            raise ValueError(f"{where}: {key} must be 0, 1 or 2 (of the slab's 4 layers), got {getattr(s, key)}")
    if not s.scan_candidates:
        raise ValueError(f"{where}: scan_candidates is empty")
    return s


# ------------------------------------------------------------------ run specs


def start_structure():
    """The example's starting structure (H in an fcc hollow), periodic in 3D."""
    from ase.io import read

    from .pt111_h_paths import SLAB_FILE

    atoms = read(SLAB_FILE)
    atoms.pbc = True
    return atoms


def _layers(atoms) -> list[np.ndarray]:
    metal = np.array([a.index for a in atoms if a.symbol != "H"])
    return metal_layers(atoms, metal)


def driver_command(truth: str) -> str:
    return f"gmetad driver {truth} --structure {{structure}} --address {{address}}"


def walls(s: PtHSettings, atoms) -> list[dict]:
    """The example's wall: H at most ``wall_height`` A above the top Pt layer."""
    top = sorted(int(i) for i in _layers(atoms)[0])
    return [{"kind": "height", "atoms": "H", "height": s.wall_height, "k": s.wall_k, "reference": top}]


def spec(s: PtHSettings, truth: str, name: str, steps: int, temperature: float, fixed_layers: int,
         seed: int, bias: Mapping[str, Any] | None = None) -> RunSpec:
    atoms = start_structure()
    layers = _layers(atoms)
    fixed = sorted(int(i) for layer in layers[len(layers) - fixed_layers:] for i in layer) if fixed_layers else []
    g = None if bias is None else {**bias, "species": {"H": 1.0, "Pt": 0.0}}
    return RunSpec(name, atoms, steps, temperature, driver_command(truth), bias=g, walls=walls(s, atoms),
                   seed=seed, timestep=s.timestep, tau=s.tau, property_stride=PROPERTY_STRIDE, fixed=fixed)


# ------------------------------------------------------------------ run diagnostics


def slab_report(frames: Sequence, gap: float = 0.5) -> dict[str, Any]:
    """What the slab did in ``frames``: the fraction of frames with as many metal
    layers (groups separated by more than ``gap`` A in height) as the first frame
    (``intact_fraction``), and the top layer's largest outward shift and height
    spread (A) over the frames."""
    from .adsorption_sites import _layers_by_gaps

    first = frames[0]
    metal = np.array([a.index for a in first if a.symbol != "H"])
    n_layers = len(_layers_by_gaps(first.positions[metal, 2], gap))
    z0 = first.positions[_layers(first)[0], 2].mean()
    intact, shift, spread = 0, 0.0, 0.0
    for atoms in frames:
        z = atoms.positions[metal, 2]
        intact += len(_layers_by_gaps(z, gap)) == n_layers
        top = atoms.positions[_layers(atoms)[0], 2]
        shift, spread = max(shift, top.mean() - z0), max(spread, float(np.ptp(top)))
    return {"intact_fraction": intact / len(frames), "layers": n_layers, "frames_checked": len(frames),
            "top_layer_max_outward_shift": float(shift), "top_layer_max_height_spread": float(spread)}


def h_coverage_curve(frames: Sequence, reference_frames: Sequence, sf, radius: float) -> list[int]:
    """Covering centres of the H environments after each frame (H only, standardised
    by the H environments of ``reference_frames``)."""
    from biasserver.coverage import Coverage, coverage_curve, environments

    reference = Coverage.from_reference({"H": environments(reference_frames, sf)["H"]}, radius)
    return coverage_curve(frames, sf, reference).tolist()


def site_statistics(sites: Sequence[str], time_ps: Sequence[float]) -> dict[str, Any]:
    """Fraction of frames in each site and the time (ps) of the first visit (None: never)."""
    n = len(sites)
    out = {"fractions": {s: sites.count(s) / n for s in SITES}, "first_visit_ps": {}}
    for s in SITES:
        k = next((i for i, x in enumerate(sites) if x == s), None)
        out["first_visit_ps"][s] = None if k is None else float(time_ps[k])
    out["visited"] = [s for s in SITES if out["fractions"][s] > 0]
    return out


def h_principal_axes(frame_sets: Mapping[str, Sequence], sf, stride: int,
                     markers: Mapping[str, Any] | None = None, components: int = 2) -> dict[str, Any]:
    """The H atom's symmetry-function vectors of every ``stride``-th frame of each
    set, standardised with the pooled mean and std and projected on the pooled
    principal axes; ``markers`` (label -> structure, e.g. the relaxed sites)
    projected the same way. Returns {"sets": {name: [[pc1, pc2], ...]},
    "markers": {label: [pc1, pc2]}, "explained_variance_ratio": [...]}."""
    per_set = {name: np.array([sf.values(f)["H"][0] for f in frames[::stride]]) for name, frames in frame_sets.items()}
    pooled = np.concatenate(list(per_set.values()))
    mean, std = pooled.mean(axis=0), pooled.std(axis=0)
    std[std == 0] = 1.0
    x = (pooled - mean) / std
    _, sv, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    axes = vt[:components]
    centre = x.mean(axis=0)

    def project(g):
        return ((np.atleast_2d(g) - mean) / std - centre) @ axes.T

    out = {"sets": {n: project(g).tolist() for n, g in per_set.items()},
           "markers": {k: project(sf.values(a)["H"][0])[0].tolist() for k, a in (markers or {}).items()},
           "explained_variance_ratio": ((sv ** 2) / (sv ** 2).sum())[:components].tolist()}
    return out


# ------------------------------------------------------------------ path workers (top-level: picklable)


def path_settings(s: PtHSettings) -> dict[str, Any]:
    return {"n_images": s.neb_images, "fmax": s.neb_fmax, "steps": s.neb_steps, "relax_fmax": s.relax_fmax,
            "relax_steps": s.relax_steps, "fixed_layers": s.fixed_layers}


def path_task(model_path: str | None, member: Any, truth_images: str | None, out_path: str,
              neb: Mapping[str, Any]) -> dict:
    """One potential's path (kept in ``out_path``; a resumed stage reuses it): the
    truth ``drivers.calculators.make_calculator(member)`` when ``model_path`` is
    None, else committee member ``member`` of ``model_path``. With
    ``truth_images`` (extxyz of the truth's path) the potential also gets the
    truth's endpoints as fallback and its energies on those images are added
    (``on_truth_images``, eV relative to the first). The images of its own path
    go to ``out_path`` with .extxyz for .json."""
    import json

    from ase.io import read, write

    from . import pt111_h_paths as paths

    if os.path.exists(out_path):
        with open(out_path) as handle:
            return json.load(handle)
    calc = member_calculator(model_path, member)
    t0 = time.monotonic()
    fallback = None
    reference = None
    if truth_images is not None:
        reference = read(truth_images, ":", format="extxyz")
        fallback = paths.endpoint_structures(reference)
    record: dict[str, Any] = {}
    try:
        images, summary = paths.minimum_energy_path(calc, fallback=fallback, **neb)
        write(out_path[:-len(".json")] + ".extxyz", images, format="extxyz")
        record.update(summary)
        record["failure"] = None
    except Exception as err:  # noqa: BLE001 - a potential that cannot do the path is a result
        record["failure"] = f"{type(err).__name__}: {err}"
    if reference is not None:
        record["on_truth_images"] = paths.energies_on_images(calc, reference).tolist()
    record["seconds"] = time.monotonic() - t0
    pipeline.write_json(out_path, record)
    with open(out_path) as handle:
        return json.load(handle)


def compare_paths(truth: Mapping[str, Any], members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A committee's path against the truth's: per member and as mean and spread over
    members, the site energies and barriers (eV), and the error on the truth's
    images (member minus truth, eV, each relative to the first image; largest
    absolute value ``max_abs_error_on_truth_images``)."""
    truth_on_images = np.array(truth["images_energy"])
    out: dict[str, Any] = {"sites": {}, "barriers": {}, "failures": [m["failure"] for m in members if m.get("failure")]}
    ok = [m for m in members if not m.get("failure")]
    for site in truth["sites"]:
        vals = [m["sites"][site]["energy"] for m in ok]
        out["sites"][site] = _spread(vals) | {"minimum": [m["sites"][site]["minimum"] for m in ok],
                                             "used_fallback": [m["sites"][site]["used_fallback"] for m in ok]}
    for key in truth["barriers"]:
        out["barriers"][key] = _spread([m["barriers"][key] for m in ok])
    errors = np.array([np.asarray(m["on_truth_images"]) - truth_on_images for m in members])
    mean_error = errors.mean(axis=0)
    out["error_on_truth_images"] = {"mean": mean_error.tolist(), "std": errors.std(axis=0).tolist(),
                                    "members": errors.tolist()}
    out["max_abs_error_on_truth_images"] = {"committee_mean": float(np.abs(mean_error).max()),
                                            "members": np.abs(errors).max(axis=1).tolist()}
    return out


def _spread(values: Sequence[float]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    return {"members": list(values), "mean": float(v.mean()) if len(v) else None,
            "std": float(v.std()) if len(v) else None}


# ------------------------------------------------------------------ the study


def run_study(workdir: str, s: PtHSettings, truth: str = "emt", stream: TextIO = sys.stderr,
              stop_after: str | None = None) -> dict[str, Any]:
    """Run (or resume) the whole study in ``workdir``; returns the results dict also
    written to ``workdir/report/pt111-h-results.json``."""
    from biasserver.symmetry import SymmetryFunctions

    p = Pipeline(workdir, stream=stream, stop_after=stop_after)
    sf = SymmetryFunctions.default(SYMMETRY["default"]["elements"], SYMMETRY["default"]["cutoff"])
    p.say(f"H on Pt(111) study in {p.workdir} (truth: {truth}, budget {s.budget} steps per set)")
    results: dict[str, Any] = {"settings": s.describe(), "truth": truth}

    def sampling(specs):
        return pipeline.sampling_stage(p, specs, SYMMETRY, s.jobs)

    specs = {"L": spec(s, truth, "L", s.budget, s.t_low, s.fixed_layers, 11),
             "H": spec(s, truth, "H", s.budget, s.t_high, s.fixed_layers_high, 21)}
    both = [specs["L"], specs["H"]]
    runs_lh = p.stage("sample_LH", {"runs": [x.describe() for x in both]}, sampling(both))

    # -- the G-metaD settings scan: stability + coverage of H environments, no path involved
    scan_specs = [spec(s, truth, f"scan{k + 1}", s.scan_steps, s.t_low, s.fixed_layers, 101 + k, cand)
                  for k, cand in enumerate(s.scan_candidates)]

    def scan(folder, resume):
        out = pipeline.sample_all(scan_specs, folder, SYMMETRY, s.jobs, stream)
        reference = pipeline.read_frames(p.absolute(runs_lh["L"]["frames"]), s.coverage_stride)
        rows = []
        for k, (cand, sp) in enumerate(zip(s.scan_candidates, scan_specs)):
            r = out[sp.name]
            frames = pipeline.read_frames(r["frames"], s.coverage_stride)
            stab = pipeline.stability(pipeline.md_log(r["md_out"]), s.t_low, s.scan_temperature_tolerance)
            slab = slab_report(frames)
            coverage = h_coverage_curve(frames, reference, sf, s.coverage_radius)[-1]
            qualifies = stab["stable"] and slab["intact_fraction"] == 1.0
            rows.append({"candidate": k + 1, **cand, "temperature": s.t_low, **stab, "slab": slab,
                         "qualifies": qualifies, "h_coverage": coverage, "seconds": r["seconds"]})
            p.say(f"scan candidate {k + 1} {cand}: stable={stab['stable']} "
                  f"(T2 {stab['temperature_mean_second_half']:.0f} K), slab intact in "
                  f"{slab['intact_fraction']:.0%} of frames, H coverage {coverage}")
        good = [r for r in rows if r["qualifies"]]
        if good:
            best = max(good, key=lambda r: (r["h_coverage"], -r["candidate"]))
            rule = "stable with the slab intact, then most H coverage"
        else:
            best = min(rows, key=lambda r: abs(r["temperature_mean_second_half"] - s.t_low))
            rule = "NO candidate qualified: the one closest to the target temperature"
        chosen = dict(s.scan_candidates[best["candidate"] - 1])
        return {"rows": rows, "chosen": chosen, "chosen_candidate": best["candidate"], "rule": rule}

    scan_out = p.stage("scan", {"runs": [x.describe() for x in scan_specs],
                                "rule": [s.scan_temperature_tolerance, s.coverage_radius, s.coverage_stride, 1]},
                       scan, depends=["sample_LH"])
    results["scan"] = scan_out
    specs["G"] = spec(s, truth, "G", s.budget, s.t_low, s.fixed_layers, 31, scan_out["chosen"])
    runs_g = p.stage("sample_G", {"runs": [specs["G"].describe()]}, sampling([specs["G"]]), depends=["scan"])
    runs = {"L": runs_lh["L"], "H": runs_lh["H"], "G": runs_g["G"]}
    set_files = {name: [p.absolute(r["frames"])] for name, r in runs.items()}
    results["runs"] = runs

    # -- Fig. 1: sites over time, site statistics, H environments on principal axes
    def sites(folder, resume):
        from ase.io import write

        from . import pt111_h_paths as paths
        from .pt111_h_plots import fig1_pca, fig1_sites
        from drivers.calculators import make_calculator

        frames = {n: pipeline.read_frames(f[0], s.site_stride) for n, f in set_files.items()}
        out: dict[str, Any] = {"runs": {}}
        series = {}
        for name, fr in frames.items():
            sp = specs[name]
            time_ps = [f.info["step"] * sp.timestep / 1000.0 for f in fr]
            labels = site_series(fr)
            series[name] = (time_ps, labels)
            log = pipeline.md_log(p.absolute(runs[name]["md_out"]))
            out["runs"][name] = {**site_statistics(labels, time_ps), "temperature": sp.temperature,
                                 "fixed_layers": {"L": s.fixed_layers, "H": s.fixed_layers_high,
                                                  "G": s.fixed_layers}[name],
                                 "bias": sp.bias, "frames_classified": len(fr),
                                 "stability": pipeline.stability(log, sp.temperature),
                                 "slab": slab_report(fr[::max(1, s.coverage_stride // s.site_stride)])}
            p.say(f"sites {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in out["runs"][name]["fractions"].items()))
        calc = make_calculator(truth)
        markers = {}
        for site in paths.ENDPOINTS:
            atoms, _ = paths.relax_endpoint(calc, site, s.fixed_layers, s.relax_fmax, s.relax_steps)
            markers[site] = atoms
        write(os.path.join(folder, "relaxed-sites.extxyz"), list(markers.values()), format="extxyz")
        out["pca"] = h_principal_axes(frames, sf, s.coverage_stride, markers)
        reference = pipeline.read_frames(set_files["L"][0], s.coverage_stride)
        out["h_coverage"] = {n: {"time_ps": [f.info["step"] * specs[n].timestep / 1000.0
                                             for f in fr[::max(1, s.coverage_stride // s.site_stride)]],
                                 "centres": h_coverage_curve(fr[::max(1, s.coverage_stride // s.site_stride)],
                                                             reference, sf, s.coverage_radius)}
                             for n, fr in frames.items()}
        out["figures"] = {"sites": p.relative(fig1_sites(series, os.path.join(folder, "pt111-h-fig1-sites.png"))),
                          "pca": p.relative(fig1_pca(out["pca"], os.path.join(folder, "pt111-h-fig1-pca.png")))}
        pipeline.write_json(os.path.join(folder, "pt111-h-sites.json"),
                            {n: {k: r[k] for k in ("fractions", "first_visit_ps", "visited")}
                             for n, r in out["runs"].items()})
        out["json"] = p.relative(os.path.join(folder, "pt111-h-sites.json"))
        return out

    results["sites"] = p.stage("sites", {"stride": s.site_stride, "coverage": [s.coverage_stride, s.coverage_radius],
                                         "relax": [s.relax_fmax, s.relax_steps], "truth": truth,
                                         "endpoints": ENDPOINTS},
                               sites, depends=["sample_LH", "sample_G"])

    # -- equal budgets: the same number of frames by the same rule, then three committees
    def select(folder, resume):
        out = pipeline.select_equal_budget(set_files, s.train_frames, s.test_frames, s.pool, sf, folder)
        for v in out.values():
            v["train"], v["test"] = p.relative(v["train"]), p.relative(v["test"])
        return out

    selection = p.stage("select", {"pool": s.pool, "train": s.train_frames, "test": s.test_frames}, select,
                        depends=["sample_LH", "sample_G"])
    results["selection"] = {k: {kk: vv for kk, vv in v.items() if not kk.endswith("indices")}
                            for k, v in selection.items()}
    training = {"symmetry": SYMMETRY, **s.training}

    def train(folder, resume):
        names = ("L", "H", "G")
        args = [(p.absolute(selection[n]["train"]), os.path.join(folder, f"nnp-{n}.pt"), dict(training),
                 os.path.join(folder, f"nnp-{n}.train.log")) for n in names]
        out = pipeline.parallel(pipeline.train_task, args, s.jobs, p.say, list(names))
        return {n: {**o, "model": p.relative(o["model"])} for n, o in zip(names, out)}

    models = p.stage("train", {"training": training}, train, depends=["select"])
    results["models"] = models

    def cross(folder, resume):
        return pipeline.cross_table({f"NNP-{n}": p.absolute(m["model"]) for n, m in models.items()},
                                    {n: p.absolute(v["test"]) for n, v in selection.items()})

    results["cross_table"] = p.stage("cross", {}, cross, depends=["train", "select"])

    # -- Fig. 2: the path with the truth, then with every committee member
    neb = path_settings(s)

    def paths_stage(folder, resume):
        from nnp.model import load_model

        truth_json = os.path.join(folder, "truth.json")
        p.say("  truth path ...")
        truth_rec = path_task(None, truth, None, truth_json, neb)
        if truth_rec.get("failure"):
            raise RuntimeError(f"the truth's path failed: {truth_rec['failure']}")
        truth_images = os.path.join(folder, "truth.extxyz")
        truth_rec["images_energy"] = _energies_of(truth_images)
        tasks, labels, owners = [], [], []
        for name, m in models.items():
            model_path = p.absolute(m["model"])
            for k in range(load_model(model_path).n_members):
                tasks.append((model_path, k, truth_images, os.path.join(folder, f"NNP-{name}-{k}.json"), neb))
                labels.append(f"NNP-{name} member {k + 1}")
                owners.append(name)
        records = pipeline.parallel(path_task, tasks, s.jobs, p.say, labels)
        out: dict[str, Any] = {"truth": truth_rec, "members": {}, "comparison": {}}
        for name in models:
            members = [r for r, o in zip(records, owners) if o == name]
            out["members"][f"NNP-{name}"] = members
            out["comparison"][f"NNP-{name}"] = compare_paths(truth_rec, members)
        return out

    results["paths"] = p.stage("paths", {"neb": neb, "truth": truth, "endpoints": ENDPOINTS}, paths_stage,
                               depends=["train"])
    results["stage_seconds"] = p.timings()
    results["wall_seconds_this_invocation"] = time.monotonic() - p.started

    def report(folder, resume):
        from .pt111_h_plots import fig2_paths

        fig2 = fig2_paths(results["paths"], os.path.join(folder, "pt111-h-fig2.png"))
        results["figures"] = {**results["sites"]["figures"], "fig2": p.relative(fig2)}
        fig2_json = os.path.join(folder, "pt111-h-fig2.json")
        pipeline.write_json(fig2_json, fig2_summary(results["paths"]))
        pipeline.write_json(os.path.join(folder, "pt111-h-results.json"), results)
        with open(os.path.join(folder, "pt111-h-summary.md"), "w") as handle:
            handle.write(summary_markdown(results))
        return {"json": p.relative(os.path.join(folder, "pt111-h-results.json")), "fig2_json": p.relative(fig2_json),
                "summary": p.relative(os.path.join(folder, "pt111-h-summary.md")), "figures": results["figures"]}

    rep = p.stage("report", {"version": 1}, report, depends=["scan", "sites", "select", "train", "cross", "paths"])
    results["report"] = rep
    p.say(f"H on Pt(111) study finished: {p.path(rep['summary'])}")
    return results


def _energies_of(path: str) -> list[float]:
    from ase.io import read

    return [float(a.info["path_energy"]) for a in read(path, ":", format="extxyz")]


def fig2_summary(paths_out: Mapping[str, Any]) -> dict[str, Any]:
    """Barriers and site energies (eV, relative to fcc) of the truth and of each
    committee (members, mean, spread), with each committee's error on the truth's images."""
    truth = paths_out["truth"]
    out = {"truth": {"sites": {k: v["energy"] for k, v in truth["sites"].items()},
                     "sites_are_minima": {k: v["minimum"] for k, v in truth["sites"].items()},
                     "barriers": truth["barriers"]}}
    for name, c in paths_out["comparison"].items():
        out[name] = {"sites": c["sites"], "barriers": c["barriers"],
                     "max_abs_error_on_truth_images": c["max_abs_error_on_truth_images"],
                     "failures": c["failures"]}
    return out


# ------------------------------------------------------------------ summary


def summary_markdown(results: Mapping[str, Any]) -> str:
    """A short markdown summary of a finished study."""
    s = results["settings"]
    lines = ["# H on Pt(111): three samplers, NNP-L/H/G and the path fcc -> hcp -> top -> fcc -> oct", "",
             f"Truth: `{results['truth']}`. {s['budget']} reference evaluations per set (one run each, "
             f"{s['budget'] * s['timestep'] / 1000:.2f} ps at {s['timestep']} fs); {s['train_frames']} training "
             f"frames per set from a pool of {s['pool']}; committees of {s['training'].get('committee')}, "
             f"{s['training'].get('epochs')} epochs. Bottom layers fixed: L and G {s['fixed_layers']}, "
             f"H {s['fixed_layers_high']}.", "",
             "## G-metaD settings scan (chosen before any NNP or path was computed)", "",
             "| # | h (eV) | sigma | stride | stable | T 2nd half (K) | slab intact | H coverage |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["scan"]["rows"]:
        lines.append(f"| {r['candidate']} | {r['height']} | {r['width']} | {r['stride']} | "
                     f"{'yes' if r['stable'] else 'no'} | {r['temperature_mean_second_half']:.0f} | "
                     f"{r['slab']['intact_fraction']:.0%} | {r['h_coverage']} |")
    lines += ["", f"Chosen: candidate {results['scan']['chosen_candidate']} ({results['scan']['rule']}).", "",
              "## Fig. 1: where the H atom went (fraction of frames; first visit in ps)", "",
              "| run | T (K) | " + " | ".join(SITES) + " | H coverage | slab: top layer out / spread (A) |",
              "|---|---|" + "---|" * len(SITES) + "---|---|"]
    for name, r in results["sites"]["runs"].items():
        cells = []
        for site in SITES:
            first = r["first_visit_ps"][site]
            cells.append(f"{r['fractions'][site]:.3f}" + (f" ({first:.2f})" if first is not None else ""))
        cov = results["sites"]["h_coverage"][name]["centres"][-1]
        lines.append(f"| {name} | {r['temperature']:g} | " + " | ".join(cells) + f" | {cov} | "
                     f"{r['slab']['top_layer_max_outward_shift']:.2f} / {r['slab']['top_layer_max_height_spread']:.2f} |")
    lines += ["", "## Force RMSE (eV/A) / energy RMSE (meV/atom) of each NNP on each set's test frames", "",
              "| | " + " | ".join(results["cross_table"][next(iter(results["cross_table"]))]) + " |",
              "|---|" + "---|" * len(results["cross_table"][next(iter(results["cross_table"]))])]
    for m, row in results["cross_table"].items():
        lines.append(f"| {m} | " + " | ".join(f"{v['force_rmse']:.3f} / {1000 * v['energy_rmse']:.1f}"
                                              for v in row.values()) + " |")
    paths_out = results["paths"]
    truth = paths_out["truth"]
    keys = ["fcc->hcp", "hcp->fcc", "hcp->top", "top->fcc", "fcc->oct", "oct->fcc"]
    lines += ["", "## Fig. 2: site energies and barriers (eV, relative to each potential's fcc; "
                  "committee mean +- spread)", "",
              "| | hcp | top | oct | " + " | ".join(keys) + " | max error on truth images |",
              "|---|---|---|---|" + "---|" * len(keys) + "---|"]
    lines.append("| truth | " + " | ".join(f"{truth['sites'][k]['energy']:.4f}" for k in ("hcp", "top", "oct"))
                 + " | " + " | ".join(f"{truth['barriers'][k]:.4f}" for k in keys) + " | - |")

    def fmt(v):
        return "failed" if v["mean"] is None else f"{v['mean']:.3f} +- {v['std']:.3f}"

    for name, c in paths_out["comparison"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(c["sites"][k]) for k in ("hcp", "top", "oct")) + " | "
                     + " | ".join(fmt(c["barriers"][k]) for k in keys)
                     + f" | {c['max_abs_error_on_truth_images']['committee_mean']:.3f} |")
    lines.append("")
    for name, c in paths_out["comparison"].items():
        sub = c["sites"]["oct"]
        notes = []
        if not all(sub["minimum"]):
            notes.append(f"{sub['minimum'].count(False)} of {len(sub['minimum'])} members do not keep H in the "
                         "octahedral site (it left the site or the top layer broke; the path ends at the truth's "
                         "geometry)")
        if c["failures"]:
            notes.append(f"{len(c['failures'])} members failed: {c['failures'][0]}")
        if notes:
            lines.append(f"- {name}: " + "; ".join(notes))
    lines += ["", "Stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["stage_seconds"].items()), ""]
    return "\n".join(lines)
