#!/usr/bin/env python
"""Benchmark of the G-metaD bias evaluation (V and dV/dG of the hills, and the full
GMetaDBias.energy_forces) on realistic hills.

Hills come from a Stillinger-Weber MD of diamond Si64 (matscipy, ASE Langevin, 1 fs):
every ``--sample-every`` steps all 64 atoms deposit a hill through
GMetaDBias.deposit (adaptive covariance, width 1.0 A, reg 1e-4: the code path of a
real run). The hills are cached in benchmarks/.cache/ so reruns are fast. The query
is a frame from later in the same trajectory (never used for hills).

For 1e2..1e5 hills it times (best of N; single thread with OMP_NUM_THREADS=1, and
2 OpenMP threads through threadpoolctl): adaptive and isotropic hills, pruned and
unpruned, and adaptive hills compressed by GMetaDBias's merging. It prints the
fraction of (atom, hill) pairs the kernel evaluated and the fraction any rigorous
pruning at the same tolerance must evaluate ("needed"). The pruning analysis adds
narrower hills and a half-crystal, half-liquid hill set, and simulates a whitened
per-block bound (a proposal). Output is Markdown.

    python benchmarks/bench_bias.py                 # full run (first run: ~15 min of MD)
    python benchmarks/bench_bias.py --quick         # up to 1e4 hills, fewer repeats
"""
from __future__ import annotations

import os

# Single-threaded unless told otherwise, set before numpy / the C kernels load:
# OpenMP (the kernels) and OpenBLAS (numpy; on a 2-CPU machine its threads make
# the 26 x 26 eigh of every adaptive deposition 3x slower, up to 70x under load).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from ase import units  # noqa: E402
from ase.build import bulk  # noqa: E402

from biasserver import kernels  # noqa: E402
from biasserver.bias import GMetaDBias  # noqa: E402
from biasserver.hills import DEFAULT_PRUNE_TOLERANCE, HillSet, kd_leaves  # noqa: E402
from biasserver.symmetry import SymmetryFunctions  # noqa: E402

ELEMENT = "Si"
HEIGHT = 1e-3        # eV, the original's example value
WIDTH = 1.0          # A, adaptive sigma (the original's example value)
REG = 1e-4
CACHE_VERSION = 1


# ---------------------------------------------------------------------------
# hills from Stillinger-Weber MD
# ---------------------------------------------------------------------------
def si64():
    return bulk("Si", "diamond", 5.431, cubic=True).repeat(2)


def sw_calculator():
    from matscipy.calculators.manybody import Manybody
    from matscipy.calculators.manybody.explicit_forms.stillinger_weber import (
        Stillinger_Weber_PRB_31_5262_Si, StillingerWeber)
    return Manybody(**StillingerWeber(Stillinger_Weber_PRB_31_5262_Si))


def cache_path(args) -> str:
    name = (f"hills_si64_sw_T{args.temperature:g}_every{args.sample_every}"
            f"_eq{args.equilibration}_gap{args.query_gap}_seed{args.seed}_v{CACHE_VERSION}.npz")
    return os.path.join(args.cache_dir, name)


def liquid_cache_path(args) -> str:
    name = (f"hills_si64_sw_liquid{args.liquid_temperature:g}_melt{args.melt_temperature:g}x{args.melt_steps}"
            f"_eq{args.equilibration}_every{args.liquid_every}_seed{args.seed}_v{CACHE_VERSION}.npz")
    return os.path.join(args.cache_dir, name)


