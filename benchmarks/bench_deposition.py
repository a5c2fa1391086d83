#!/usr/bin/env python
"""One deposition of a capped G-metaD bias, this checkout against an older source
tree, both in one process, deposition by deposition in turn.

Both biases start from the same hills (the long runs' settings: h = 1 meV, adaptive
sigma 1 A, stride 20, compression 0.3, the cap of --caps reached by depositions on
copies of Si64 displaced by 0.15 A), each writes its own hills file, and both
deposit on the same frames: Si64 displaced by --displacements (normal, A; 0.15 A
is step_parts.py's setting, where the 64 hills merge into about 50 distinct hills;
at 0.3 A most of them merge into hills already merged in the same deposition, as
in a capped long run, whose depositions of 64 hills touch 6 to 8 hills). The two
trees alternate which goes first. Per deposition, CPU time of this thread (the
hills file's fsync thread is not in it):

- ``metrics``: the hill metrics of the 64 candidates (``_candidates``: Jacobians,
  covariances and their inverses);
- ``apply``: ``apply_candidates`` (merge targets, merges, records, the hills file);
- ``bounds``: the eigenvalue bounds of the changed hills and their blocks, which
  the next evaluation computes (``HillSet.blocks``);
- ``deposition``: their sum. The step's own evaluation, which also yields each
  candidate's nearest hill, is not timed (a step pays it with or without a
  deposition).

Printed: best and median per tree, the median of the per-deposition ratios
now / before, and how far the two trees' hills are apart at the end (the merge
targets must be the same, the hills equal to round-off). Exits with status 1 if
they are not (targets differ, or a centre, height or metric differs by more than
1e-10 of the largest value of its kind).

    python benchmarks/bench_deposition.py --before /tmp/dep-before

--before: the root of a source tree with its own built ``biasserver/_kernels*.so``
(e.g. a git worktree with this checkout's .so copied in).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("metrics", "apply", "bounds", "deposition")
#: largest difference of centres, heights or metrics between the trees, relative to
#: the largest value of its kind, that counts as round-off
TOLERANCE = 1e-10


def bias_class(root: str, name: str):
    """GMetaDBias of the source tree at ``root``, imported as package ``name``."""
    package = os.path.join(os.path.abspath(root), "biasserver")
    spec = importlib.util.spec_from_file_location(name, os.path.join(package, "__init__.py"),
                                                  submodule_search_locations=[package])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.bias").GMetaDBias


def start_hills(bias_cls, path: str, cap: int, stride: int = 20, seed: int = 0) -> None:
    """The hills file ``path`` of a bias that reached ``cap`` hills (as step_parts.py)."""
    from ase.build import bulk

    sf_module = sys.modules[bias_cls.__module__.rsplit(".", 1)[0] + ".symmetry"]
    sf = sf_module.SymmetryFunctions.default(["Si"])
    atoms = bulk("Si", "diamond", 5.431, cubic=True).repeat(2)
    rng = np.random.default_rng(seed)
    bias = bias_cls(sf, height=1e-3, width=1.0, stride=stride, species={"Si": 1.0},
                    compression=0.3, max_hills=cap)
    while len(bias.hills["Si"]) < cap:
        frame = atoms.copy()
        frame.positions += rng.normal(0.0, 0.15, frame.positions.shape)
        bias.deposit(frame)
    bias.save(path)


def deposit(bias, frame, step: int) -> tuple[dict, list]:
    """One deposition at ``frame`` as GMetaDBias.step makes it; CPU ms of its parts
    and the ids of the records written."""
    bias.step_count = step
    desc = bias._descriptors(frame)
    nearest: dict = {}
    bias._evaluate(frame, desc, nearest)
    t0 = time.thread_time()
    candidates = bias._candidates(desc)
    t1 = time.thread_time()
    _, records = bias.apply_candidates(candidates, nearest)
    t2 = time.thread_time()
    for hills in bias.hills.values():
        hills.blocks()
    t3 = time.thread_time()
    times = {"metrics": t1 - t0, "apply": t2 - t1, "bounds": t3 - t2, "deposition": t3 - t0}
    return {k: v * 1e3 for k, v in times.items()}, [r.id for r in records]


def apart(now, before) -> dict:
    """Largest |difference| of the two biases' hills relative to the largest value,
    per kind (0 for bit-identical)."""
    out = {}
    for kind in ("centres", "heights", "metrics"):
        a, b = getattr(now.hills["Si"], kind), getattr(before.hills["Si"], kind)
        if a.shape != b.shape:
            out[kind] = float("inf")
            continue
        out[kind] = float(np.abs(a - b).max() / max(np.abs(b).max(), np.finfo(float).tiny))
    return out


def compare(classes: dict, cap: int, displacement: float, depositions: int, seed: int = 1) -> dict:
    """Both trees' depositions at one cap and displacement (``classes``: "now" and
    "before" -> GMetaDBias): per part and tree the CPU ms of every deposition, the
    per-deposition ratios, how far the hills end apart."""
    from ase.build import bulk

    atoms = bulk("Si", "diamond", 5.431, cubic=True).repeat(2)
    rng = np.random.default_rng(seed)
    times = {label: {part: [] for part in PARTS} for label in classes}
    same_targets = True
    with tempfile.TemporaryDirectory() as tmp:
        start = os.path.join(tmp, "start.hills")
        start_hills(classes["before"], start, cap)
        biases = {}
        for label, cls in classes.items():
            biases[label] = cls.load(start)
            biases[label].record_hills(os.path.join(tmp, f"{label}.hills"))
        for k in range(depositions):
            frame = atoms.copy()
            frame.positions += rng.normal(0.0, displacement, frame.positions.shape)
            ids = {}
            for label in (("now", "before") if k % 2 == 0 else ("before", "now")):
                parts, ids[label] = deposit(biases[label], frame, 20 * (k + 1))
                for part, value in parts.items():
                    times[label][part].append(value)
            same_targets &= ids["now"] == ids["before"]
        distance = apart(biases["now"], biases["before"])
        for bias in biases.values():
            bias.close()
    ratios = np.array(times["now"]["deposition"]) / np.array(times["before"]["deposition"])
    return {"cap": cap, "displacement": displacement, "depositions": depositions, "times": times,
            "ratio_median": float(np.median(ratios)), "same_targets": bool(same_targets), "apart": distance}


def table(results: list[dict], load: str) -> str:
    """Markdown table of :func:`compare`'s results."""
    lines = [f"CPU ms per deposition of 64 hills, best / median over the depositions (load average {load}); "
             "now / before: median of the per-deposition ratios; hills apart: largest |now - before| "
             "relative to the largest value (centres, heights, metrics) after the last deposition.", "",
             "| max_hills | displacement (A) | code | metrics | apply (merges, records, file) | bounds "
             "| deposition | now / before | same merge targets | hills apart |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for label in ("before", "now"):
            t = r["times"][label]
            cells = [f"{min(t[p]):.2f} / {np.median(t[p]):.2f}" for p in PARTS]
            extra = ([f"{r['ratio_median']:.2f}", "yes" if r["same_targets"] else "NO",
                      ", ".join(f"{v:.1e}" for v in r["apart"].values())] if label == "now" else ["", "", ""])
            lines.append(f"| {r['cap']} | {r['displacement']:g} | {label} | " + " | ".join(cells + extra) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="root of the older source tree (built)")
    parser.add_argument("--now", default=ROOT, help="root of the newer source tree (default: this checkout)")
    parser.add_argument("--caps", default="300,1000")
    parser.add_argument("--displacements", default="0.15,0.3", help="A, comma separated")
    parser.add_argument("--depositions", type=int, default=30)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    classes = {"now": bias_class(args.now, "gmetad_now"), "before": bias_class(args.before, "gmetad_before")}
    results = []
    for cap in (int(c) for c in args.caps.split(",")):
        for displacement in (float(d) for d in args.displacements.split(",")):
            results.append(compare(classes, cap, displacement, args.depositions))
            print(f"<!-- max_hills {cap}, {displacement:g} A: now/before {results[-1]['ratio_median']:.2f}, "
                  f"load {open('/proc/loadavg').read().split()[0]} -->", flush=True)
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(table(results, load))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle)
    bad = [r for r in results if not r["same_targets"] or max(r["apart"].values()) > TOLERANCE]
    for r in bad:
        print(f"bench_deposition.py: max_hills {r['cap']}, {r['displacement']:g} A: merge targets "
              f"{'equal' if r['same_targets'] else 'differ'}, hills apart by {r['apart']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
