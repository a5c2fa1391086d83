#!/usr/bin/env python
"""Merge rules of a bounded bias, compared offline on one exact run's hills.

Replays the depositions of an exact run of benchmarks/long_run.py (its hills file:
every hill, in deposition order) into biases with compression and/or max_hills,
through GMetaDBias.apply_candidates (the code path of a run), and compares their
hills energy with the exact sum over every hill deposited so far, at the run's own
frames (every --check-every depositions). Without the feedback of a biased run on
where the atoms go, so every setting sees the same hills and frames: a screen of
the approximation itself.

Merge rules (HillSet.merge_into; the centre and covariance are always the
height-weighted moment match):

- ``value``: the merged height is the two hills' sum at the merged centre (this
  version's rule);
- ``sum``: the merged height is h0 + h1 (earlier versions);
- ``mass``: centre, covariance and height that keep each Gaussian's integral
  h sqrt(det S) (weights proportional to the integrals).

    python benchmarks/merge_rules.py DIR 0.3:1000:value 0.3:1000:sum none:300:mass ...

Each setting is COMPRESSION:MAX_HILLS:RULE (none for off). DIR holds exact.hills and
exact.npz. Prints one Markdown row per setting, and exits with status 1 if a
replay is not plausible (see :func:`problems`).

    python benchmarks/merge_rules.py --quick [DIR SETTING ...]    # CI

--quick: without DIR, a 200-step exact run of long_run.py (10 depositions of 64
hills) in a temporary folder; without settings, every rule at max_hills 200 (in
so short a run compression 0.3 alone merges nearly all hills into a few), once
with compression 0.3, and the control none:none:value (no approximation: its
error must be zero); an energy check after every deposition.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ase import Atoms  # noqa: E402

from biasserver import hillsfile  # noqa: E402
from biasserver.bias import GMetaDBias, HillCandidates  # noqa: E402
from biasserver.hills import HillSet  # noqa: E402
from biasserver.symmetry import SymmetryFunctions  # noqa: E402


def _moments(hills: HillSet, index: int, centre, height, metric, covariance, weights):
    """Moment-matched centre and covariance of hill ``index`` and a new hill, with the
    two hills weighted by ``weights`` (p0, p1), p0 + p1 = 1."""
    mu0, mu1 = hills.centres[index].copy(), np.asarray(centre, dtype=np.float64)
    cov0 = np.linalg.inv(hills.metrics[index])
    cov1 = np.linalg.inv(metric) if covariance is None else covariance
    p0, p1 = weights
    d = mu0 - mu1
    cov = p0 * cov0 + p1 * cov1 + (p0 * p1) * np.outer(d, d)
    return p0 * mu0 + p1 * mu1, 0.5 * (cov + cov.T), cov0, cov1


def merge_sum(hills: HillSet, index, centre, height, metric, step, covariance=None):
    """Earlier versions' rule: heights add."""
    h0, h1 = float(hills.heights[index]), float(height)
    mu, cov, _, _ = _moments(hills, index, centre, height, metric, covariance, (h0 / (h0 + h1), h1 / (h0 + h1)))
    m = np.linalg.inv(cov)
    hills.replace(index, mu, h0 + h1, 0.5 * (m + m.T), step)


def merge_mass(hills: HillSet, index, centre, height, metric, step, covariance=None):
    """Integrals h sqrt(det S) kept: weights and merged height from them."""
    h0, h1 = float(hills.heights[index]), float(height)
    cov0 = np.linalg.inv(hills.metrics[index])
    cov1 = np.linalg.inv(metric) if covariance is None else covariance
    logdet0, logdet1 = np.linalg.slogdet(cov0)[1], np.linalg.slogdet(cov1)[1]
    a1 = h1 / h0 * np.exp(0.5 * (logdet1 - logdet0))
    mu, cov, _, _ = _moments(hills, index, centre, height, metric, cov1, (1 / (1 + a1), a1 / (1 + a1)))
    h = h0 * (1.0 + a1) * np.exp(0.5 * (logdet0 - np.linalg.slogdet(cov)[1]))
    m = np.linalg.inv(cov)
    hills.replace(index, mu, h, 0.5 * (m + m.T), step)


RULES = {"value": None, "sum": merge_sum, "mass": merge_mass}
#: --quick: the exact run's length (MD steps) and the settings replayed
QUICK_STEPS = 200
QUICK_SETTINGS = ["none:200:value", "none:200:sum", "none:200:mass", "0.3:200:value", "none:none:value"]


def replay(content, frames, cell, sf, compression, max_hills, rule, check_every):
    """(step, approximate energy, exact energy) every ``check_every`` depositions, the
    number of hills at the end and the CPU ms per deposition."""
    bias = GMetaDBias(sf, 1e-3, 1.0, 20, {"Si": 1.0}, compression=compression, max_hills=max_hills)
    hills = bias.hills["Si"]
    if RULES[rule] is not None:
        hills.merge_into = RULES[rule].__get__(hills)
    exact = HillSet(sf.size("Si"), adaptive=True)
    by_step: dict[int, list] = {}
    for r in content.records:
        by_step.setdefault(r.step, []).append(r)
    steps = sorted(by_step)[: len(frames) - 1]
    checks, cpu = [], 0.0
    for k, step in enumerate(steps):
        records = by_step[step]
        candidates = HillCandidates("Si", np.array([r.centre for r in records]), [r.metric for r in records],
                                    np.arange(len(records)))
        bias.step_count = step
        c = time.thread_time()
        bias.apply_candidates([candidates])
        cpu += time.thread_time() - c
        for r in records:
            exact.add(r.centre, r.height, r.metric, step)
        if (k + 1) % check_every == 0:
            # frame k + 1 is the structure frame_every (= stride) steps after this deposition
            g = sf.values(Atoms("Si64", positions=frames[k + 1], cell=cell, pbc=True))["Si"]
            checks.append((step, hills.evaluate(g, False)[0].sum(), exact.evaluate(g, False)[0].sum()))
    return np.array(checks), len(hills), cpu / max(1, len(steps)) * 1e3