def generate_hills(args, n_hills: int, sf: SymmetryFunctions, every: int, temperature: float,
                   melt: tuple[float, int] | None = None, query_gap: int = 0) -> dict:
    """Run the MD, depositing through GMetaDBias.deposit; returns the arrays cached.

    Langevin at ``temperature`` (K): args.equilibration steps, then a deposition for
    all atoms every ``every`` steps. melt = (T, steps): first run that long at T."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = si64()
    atoms.calc = sw_calculator()
    rng = np.random.default_rng(args.seed)
    start = temperature if melt is None else melt[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MaxwellBoltzmannDistribution(atoms, temperature_K=start, rng=rng)
        Stationary(atoms)
        dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=start,
                       friction=0.01 / units.fs, fixcm=False, rng=rng)
    bias = GMetaDBias(sf, height=HEIGHT, width=WIDTH, stride=1, species={ELEMENT: 1.0},
                      regularization=REG, prune_tolerance=0.0)
    n_frames = math.ceil(n_hills / len(atoms))
    t0 = time.perf_counter()
    what = f"at {temperature:g} K" if melt is None else \
        f"melted ({melt[1]} steps at {melt[0]:g} K), then at {temperature:g} K"
    print(f"# generating {n_frames * len(atoms)} hills: SW Si64 MD {what}, "
          f"{args.equilibration} steps of equilibration, then a deposition every "
          f"{every} steps", file=sys.stderr, flush=True)
    if melt is not None:
        dyn.run(melt[1])
        dyn.set_temperature(temperature_K=temperature)
    dyn.run(args.equilibration)
    temperatures, frames = [], []
    for f in range(n_frames):
        dyn.run(every)
        bias.deposit(atoms)                   # GMetaDBias's own deposition path
        frames.append(atoms.positions.copy())
        temperatures.append(atoms.get_temperature())
        if (f + 1) % 100 == 0:
            print(f"#   frame {f + 1}/{n_frames}, T = {np.mean(temperatures[-100:]):.0f} K, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    dyn.run(query_gap)
    hills = bias.hills[ELEMENT]
    return {"centres": hills.centres.copy(), "heights": hills.heights.copy(),
            "metrics": hills.metrics.copy(), "frames": np.array(frames),
            "query_positions": atoms.positions.copy(), "cell": atoms.cell.array.copy(),
            "temperatures": np.array(temperatures), "version": CACHE_VERSION,
            "epot_per_atom": atoms.get_potential_energy() / len(atoms),
            "generation_seconds": time.perf_counter() - t0}


def cached(path: str, n_hills: int, regenerate: bool, make) -> dict:
    """The arrays in ``path`` if it holds >= n_hills hills, else make() (then cached)."""
    if os.path.exists(path) and not regenerate:
        with np.load(path) as data:
            if len(data["heights"]) >= n_hills:
                print(f"# hills from cache {os.path.relpath(path, ROOT)}", file=sys.stderr)
                return {k: data[k] for k in data.files}
    data = make()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **data)
    os.replace(tmp, path)
    print(f"# cached {len(data['heights'])} hills in {os.path.relpath(path, ROOT)}", file=sys.stderr)
    return data


def load_hills(args, n_hills: int, sf: SymmetryFunctions) -> dict:
    return cached(cache_path(args), n_hills, args.regenerate,
                  lambda: generate_hills(args, n_hills, sf, args.sample_every, args.temperature,
                                         query_gap=args.query_gap))


def load_liquid_hills(args, n_hills: int, sf: SymmetryFunctions) -> dict:
    return cached(liquid_cache_path(args), n_hills, args.regenerate,
                  lambda: generate_hills(args, n_hills, sf, args.liquid_every, args.liquid_temperature,
                                         melt=(args.melt_temperature, args.melt_steps)))


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def build_set(centres, heights, metrics, adaptive: bool, tolerance: float) -> HillSet:
    """A HillSet filled through its public API (as GMetaDBias.load_hills does)."""
    hills = HillSet(centres.shape[1], adaptive, tolerance)
    for s in range(len(heights)):
        hills.add(centres[s], heights[s], metrics[s] if adaptive else metrics, s)
    return hills


def threads_context(n: int):
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=n, user_api="openmp")


def best_time(fn, repeats: int, budget: float, min_repeats: int = 2):
    """Best wall time (s) of fn() over up to ``repeats`` calls, fewer once ``budget``
    seconds are spent (but at least ``min_repeats``). Returns ((best wall, n, best CPU
    time of this thread), last result)."""
    walls, cpus, result = [], [], None
    while len(walls) < repeats:
        t, c = time.perf_counter(), time.thread_time()
        result = fn()
        cpus.append(time.thread_time() - c)
        walls.append(time.perf_counter() - t)
        if sum(walls) > budget and len(walls) >= min_repeats:
            break
    return (min(walls), len(walls), min(cpus)), result


def timed(hills: HillSet, queries, args, threads):
    """{threads: (best wall s, repeats, best CPU s)} and the (V, dV, n_evaluated) of the evaluation."""
    out, result = {}, None
    for n in threads:
        with threads_context(n):
            out[n], result = best_time(lambda: hills.evaluate(queries), args.repeats, args.budget)
    return out, result


def mahalanobis2(queries, centres, metrics, adaptive: bool, chunk: int = 2000) -> np.ndarray:
    """q[i, s] = (g_i - mu_s)^T A_s (g_i - mu_s), (Q, S)."""
    out = np.empty((len(queries), len(centres)))
    for a in range(0, len(centres), chunk):
        b = min(a + chunk, len(centres))
        diff = queries[None, :, :] - centres[a:b, None, :]          # (s, Q, D)
        if adaptive:
            y = np.matmul(diff, metrics[a:b])                          # A symmetric
            out[:, a:b] = np.einsum("sqd,sqd->qs", y, diff)
        else:
            out[:, a:b] = metrics * np.einsum("sqd,sqd->qs", diff, diff)
    return out


def whitened_block_bound(centres, metrics, queries, q_cut: float, leaves):
    """Fraction of (query, hill) pairs a whitened per-block bound would evaluate (a
    proposal; simulated here, not in the kernel).

    For block B (hills ``leaves[b]``), take the block's mean metric A_B = L L^T, the
    relative bound c_B = min_s lambda_min(L^-1 A_s L^-T) (so A_s >= c_B A_B), whitened
    centres z_s = L^T mu_s, their centre z_B and radius r_B. Then rigorously
        q_s(g) >= c_B |L^T g - z_s|^2 >= c_B (|L^T g - z_B| - r_B)_+^2,
    a block test (one D x D triangular mat-vec per block and query) and a per-hill
    test (D per pair instead of D^2). Returns (block test, block + per-hill tests).
    """
    n_block_pairs = n_hill_pairs = 0
    for idx in leaves:
        chol = np.linalg.cholesky(metrics[idx].mean(axis=0))
        inv = np.linalg.inv(chol)
        rel = np.einsum("ij,sjk,lk->sil", inv, metrics[idx], inv)
        c_b = max(0.0, float(np.linalg.eigvalsh(rel)[:, 0].min()) * (1 - 1e-9))
        z = centres[idx] @ chol                                  # rows: (L^T mu_s)^T
        z_b = z.mean(axis=0)
        r_b = np.sqrt(((z - z_b) ** 2).sum(axis=1).max())
        zq = queries @ chol
        gap = np.sqrt(((zq - z_b) ** 2).sum(axis=1)) - r_b
        alive = ~((gap > 0) & (c_b * gap**2 > q_cut))
        n_block_pairs += int(alive.sum()) * len(idx)
        if alive.any():
            d2 = ((zq[alive, None, :] - z[None, :, :]) ** 2).sum(axis=2)
            n_hill_pairs += int((c_b * d2 <= q_cut).sum())
    total = len(queries) * len(centres)
    return n_block_pairs / total, n_hill_pairs / total


def bound_fractions(hills: HillSet, queries, q_cut: float):
    """Whitened bounds with the kernel's blocks (32 hills) and with 8-hill blocks."""
    order, first, count, *_ = hills.blocks()
    blocks32 = [order[f:f + c] for f, c in zip(first, count)]
    return (whitened_block_bound(hills.centres, hills.metrics, queries, q_cut, blocks32)
            + whitened_block_bound(hills.centres, hills.metrics, queries, q_cut, kd_leaves(hills.centres, 8)))


