"""Sections of bench_bias.py on the cost of the bias: the hills kernel against the
previous one and against this core's DGEMM rate, the cost of a deposition, and the
long-run table (benchmarks/long_run.py). Each function prints Markdown."""
from __future__ import annotations

import glob
import os
import statistics
import time

import numpy as np

import reference_kernel
from biasserver import kernels
from biasserver.hills import HillSet


def cpu_time(fn, repeats: int = 1):
    """Best CPU time (s) of this thread over ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        c = time.thread_time()
        result = fn()
        best = min(best, time.thread_time() - c)
    return best, result


def dgemm_rate(n: int = 1000, repeats: int = 5) -> float:
    """GFLOP/s of a square float64 matrix product (numpy's BLAS, its thread limit as set)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    best, _ = cpu_time(lambda: a @ b, repeats)
    return 2.0 * n**3 / best / 1e9


def flops_per_pair(dim: int, adaptive: bool) -> int:
    """Floating-point operations of one (atom, hill) pair of V and dV/dG: the issue's
    count, 2 D^2 (y = A d) + 2 D (q) + 2 D (gradient) + 0 for d, 1456 at D = 26;
    isotropic: d, |d|^2 and the gradient, 5 D."""
    return 2 * dim * dim + 4 * dim if adaptive else 5 * dim


def kernel_ratios(sets, queries, repeats: int, threads_context, dgemm: float) -> None:
    """The current kernel (both code paths) against the previous one on the same
    hills, interleaved so that load on the machine hits all alike. sets: list of
    (label, HillSet). Ratios are medians over the repeats of new/old CPU time. The
    previous kernel runs as a CPU with AVX2 ran it (its AVX2 clone) and as one
    without AVX2 did (built without the clone), the fair reference of the SSE2 path."""
    paths = [p for p in ("avx2", "sse2") if kernels.isa_available(p)]
    rows = []
    for label, hills in sets:
        args = hills._kernel_arguments()
        # the old kernel's block layout, converted once (not part of its time)
        old_blocks = None if args["blocks"] is None else reference_kernel.contiguous_blocks(args["blocks"])
        old = lambda: reference_kernel.gaussian_sum(queries, **args, old_blocks=old_blocks)  # noqa: E731
        old_base = lambda: reference_kernel.gaussian_sum(queries, **args, old_blocks=old_blocks,  # noqa: E731
                                                         baseline=True)
        new = lambda: kernels.gaussian_sum(queries, **args)                   # noqa: E731
        times = {"old": [], "old_base": []} | {p: [] for p in paths}
        results = {}
        with threads_context(1):
            for _ in range(repeats):
                t, results["old"] = cpu_time(old)
                times["old"].append(t)
                t, results["old_base"] = cpu_time(old_base)
                times["old_base"].append(t)
                for p in paths:
                    kernels.set_isa(p)
                    t, results[p] = cpu_time(new)
                    times[p].append(t)
            kernels.set_isa("auto")
        v0, g0, n0 = results["old"]
        for p in paths:
            v, g, n = results[p]
            assert n == n0, (label, p, n, n0)
            assert np.abs(v - v0).max() <= 1e-12 * np.abs(v0).max(), label
            assert np.abs(g - g0).max() <= 1e-12 * np.abs(g0).max(), label
        # two threads, wall time
        walls = {}
        with threads_context(2):
            for name, fn in (("old", old), ("new", new)):
                best = float("inf")
                for _ in range(max(2, repeats // 2)):
                    t = time.perf_counter()
                    fn()
                    best = min(best, time.perf_counter() - t)
                walls[name] = best
        flops = flops_per_pair(hills.dimension, hills.adaptive) * n0
        row = [label, f"{n0 / (len(queries) * len(hills)):.0%}", f"{min(times['old']) * 1e3:.3g}"]
        for p in paths:
            ratio = statistics.median(a / b for a, b in zip(times[p], times["old"]))
            row += [f"{min(times[p]) * 1e3:.3g}", f"{ratio:.2f}"]
        if "sse2" in paths:
            ratio = statistics.median(a / b for a, b in zip(times["sse2"], times["old_base"]))
            row += [f"{min(times['old_base']) * 1e3:.3g}", f"{ratio:.2f}"]
        best_new = min(times[paths[0]])
        row += [f"{flops / min(times['old']) / 1e9:.1f} → {flops / best_new / 1e9:.1f}",
                f"{flops / best_new / 1e9 / dgemm:.0%}",
                f"{walls['old'] * 1e3:.3g} → {walls['new'] * 1e3:.3g}"]
        rows.append(row)
    headers = ["hills", "evaluated", "before, 1 thr CPU (ms)"]
    for p in paths:
        headers += [f"now {p}, 1 thr CPU (ms)", f"now {p} / before (median)"]
    if "sse2" in paths:
        headers += ["before, built without AVX2 clone (ms)", "now sse2 / that (median)"]
    headers += ["GFLOP/s before → now", "now / DGEMM", "2 thr wall (ms) before → now"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def deposition_cost(centres, heights, metrics, sizes, per_deposition: int, repeats: int = 40) -> None:
    """CPU time of adding one deposition's hills (incremental blocks) to a set of n
    hills, over ``repeats`` consecutive depositions (median, 90th percentile, largest),
    against rebuilding the blocks from scratch (what was done before); and the one-off
    cost of the storage doubling that a set pays when it outgrows its capacity."""
    rows = []
    for n in sizes:
        hills = HillSet(centres.shape[1], adaptive=True)
        for s in range(n):
            hills.add(centres[s], heights[s], metrics[s], s)
        # capacity for every repeat, so that no doubling falls inside the timed adds
        while len(hills._heights) < n + repeats * per_deposition:
            hills._grow()
        adds = []
        for r in range(repeats):
            lo = n + r * per_deposition
            c = time.thread_time()
            for s in range(lo, lo + per_deposition):
                hills.add(centres[s], heights[s], metrics[s], s)
            hills.blocks()
            adds.append(time.thread_time() - c)
        grow, _ = cpu_time(hills._grow, 1)
        rebuild, _ = cpu_time(hills.rebuilt_blocks, 2)
        rows.append([str(n), f"{statistics.median(adds) * 1e3:.3g}",
                     f"{np.percentile(adds, 90) * 1e3:.3g}", f"{max(adds) * 1e3:.3g}",
                     f"{grow * 1e3:.3g}", f"{rebuild * 1e3:.3g}"])
    print(f"| hills | deposition of {per_deposition} hills, median CPU (ms) | 90th percentile (ms) | largest (ms) | "
          "storage doubling at this size, once (ms) | blocks rebuilt from scratch (before), CPU (ms) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def _first_median_max_last(ms: np.ndarray) -> str:
    """'first / median / largest / last' of per-window ms per step."""
    return f"{ms[0]:.3g} / {np.median(ms):.3g} / {ms.max():.3g} / {ms[-1]:.3g}"


def long_run_table(folder: str, sf, radius: float) -> None:
    """The table of benchmarks/long_run.py's runs in ``folder``: time per step,
    coverage (biasserver.coverage, reference: the 'reference' run) and the largest
    error of the approximate bias energy against the exact sum of all its hills."""
    from ase import Atoms

    from biasserver.coverage import Coverage, coverage_curve, environments

    def frames_of(data):
        cell = data["cell"]
        return [Atoms("Si64", positions=p, cell=cell, pbc=True) for p in data["frames"]]

    ref_path = os.path.join(folder, "reference.npz")
    reference = None
    if os.path.exists(ref_path):     # without it: no coverage columns
        with np.load(ref_path) as ref:
            reference = Coverage.from_reference(environments(frames_of(ref), sf), radius)
            ref_steps = int(ref["steps_done"])
            ref_t = float(ref["temperature_K"])
    runs = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.npz"))):
        name = os.path.basename(path)[:-4]
        if name != "reference":
            with np.load(path) as data:
                runs[name] = {k: data[k] for k in data.files}
    curves = {name: coverage_curve(frames_of(d), sf, reference) if reference is not None else None
              for name, d in runs.items()}
    exact = curves.get("exact")
    rows = []
    for name, d in runs.items():
        steps = int(d["steps_done"])
        cover = curves[name]
        vs_exact = "-"
        if cover is not None and exact is not None:
            n_common = min(len(cover), len(exact))
            vs_exact = (f"{cover[n_common - 1] / exact[n_common - 1]:.3f} "
                        f"(first {n_common * int(d['frame_every'])} steps)")
        err = np.abs(d["energy"] - d["exact_energy"])
        rel = err / np.maximum(np.abs(d["exact_energy"]), 1e-300)
        parts = ([f"compression {float(d['compression']):g}"] if np.isfinite(float(d["compression"])) else []) \
            + ([f"max_hills {int(d['max_hills'])}"] if int(d["max_hills"]) > 0 else [])
        setting = " + ".join(parts) or "none"
        engine = f"{np.median(d['engine_cpu_ms']):.3g}" if "engine_cpu_ms" in d else "-"
        rows.append([name, setting, int(d["threads"]) if "threads" in d else 1, steps, int(d["n_hills"][-1]),
                     _first_median_max_last(d["bias_ms"]), _first_median_max_last(d["bias_cpu_ms"]),
                     engine, f"{np.median(d['step_ms']):.3g}",
                     "-" if cover is None else int(cover[-1]), vs_exact,
                     f"{err.max():.2g} eV ({rel.max():.1%})", f"{float(d['load_average']):.1f}"])
    print((f"Reference for the coverage: plain MD, {ref_steps} steps at {ref_t:g} K, radius {radius:g} "
           "(standardised G). " if reference is not None else "No reference run: no coverage. ")
          + "Bias time: wall and CPU time (of the thread that calls it; with 2 threads the kernels' "
          "second thread is not in it) of GMetaDBias.step per MD step, averaged over windows of "
          "500 steps: first / median / largest / last window; threads: the kernels' OpenMP "
          "threads; engine: the Stillinger-Weber calculator's CPU time per step (median window), "
          "which grows with the load and with the structure's coordination (its three-body sum; "
          "see the per-window SW neighbours).")
    print()
    headers = ["run", "approximation", "threads", "steps", "hills at end",
               "bias wall ms/step (first/median/max/last)", "bias CPU ms/step (first/median/max/last)",
               "engine CPU ms/step", "whole step, median wall ms", "coverage (centres)",
               "coverage / exact", "largest bias-energy error", "load average at end"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()


def symmetry_paths(sf, atoms, repeats: int = 20) -> None:
    """Symmetry functions of ``atoms`` (values, and values + derivatives) on each code
    path: best CPU time over interleaved repeats, and the median ratio AVX2 / SSE2."""
    paths = [p for p in ("sse2", "avx2") if kernels.isa_available(p)]
    rows = []
    for label, fn in (("values (sf.values)", lambda: sf.values(atoms)),
                      ("values + derivatives (sf.compute)", lambda: sf.compute(atoms))):
        times = {p: [] for p in paths}
        for _ in range(repeats):
            for p in paths:
                kernels.set_isa(p)
                times[p].append(cpu_time(fn)[0])
        kernels.set_isa("auto")
        row = [label] + [f"{min(times[p]) * 1e3:.3g}" for p in paths]
        if len(paths) == 2:
            row.append(f"{statistics.median(a / b for a, b in zip(times['avx2'], times['sse2'])):.2f}")
        rows.append(row)
    headers = ["Si64, 1 thread"] + [f"{p} CPU (ms)" for p in paths] + (["avx2 / sse2 (median)"] if len(paths) == 2 else [])
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def step_parts(trees: dict, caps=(300, 1000), threads=(1, 2), rounds: int = 2, repeats: int = 10) -> None:
    """The parts of a biased Si64 step at the long-run settings with max_hills reached
    (benchmarks/step_parts.py, one process per measurement), for every source tree
    of ``trees`` (label -> path: e.g. this checkout and a worktree of an older
    commit) and OpenMP thread count, called in turn ``rounds`` times so that the
    machine's load hits all alike; best CPU and wall time over the rounds."""
    import json
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_parts.py")
    results: dict = {}
    for _ in range(rounds):
        for n in threads:
            for label, tree in trees.items():
                env = dict(os.environ, OMP_NUM_THREADS=str(n))
                out = subprocess.run([sys.executable, script, "--tree", tree, "--repeats", str(repeats),
                                      "--caps", ",".join(str(c) for c in caps)],
                                     env=env, check=True, capture_output=True, text=True).stdout
                print(f"<!-- {label}, {n} thread(s): {out.splitlines()[-1]} -->", flush=True)
                for cap, parts in json.loads(out.splitlines()[-1])["caps"].items():
                    key = (label, n, int(cap))
                    if key not in results:
                        results[key] = parts
                        continue
                    for name, value in parts.items():
                        if name == "profile":
                            results[key][name] = {k: min(v, value[k]) for k, v in results[key][name].items()}
                        elif isinstance(value, list):
                            results[key][name] = [min(a, b) for a, b in zip(results[key][name], value)]
    headers = ["code", "threads", "max_hills", "symmetry functions + derivatives", "hills V, dV/dG",
               "forces, virial", "step without deposition", "deposition (step with - without)",
               "of which metrics", "merges", "hills file", "separate nearest-hill pass",
               "per MD step (step + deposition / 20)"]
    print("CPU ms of the calling thread / wall ms, best over the rounds; the deposition's parts: "
          "cProfile's cumulative wall ms per deposition (its default timer: waits and profiling overhead "
          "included, so they can add up to more than the deposition's CPU time).")
    print()
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for (label, n, cap), p in sorted(results.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0] != "before")):
        dep = [p["deposit_step"][k] - p["step"][k] for k in (0, 1)]
        per_step = [p["step"][k] + dep[k] / 20 for k in (0, 1)]
        prof = p["profile"]
        row = [label, str(n), str(cap)] + [f"{p[k][0]:.3g} / {p[k][1]:.3g}" for k in ("sf", "hills", "forces", "step")]
        row += [f"{dep[0]:.3g} / {dep[1]:.3g}"] + [f"{prof[k]:.3g}" for k in ("metrics", "merges", "file", "nearest")]
        row += [f"{per_step[0]:.3g} / {per_step[1]:.3g}"]
        print("| " + " | ".join(row) + " |")
    print()


def thread_scaling(sf, atoms, sets, threads_context, repeats: int = 30) -> None:
    """Wall time of the OpenMP parts of a biased step (symmetry functions with
    derivatives; V and dV/dG of every atom for each hill set of ``sets``, label ->
    HillSet) at 1 and 2 threads, called in turn ``repeats`` times: best and median
    wall time, and the median of the per-repeat ratios 2 threads / 1 thread."""
    values = sf.values(atoms)["Si"]
    parts = [("symmetry functions + derivatives (sf.compute)", lambda: sf.compute(atoms))]
    parts += [(f"hills V, dV/dG, {label}", lambda h=h: h.evaluate(values)) for label, h in sets]
    rows = []
    for name, fn in parts:
        walls = {1: [], 2: []}
        for _ in range(repeats):
            for n in (1, 2):
                with threads_context(n):
                    t = time.perf_counter()
                    fn()
                    walls[n].append(time.perf_counter() - t)
        ratio = statistics.median(b / a for a, b in zip(walls[1], walls[2]))
        rows.append([name] + [f"{min(walls[n]) * 1e3:.3g} / {statistics.median(walls[n]) * 1e3:.3g}" for n in (1, 2)]
                    + [f"{ratio:.2f}"])
    headers = ["Si64", "1 thread wall ms (best / median)", "2 threads wall ms (best / median)",
               "2 / 1 threads (median of the per-repeat ratios)"]
    print(f"Load average {os.getloadavg()[0]:.1f} at the end of these measurements.")
    print()
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


#: Stillinger-Weber's cutoff for Si (a sigma = 1.8 x 2.0951 A), angstrom: its
#: neighbours set the engine's cost (the three-body sum is over pairs of them).
SW_CUTOFF = 3.77118


def sw_neighbours(positions: np.ndarray, cell: np.ndarray) -> float:
    """Mean number of neighbours per atom within Stillinger-Weber's cutoff (periodic)."""
    from biasserver.kernels import neighbour_list
    return len(neighbour_list(positions, cell, (True, True, True), SW_CUTOFF).first) / len(positions)


def long_run_windows(folder: str, columns: int = 12) -> None:
    """Per-window figures of each run in ``folder`` (at most ``columns`` evenly spaced
    windows of benchmarks/long_run.py's records, the last included): bias wall and CPU
    ms per step, engine CPU ms per step, the bias's CPU over the engine's, the mean Stillinger-Weber neighbours per atom of the
    window's last kept frame, hills, and, for approximate runs, the bias energy of the
    hills against the exact sum of every hill deposited."""
    for path in sorted(glob.glob(os.path.join(folder, "*.npz"))):
        name = os.path.basename(path)[:-4]
        with np.load(path) as d:
            if name == "reference" or "exact_energy" not in d.files:
                continue
            every = max(1, -(-len(d["step"]) // columns))
            idx = list(range(every - 1, len(d["step"]), every))
            if idx and idx[-1] != len(d["step"]) - 1:
                idx.append(len(d["step"]) - 1)
            rows = {"steps": [str(int(d["step"][k])) for k in idx],
                    "bias wall (ms/step)": [f"{d['bias_ms'][k]:.3g}" for k in idx],
                    "bias CPU (ms/step)": [f"{d['bias_cpu_ms'][k]:.3g}" for k in idx],
                    "engine CPU (ms/step)": [f"{d['engine_cpu_ms'][k]:.3g}" for k in idx],
                    "bias / engine": [f"{d['bias_cpu_ms'][k] / d['engine_cpu_ms'][k]:.2f}" for k in idx],
                    "SW neighbours per atom": [
                        f"{sw_neighbours(d['frames'][int(d['step'][k]) // int(d['frame_every']) - 1], d['cell']):.1f}"
                        for k in idx],
                    "hills": [str(int(d["n_hills"][k])) for k in idx]}
            if name != "exact":
                rows["bias energy - exact sum"] = [f"{d['energy'][k] / d['exact_energy'][k] - 1:+.0%}"
                                                   for k in idx]
            window = int(d["step"][0])
        print(f"Run {name}, every {every} windows of {window} steps:")
        print()
        for label, values in rows.items():
            print(f"| {label} | " + " | ".join(values) + " |")
            if label == "steps":
                print("|" + "---|" * (len(values) + 1))
        print()