def problems(setting: str, checks: np.ndarray, n_hills: int, cap: int | None, exact_setting: bool) -> list[str]:
    """What is wrong with the replay of ``setting``: no energy checks, an exact energy
    not positive or an error not finite, more hills than the cap, or, for the setting
    without approximation (``exact_setting``), any difference from the exact sum
    beyond round-off. Empty if nothing is."""
    if len(checks) == 0:
        return [f"{setting}: no energy check (fewer depositions than --check-every)"]
    found = []
    approx, exact = checks[:, 1], checks[:, 2]
    if not np.all(np.isfinite(exact) & (exact > 0)):
        found.append(f"{setting}: exact energies not all positive and finite: {exact}")
    elif not np.all(np.isfinite(approx)):
        found.append(f"{setting}: errors not all finite: {approx / exact - 1}")
    elif exact_setting and np.abs(approx - exact).max() > 1e-12 * np.abs(exact).max():
        found.append(f"{setting}: no approximation, yet {np.abs(approx - exact).max():.3g} eV from the exact sum")
    if cap is not None and n_hills > cap:
        found.append(f"{setting}: {n_hills} hills at the end, above max_hills {cap}")
    return found


def exact_run(folder: str, steps: int = QUICK_STEPS) -> None:
    """A short exact run of benchmarks/long_run.py (its run settings, 500 K) into
    ``folder``: exact.hills and exact.npz, a frame every stride."""
    sys.path.insert(0, HERE)
    import long_run
    long_run.main(["run", "exact", "--steps", str(steps), "--window", str(steps), "--temperature", "500",
                   "--out", folder])


def compare(folder: str, settings: list[str], check_every: int) -> int:
    """Replay the exact run in ``folder`` for every setting and print the table;
    0 if every replay passed :func:`problems`, else 1 (their messages on stderr)."""
    content = hillsfile.read(os.path.join(folder, "exact.hills"))
    with np.load(os.path.join(folder, "exact.npz")) as data:
        frames, cell = data["frames"], data["cell"]
    sf = SymmetryFunctions.default(["Si"])
    print(f"Exact run: {len({r.step for r in content.records})} depositions, {len(content.records)} hills, "
          f"{len(frames)} frames.")
    print()
    headers = ["compression", "max_hills", "merge rule", "hills at end", "CPU ms per deposition",
               "largest |error|", "error at end", "error every tenth of the run"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    found = []
    for setting in settings:
        compression, cap, rule = setting.split(":")
        max_hills = None if cap == "none" else int(cap)
        checks, n_hills, ms = replay(content, frames, cell, sf, None if compression == "none" else float(compression),
                                     max_hills, rule, check_every)
        found += problems(setting, checks, n_hills, max_hills, compression == "none" and max_hills is None)
        if len(checks) == 0:
            continue
        rel = (checks[:, 1] - checks[:, 2]) / checks[:, 2]
        tenth = rel[max(0, len(rel) // 10 - 1):: max(1, len(rel) // 10)]
        print(f"| {compression} | {cap} | {rule} | {n_hills} | {ms:.3g} | {np.abs(rel).max():.1%} | {rel[-1]:+.1%} | "
              + " ".join(f"{x:+.0%}" for x in tenth) + " |", flush=True)
    print()
    for message in found:
        print(f"merge_rules.py: {message}", file=sys.stderr)
    return 1 if found else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?",
                        help="directory with exact.hills and exact.npz (benchmarks/long_run.py); "
                             "optional with --quick")
    parser.add_argument("settings", nargs="*", help="COMPRESSION:MAX_HILLS:RULE, e.g. 0.3:1000:value")
    parser.add_argument("--check-every", type=int, default=None,
                        help="depositions between energy checks (default 10; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="without a folder, a short exact run made here; without settings, the quick ones")
    args = parser.parse_args(argv)
    check_every = args.check_every or (1 if args.quick else 10)
    settings = args.settings or (QUICK_SETTINGS if args.quick else [])
    if args.folder is None and not args.quick or not settings:
        parser.error("give the folder of an exact run and at least one setting (or --quick)")
    for setting in settings:
        parts = setting.split(":")
        if len(parts) != 3 or parts[2] not in RULES:
            parser.error(f"{setting}: not COMPRESSION:MAX_HILLS:RULE with a rule of {', '.join(RULES)}")
    if args.folder is not None:
        return compare(args.folder, settings, check_every)
    with tempfile.TemporaryDirectory(prefix="merge-rules-") as folder:
        exact_run(folder)
        print()
        return compare(folder, settings, check_every)


if __name__ == "__main__":
    sys.exit(main())