def hill_bytes(hills: HillSet) -> tuple[int, int]:
    """(bytes of the n stored hills, bytes allocated incl. spare capacity and blocks)."""
    arrays = [hills._centres, hills._heights, hills._metrics, hills._min_eig, hills._steps]
    per_hill = sum(a[:1].nbytes for a in arrays)
    allocated = sum(a.nbytes for a in arrays)
    tree = hills._tree
    if tree is not None:
        allocated += sum(np.asarray(a).nbytes for a in (tree.order, tree.count, tree.centre, tree.radius,
                                                         tree.min_eig, tree.leaf_of))
    return per_hill * len(hills), allocated


def fmt_ms(entry) -> str:
    best, count = entry[:2]
    return f"{best * 1e3:.3g}" + ("" if count >= 5 else f" ({count}x)")


def fmt_cpu(entry) -> str:
    return f"{entry[2] * 1e3:.3g}"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--max-hills", type=int, default=100_000,
                        help="largest hill count (sizes 1e2, 1e3, ... up to it)")
    parser.add_argument("--quick", action="store_true",
                        help="at most 1e4 hills, fewer repeats, no pruning analysis")
    parser.add_argument("--repeats", type=int, default=20, help="best of at most this many evaluations")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="stop repeating after this many seconds (min 2 repeats)")
    parser.add_argument("--threads", default="1,2", help="comma-separated OpenMP thread counts")
    parser.add_argument("--temperature", type=float, default=1200.0, help="MD temperature (K)")
    parser.add_argument("--sample-every", type=int, default=5, help="MD steps (1 fs) between depositions")
    parser.add_argument("--equilibration", type=int, default=1000, help="MD steps before the first deposition")
    parser.add_argument("--query-gap", type=int, default=1000,
                        help="MD steps from the last deposition to the query frame")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma-g-factor", type=float, default=0.5,
                        help="isotropic sigma_G = this x the RMS over components of the std of G")
    parser.add_argument("--compression", default="0.5,0.2",
                        help="comma-separated GMetaDBias compression thresholds (Mahalanobis)")
    parser.add_argument("--tight-width", type=float, default=0.1,
                        help="pruning analysis: also adaptive hills of this width (A); 0: skip")
    parser.add_argument("--spread-hills", type=int, default=10_000,
                        help="pruning analysis: up to this many hills, half crystal and half liquid; 0: skip")
    parser.add_argument("--melt-temperature", type=float, default=4000.0, help="liquid hills: melt at this T (K)")
    parser.add_argument("--melt-steps", type=int, default=1000, help="liquid hills: MD steps of melting")
    parser.add_argument("--liquid-temperature", type=float, default=2000.0,
                        help="liquid hills: then deposit at this T (K; SW Si melts at 1691 K)")
    parser.add_argument("--liquid-every", type=int, default=20, help="liquid hills: MD steps between depositions")
    parser.add_argument("--no-analysis", action="store_true", help="skip the pruning analysis")
    parser.add_argument("--sections", default="kernel,symmetry,deposition,tables,long",
                        help="comma-separated: kernel (before/after ratios, GFLOP/s vs DGEMM), symmetry "
                             "(symmetry functions on each code path), deposition, threads (1 and 2), parts (of a capped "
                             "biased step), "
                             "tables (the timing, memory and pruning tables), long (long-run table)")
    parser.add_argument("--kernel-repeats", type=int, default=7, help="interleaved repeats of the before/after timings")
    parser.add_argument("--deposition-repeats", type=int, default=40,
                        help="consecutive depositions timed per size (median, 90th percentile, largest)")
    parser.add_argument("--long-run", default=os.path.join(ROOT, "benchmarks", ".cache", "long_run"),
                        help="folder of benchmarks/long_run.py's runs")
    parser.add_argument("--coverage-radius", type=float, default=1.0,
                        help="long-run table: covering radius (standardised G)")
    parser.add_argument("--cache-dir", default=os.path.join(ROOT, "benchmarks", ".cache"))
    parser.add_argument("--regenerate", action="store_true", help="rerun the MD even if cached")
    parser.add_argument("--before", default=None,
                        help="parts: also measure the gmetad source tree at this path (e.g. a git worktree "
                             "of an older commit, with its C kernels built), in turn with this one")
    parser.add_argument("--parts-rounds", type=int, default=2, help="parts: rounds of the interleaved measurements")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_hills = min(args.max_hills, 10_000)
        args.repeats, args.budget = min(args.repeats, 5), min(args.budget, 1.0)
        args.no_analysis = True
    return args


def size_label(n: int) -> str:
    return f"{n:.0e}".replace("e+0", "e")


def markdown_table(headers, rows):
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()


def hills_free_sections(args, sections: set, threads: list, sf) -> None:
    """The sections that make their own inputs: parts (step_parts.py in subprocesses)
    and long (the runs of long_run.py in --long-run)."""
    import bench_sections
    if "parts" in sections:
        print("## Parts of a biased step at the long-run settings, cost bounded by max_hills")
        print()
        trees = ({"before": args.before} if args.before else {}) | {"now": ROOT}
        bench_sections.step_parts(trees, threads=threads, rounds=args.parts_rounds)
    if "long" in sections and os.path.isdir(args.long_run):
        print("## Long runs: Si64 SW G-metaD, h = 1 meV, sigma = 1 A, stride 20 (benchmarks/long_run.py)")
        print()
        bench_sections.long_run_table(args.long_run, sf, args.coverage_radius)
        bench_sections.long_run_windows(args.long_run)


def main(argv=None):
    args = parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t]
    sizes = [n for n in (100, 1_000, 10_000, 100_000, 1_000_000) if n <= args.max_hills]
    thresholds = [float(c) for c in args.compression.split(",") if c]

    sf = SymmetryFunctions.default([ELEMENT])
    sections = set(args.sections.split(","))
    if not sections & {"kernel", "symmetry", "deposition", "threads", "tables"}:
        # parts and long make their own inputs: no cached MD hills needed (nor made)
        hills_free_sections(args, sections, threads, sf)
        return
    data = load_hills(args, max(sizes), sf)
    centres_all, heights_all, metrics_all = data["centres"], data["heights"], data["metrics"]
    dim = centres_all.shape[1]
    query = si64()
    query.positions = data["query_positions"]
    query.cell = data["cell"]
    queries = sf.values(query)[ELEMENT]
    n_q = len(queries)
    q_cut = -2.0 * math.log(DEFAULT_PRUNE_TOLERANCE)

    # Isotropic width: the usual metadynamics rule of thumb, a hill of about half
    # the unbiased fluctuation of the CV, with one sigma for all components: the
    # RMS over components of their standard deviations in the MD (the stds span
    # three decades, so no single sigma suits every component).
    stds = centres_all[: max(sizes)].std(axis=0)
    spread = float(np.sqrt(np.mean(stds**2)))
    sigma_g = args.sigma_g_factor * spread
    inv_var = 1.0 / sigma_g**2

    print(f"# G-metaD bias benchmark: {n_q} Si atoms, D = {dim} symmetry functions "
          f"(SymmetryFunctions.default, Rc 6 A), prune tolerance {DEFAULT_PRUNE_TOLERANCE:g} (q_cut = {q_cut:.1f})")
    print(f"# CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, load average at start "
          f"{os.getloadavg()[0]:.1f}; python {platform.python_version()}, numpy {np.__version__}")
    print(f"# hills: SW Si64 MD at {args.temperature:g} K (mean T of the deposition frames "
          f"{data['temperatures'][: math.ceil(max(sizes) / n_q)].mean():.0f} K), a hill per atom "
          f"every {args.sample_every} fs, adaptive width {WIDTH} A, reg {REG:g}, h = {HEIGHT * 1e3:g} meV; "
          f"query: a frame {args.query_gap} fs after the last deposition")
    print(f"# std of G over the hills per component: min {stds.min():.2g}, median {np.median(stds):.2g}, "
          f"max {stds.max():.2g}, RMS {spread:.3g} -> isotropic sigma_G = {args.sigma_g_factor:g} x "
          f"{spread:.3g} = {sigma_g:.3g}")
    eig = np.linalg.eigvalsh(metrics_all[:: max(1, len(metrics_all) // 2000)])
    print(f"# adaptive metrics A_s: eigenvalues {np.median(eig[:, 0]):.3g} .. {np.median(eig[:, -1]):.3g} "
          f"(medians; condition number {np.median(eig[:, -1] / eig[:, 0]):.0f})")
    print(f"# times: best of N wall-clock ms (N in parentheses when < 5), V and dV/dG of all {n_q} atoms; "
          f"CPU: best-of-N CPU time of the calling thread (robust to other load on the machine)")
    print()

    if "kernel" in sections:
        import bench_sections
        dgemm = bench_sections.dgemm_rate()
        print(f"## Hills kernel: now against before (commit fdfa6fc, benchmarks/reference/), same run")
        print()
        print(f"DGEMM (numpy, 1 thread, 1000 x 1000, best CPU time): {dgemm:.1f} GFLOP/s. Kernel flops: "
              f"2 D^2 + 4 D = {bench_sections.flops_per_pair(dim, True)} per adaptive pair, 5 D per "
              "isotropic pair, times the pairs evaluated. CPU times: best of the interleaved repeats; "
              f"ratios: median over {args.kernel_repeats} repeats of now/before. Default code path here: "
              f"{kernels.isa()}. Results of all paths checked against before to 1e-12 of the largest value.")
        print()
        sets = []
        for n in [n for n in sizes if n >= 10_000]:
            for adaptive in (True, False):
                for tol in (DEFAULT_PRUNE_TOLERANCE, 0.0):
                    hills = build_set(centres_all[:n], heights_all[:n],
                                      metrics_all[:n] if adaptive else inv_var, adaptive, tol)
                    sets.append((f"{size_label(n)} {'adaptive' if adaptive else 'isotropic'} "
                                 f"{'pruned' if tol else 'unpruned'}", hills))
        bench_sections.kernel_ratios(sets, queries, args.kernel_repeats, threads_context, dgemm)
        del sets
    if "symmetry" in sections:
        import bench_sections
        print("## Symmetry functions on each code path (run-time dispatch)")
        print()
        with threads_context(1):
            bench_sections.symmetry_paths(sf, query)
    if "deposition" in sections:
        import bench_sections
        print(f"## Cost of a deposition ({n_q} adaptive hills added, blocks ready for the next evaluation)")
        print()
        repeats = args.deposition_repeats
        bench_sections.deposition_cost(centres_all, heights_all, metrics_all,
                                       [n for n in (1_000, 10_000) if n + repeats * n_q <= len(heights_all)]
                                       + [len(heights_all) - repeats * n_q],
                                       n_q, repeats)
    hills_free_sections(args, sections & {"parts"}, threads, sf)
    if "threads" in sections:
        import bench_sections
        print("## The OpenMP parts of a biased step at 1 and 2 threads (wall time)")
        print()
        sets = [(f"{n} adaptive hills", build_set(centres_all[:n], heights_all[:n], metrics_all[:n], True,
                                                  DEFAULT_PRUNE_TOLERANCE)) for n in (300, 1000)]
        bench_sections.thread_scaling(sf, query, sets, threads_context)
    hills_free_sections(args, sections & {"long"}, threads, sf)
    if "tables" not in sections:
        return

    rows, memory, reference, timing = [], [], {}, {}
    analysis = []

    def row(n, variant, kept, times, evaluated, needed, dev):
        rows.append([size_label(n), variant, kept] + [fmt_ms(times[t]) for t in threads]
                    + [fmt_cpu(times[threads[0]]), f"{evaluated:.1%}", needed, dev])

    # -- adaptive and isotropic, pruned and unpruned --------------------------------
    for n in sizes:
        c, h, m = centres_all[:n], heights_all[:n], metrics_all[:n]
        for adaptive in (True, False):
            label = "adaptive" if adaptive else "isotropic"
            metric = m if adaptive else inv_var
            needed, median_q = None, None
            if not args.no_analysis:
                q = mahalanobis2(queries, c, metric, adaptive)
                needed, median_q = float((q <= q_cut).mean()), float(np.median(q))
                del q
            results = {}
            for tol in (DEFAULT_PRUNE_TOLERANCE, 0.0):
                pruned = tol > 0
                hills = build_set(c, h, metric, adaptive, tol)
                t = time.thread_time()
                hills.rebuilt_blocks()
                t_blocks = time.thread_time() - t
                times, (v, dv, n_eval) = timed(hills, queries, args, threads)
                timing[(n, label, pruned)] = times
                results[tol] = v
                dev = "-"
                if not pruned:
                    vp = results[DEFAULT_PRUNE_TOLERANCE]
                    worst = float(np.abs(vp - v).max())
                    dev = f"{worst:.1e} eV = {worst / h.sum():.0e} sum h"
                    # rigorous pruning: every skipped hill weighs < tolerance x its height
                    assert worst <= DEFAULT_PRUNE_TOLERANCE * h.sum() + 1e-12 * np.abs(v).max(), worst
                row(n, f"{label} {'pruned' if pruned else 'unpruned'}", n, times, n_eval / (n_q * n),
                    "-" if needed is None or not pruned else f"{needed:.1%}", dev)
                if pruned:
                    used, allocated = hill_bytes(hills)
                    memory.append((n, label, used, allocated, t_blocks))
                    if adaptive:
                        reference[n] = (v, dv)
                        if not args.no_analysis:
                            analysis.append([size_label(n), f"MD {args.temperature:g} K, adaptive {WIDTH:g} A",
                                             median_q, needed, n_eval / (n_q * n),
                                             bound_fractions(hills, queries, q_cut)])
                del hills

    # -- compressed adaptive hills, built by GMetaDBias's merging ------------------
    for threshold in thresholds:
        bias = GMetaDBias(sf, height=HEIGHT, width=WIDTH, stride=1, species={ELEMENT: 1.0},
                          regularization=REG, compression=threshold)
        merged = bias.hills[ELEMENT]
        t_build, done = 0.0, 0
        for n in sizes:
            t = time.perf_counter()
            for s in range(done, n):   # GMetaDBias._deposit's loop, replayed on the cached hills
                _, near, near_q = merged.nearest(centres_all[s:s + 1])
                index = bias._merge_target(merged, centres_all[s], int(near[0]), float(near_q[0]))
                if index is None:
                    merged.add(centres_all[s], heights_all[s], metrics_all[s], s)
                else:
                    merged.merge_into(index, centres_all[s], heights_all[s], metrics_all[s], s)
            t_build += time.perf_counter() - t
            done = n
            merged.blocks()
            times, (v, dv, n_eval) = timed(merged, queries, args, threads)
            v_ref, dv_ref = reference[n]
            err = (f"V {np.abs(v - v_ref).max() / np.abs(v_ref).max():.1e}, "
                   f"dV/dG {np.abs(dv - dv_ref).max() / np.abs(dv_ref).max():.1e} (max rel. to uncompressed)")
            row(n, f"adaptive compressed {threshold:g} (merging took {t_build:.2g} s)", len(merged),
                times, n_eval / (n_q * len(merged)), "-", err)
            used, allocated = hill_bytes(merged)
            memory.append((n, f"adaptive compressed {threshold:g}", used, allocated, float("nan")))

    print(f"## V and dV/dG of {n_q} atoms")
    print()
    markdown_table(["hills", "variant", "hills kept"] + [f"{t} thr (ms)" for t in threads]
                   + [f"{threads[0]} thr CPU (ms)", "evaluated", "needed", "pruned vs unpruned / compressed vs full"], rows)
    print("evaluated: (atom, hill) pairs whose Gaussian the kernel computed / (atoms x hills kept); "
          "needed: pairs with q <= q_cut, which any rigorous pruning at this tolerance must compute. "
          "Pruned and unpruned must agree within tolerance x sum of heights (checked).")
    print()

    # -- full energy_forces ---------------------------------------------------------
    n_full = 10_000 if 10_000 in sizes else max(sizes)
    bias = GMetaDBias(sf, height=HEIGHT, width=WIDTH, stride=1, species={ELEMENT: 1.0}, regularization=REG)
    bias.hills[ELEMENT] = build_set(centres_all[:n_full], heights_all[:n_full], metrics_all[:n_full],
                                    True, DEFAULT_PRUNE_TOLERANCE)
    bias.hills[ELEMENT].blocks()
    desc = sf.compute(query)
    gradients = {ELEMENT: bias.hills[ELEMENT].evaluate(desc.values[ELEMENT])[1]}
    parts = [("symmetry functions + derivatives (sf.compute)", lambda: sf.compute(query)),
             ("hills: V, dV/dG (HillSet.evaluate)", lambda: bias.hills[ELEMENT].evaluate(desc.values[ELEMENT])),
             ("forces + virial (Descriptors.forces_virial)", lambda: desc.forces_virial(gradients)),
             ("total: GMetaDBias.energy_forces", lambda: bias.energy_forces(query))]
    full_rows = []
    for name, fn in parts:
        cells = []
        for t in threads:
            with threads_context(t):
                entry, _ = best_time(fn, args.repeats, args.budget)
            cells.append(fmt_ms(entry))
            if t == threads[0]:
                cpu = fmt_cpu(entry)
        full_rows.append([name] + cells + [cpu])
    del bias
    print(f"## GMetaDBias.energy_forces, {n_q} atoms, {size_label(n_full)} adaptive hills (pruned)")
    print()
    markdown_table(["part"] + [f"{t} thr (ms)" for t in threads] + [f"{threads[0]} thr CPU (ms)"], full_rows)

    # -- memory ----------------------------------------------------------------------
    print("## Memory of the hills (one HillSet)")
    print()
    markdown_table(["hills", "variant", "stored hills (MB)", "allocated, with spare capacity and blocks (MB)",
                    "block build from scratch, CPU (ms)"],
                   [[size_label(n), label, f"{used / 1e6:.3g}", f"{allocated / 1e6:.3g}",
                     "-" if math.isnan(tb) else f"{tb * 1e3:.3g}"] for n, label, used, allocated, tb in memory])
    print("The blocks are updated incrementally by add() and merges (see the deposition table); "
          "the last column is what a rebuild from scratch would cost.")
    print()

    # -- pruning analysis -------------------------------------------------------------
    if not args.no_analysis:
        def analyse(label, c, h, m, n):
            q = mahalanobis2(queries, c, m, True)
            needed, median_q = float((q <= q_cut).mean()), float(np.median(q))
            del q
            out = []
            for tol in (DEFAULT_PRUNE_TOLERANCE, 0.0):
                hills = build_set(c, h, m, True, tol)
                hills.blocks()
                with threads_context(threads[0]):
                    entry, (_, _, n_eval) = best_time(lambda: hills.evaluate(queries),
                                                      args.repeats, args.budget)
                out.append((entry, n_eval, hills))
            wb = bound_fractions(out[0][2], queries, q_cut)
            analysis.append([size_label(n), label, median_q, needed, out[0][1] / (n_q * n), wb,
                             out[0][0], out[1][0]])

        if args.tight_width > 0:
            scale = (WIDTH / args.tight_width) ** 2        # A_s scales as 1 / width^2
            for n in sizes:
                analyse(f"MD {args.temperature:g} K, adaptive {args.tight_width:g} A",
                        centres_all[:n], heights_all[:n], metrics_all[:n] * scale, n)
        if args.spread_hills > 0:
            liquid = load_liquid_hills(args, args.spread_hills // 2, sf)
            for n in [n for n in (1_000, 10_000, 100_000) if n <= args.spread_hills]:
                half = n // 2
                mix = [np.concatenate([centres_all[:half], liquid["centres"][:n - half]]),
                       np.concatenate([heights_all[:half], liquid["heights"][:n - half]]),
                       np.concatenate([metrics_all[:half], liquid["metrics"][:n - half]])]
                for width in (WIDTH, args.tight_width):
                    if width > 0:
                        analyse(f"half MD {args.temperature:g} K, half liquid {args.liquid_temperature:g} K, "
                                f"adaptive {width:g} A", mix[0], mix[1], mix[2] * (WIDTH / width) ** 2, n)
        print("## Pruning: fraction of (atom, hill) pairs computed")
        print()
        arows = []
        for n, label, median_q, needed, current, wb, *t in analysis:
            if not t:
                t = [timing[(int(float(n)), "adaptive", True)][threads[0]],
                     timing[(int(float(n)), "adaptive", False)][threads[0]]]
            arows.append([n, label, f"{median_q:.3g}", f"{needed:.1%}", f"{current:.1%}",
                          f"{wb[0]:.1%} / {wb[1]:.1%}", f"{wb[2]:.1%} / {wb[3]:.1%}",
                          f"{fmt_ms(t[0])} / {fmt_cpu(t[0])}", f"{fmt_ms(t[1])} / {fmt_cpu(t[1])}"])
        markdown_table(["hills", "hill set", "median q", "needed (q <= q_cut)", "current bound (kernel)",
                        "whitened, kernel's 32-hill blocks: block / + per-hill test",
                        "whitened, 8-hill blocks: block / + per-hill test",
                        f"pruned, {threads[0]} thr: wall / CPU (ms)",
                        f"unpruned, {threads[0]} thr: wall / CPU (ms)"], arows)
        print("Query: the same crystal frame. Whitened bounds: simulated in numpy, not in the kernel "
              "(see whitened_block_bound).")
        print()

    # -- targets ----------------------------------------------------------------------
    print("## Targets")
    print()
    if 10_000 in sizes:
        entry = timing[(10_000, "adaptive", True)][threads[0]]
        wall, cpu = entry[0] * 1e3, entry[2] * 1e3
        print(f"- V and dV/dG for 64 atoms at 1e4 adaptive hills <= 5 ms ({threads[0]} thread): "
              f"{wall:.3g} ms wall, {cpu:.3g} ms CPU -> {'MET' if max(wall, cpu) <= 5 else 'NOT MET'}")
        for r in rows:
            if r[0] == "1e4" and r[1].startswith("adaptive compressed"):
                tc = float(r[3].split()[0])
                print(f"  - {r[1]}: {r[2]} hills, {tc:.3g} ms -> {'MET' if tc <= 5 else 'NOT MET'} "
                      f"(error: {r[-1]})")
    pruned = [(n, timing[(n, "adaptive", True)][threads[0]][2]) for n in sizes]
    if len(pruned) >= 2:
        steps = ", ".join(f"{size_label(a[0])} -> {size_label(b[0])}: x{b[1] / a[1]:.2g}"
                          for a, b in zip(pruned, pruned[1:]))
        later = [b[1] / a[1] for a, b in zip(pruned, pruned[1:]) if a[0] >= 1_000]
        verdict = "sub-linear" if later and all(x < 9 for x in later) else "NOT sub-linear"
        print(f"- growth of the adaptive pruned CPU time per 10x hills: {steps} -> {verdict} (from 1e3 hills)")
    print(f"# load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
