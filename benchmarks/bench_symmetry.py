#!/usr/bin/env python
"""Benchmark of the symmetry-function kernels (not a test).

For diamond Si supercells (64, 512 and 4096 atoms, rattled by 0.02 A) and the
default 26-function set (8 G2 + 18 G4, Rc = 6 A) it times

- the C cell-list neighbour list,
- the C kernel: values only, and values + analytic derivatives (dG/dR for every
  pair and function), with OMP_NUM_THREADS=1 and 2 (each in a child process of
  this script, since OpenMP reads the variable once at start-up),
- the whole ``SymmetryFunctions.compute(atoms)`` call (neighbour list + kernel +
  Python bookkeeping),
- DScribe's ACSF (n_jobs=1): values, and its derivatives (numerical, the only
  kind DScribe has for ACSF; Si64 only, it takes seconds),
- if torch is importable, a compact torch implementation of the same 26 functions
  (values from the neighbour list and a triplet list; derivatives by autograd:
  one backward pass of sum(G * W), which is what forces need, and the full
  Jacobian with one backward pass per function), checked against the C kernel on
  Si64 before anything is timed.

Every time is the best of --repeat runs (fewer for runs over --budget seconds),
in milliseconds. Usage:

    python benchmarks/bench_symmetry.py [--repeat 20] [--sizes 64,512,4096]
                                         [--no-dscribe] [--no-torch]

With --neighbours it times only the neighbour list (CPU time of this thread, best
and median of --repeat batches) on Si64, Si216, Si512 (diamond a = 5.431 A,
rattled by 0.05 A) and a Pt(111) 4x4x4 slab with 8 A of vacuum (periodic in x, y),
cutoff 6 A, and the whole ``SymmetryFunctions.compute`` of Si64. --before PATH
times a second checkout (e.g. ``git worktree add /tmp/nl-before <commit>`` built
with its own ``python ckernels/build.py``) in the same run: one worker process
per checkout, batches interleaved, and the ratio of the medians is printed.

    python benchmarks/bench_symmetry.py --neighbours [--before PATH] [--repeat 15]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the checkout whose biasserver is timed: this one, or --before's in a worker
sys.path.insert(0, os.environ.get("GMETAD_BENCH_TREE", ROOT))

from ase.build import bulk, fcc111  # noqa: E402

from biasserver import kernels  # noqa: E402
from biasserver.symmetry import (DEFAULT_G2_ETAS, DEFAULT_G4_ETAS, DEFAULT_G4_LAMBDAS,  # noqa: E402
                                 DEFAULT_G4_ZETAS, SymmetryFunctions)

CUTOFF = 6.0
REPEATS = {64: 2, 512: 4, 4096: 8}  # diamond cubic cell repeated n x n x n


def structure(n_atoms: int):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(REPEATS[n_atoms])
    atoms.rattle(0.02, seed=1)
    return atoms


def best_of(fn, repeat: int, budget: float) -> float:
    """Best wall time of fn() in ms, after one warm-up run; fewer runs when slow."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    runs = max(1, min(repeat, int(budget / max(first, 1e-9))))
    best = first
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


# ---- torch: the same 26 functions, derivatives by autograd ---------------------

def triplet_list(nl, vectors: np.ndarray, cutoff: float):
    """(centre, pair a, pair b) for every j < k of each centre's neighbour entries
    with R_jk < cutoff (the others contribute exactly zero, value and gradient)."""
    counts = np.diff(nl.offset)
    centre, pa, pb = [], [], []
    for m in np.unique(counts):
        if m < 2:
            continue
        rows = np.flatnonzero(counts == m)
        a, b = np.triu_indices(m, 1)
        start = nl.offset[rows][:, None]
        centre.append(np.repeat(rows, len(a)))
        pa.append((start + a).ravel())
        pb.append((start + b).ravel())
    centre, pa, pb = (np.concatenate(x) for x in (centre, pa, pb))
    keep = np.einsum("tk,tk->t", vectors[pb] - vectors[pa], vectors[pb] - vectors[pa]) < cutoff**2
    return centre[keep], pa[keep], pb[keep]


def torch_acsf(torch, vectors, first, centre, pa, pb, n_atoms: int, cutoff: float = CUTOFF):
    """(n_atoms, 26) values in the order of SymmetryFunctions.default, from the pair
    vectors (all shorter than the cutoff) and the triplet list."""
    r2 = (vectors * vectors).sum(1)
    r = r2.sqrt()
    fc = 0.5 * (torch.cos(np.pi * r / cutoff) + 1.0)
    cols = [torch.zeros(n_atoms, dtype=vectors.dtype).index_add(0, first, torch.exp(-eta * r2) * fc)
            for eta in DEFAULT_G2_ETAS]
    a, b = vectors[pa], vectors[pb]
    c2 = ((b - a) ** 2).sum(1)
    fjk = 0.5 * (torch.cos(np.pi * c2.sqrt() / cutoff) + 1.0)
    cos = (a * b).sum(1) / (r[pa] * r[pb])
    f3 = fc[pa] * fc[pb] * fjk
    s2 = r2[pa] + r2[pb] + c2
    for eta in DEFAULT_G4_ETAS:
        ef = torch.exp(-eta * s2) * f3
        for zeta, lam in itertools.product(DEFAULT_G4_ZETAS, DEFAULT_G4_LAMBDAS):
            term = 2.0 ** (1.0 - zeta) * (1.0 + lam * cos) ** zeta * ef
            cols.append(torch.zeros(n_atoms, dtype=vectors.dtype).index_add(0, centre, term))
    return torch.stack(cols, 1)


def torch_rows(n_atoms: int, threads: int, repeat: int, budget: float, check: bool = False) -> dict:
    """Timings of the torch implementation; with check, compare it with the C kernel
    instead (and return nothing)."""
    import torch

    torch.set_num_threads(threads)
    atoms = structure(n_atoms)
    sf = SymmetryFunctions.default(["Si"])
    nl = sf.neighbour_list(atoms)
    out = {"torch: triplet list (numpy)": best_of(lambda: triplet_list(nl, nl.vectors, CUTOFF), repeat, budget)}
    centre, pa, pb = (torch.from_numpy(x) for x in triplet_list(nl, nl.vectors, CUTOFF))
    first = torch.from_numpy(nl.first.astype(np.int64))
    vec0 = torch.from_numpy(nl.vectors)
    weights = torch.from_numpy(np.random.default_rng(0).normal(size=(n_atoms, 26)))

    def values():
        with torch.no_grad():
            return torch_acsf(torch, vec0, first, centre, pa, pb, n_atoms)

    def vjp():
        v = vec0.clone().requires_grad_(True)
        g = torch_acsf(torch, v, first, centre, pa, pb, n_atoms)
        (grad,) = torch.autograd.grad((g * weights).sum(), v)
        return g, grad

    def jacobian():
        v = vec0.clone().requires_grad_(True)
        g = torch_acsf(torch, v, first, centre, pa, pb, n_atoms)
        jac = []
        for f in range(g.shape[1]):  # one backward pass per function
            (grad,) = torch.autograd.grad(g[:, f].sum(), v, retain_graph=f < g.shape[1] - 1)
            jac.append(grad)
        return g, torch.stack(jac, 1)  # (pairs, 26, 3) like the C layout

    if check:
        d = sf.compute(atoms)
        g, jac = jacobian()
        ref_v, ref_d = d.values["Si"], d.derivatives["Si"]
        assert np.array_equal(d.pair_index["Si"], np.arange(len(nl.first)))
        err_v = np.abs(g.detach().numpy() - ref_v).max() / np.abs(ref_v).max()
        err_d = np.abs(jac.numpy() - ref_d).max() / np.abs(ref_d).max()
        g2, grad = vjp()
        err_w = np.abs(grad.numpy() - np.einsum("pf,pfk->pk", weights.numpy()[nl.first], ref_d)).max()
        err_w /= np.abs(grad.numpy()).max()
        print(f"# torch vs C on Si{n_atoms}: values {err_v:.1e}, Jacobian {err_d:.1e}, "
              f"sum(G W) gradient {err_w:.1e} (relative to the largest entry)", file=sys.stderr)
        if max(err_v, err_d, err_w) > 1e-8:
            raise SystemExit("torch and C disagree beyond 1e-8: not timing")
        return {}
    out["torch: values"] = best_of(values, repeat, budget)
    out["torch: values + grad of sum(G W) (autograd)"] = best_of(vjp, repeat, budget)
    if n_atoms <= 512:
        out["torch: values + full Jacobian (26 backward passes)"] = best_of(jacobian, repeat, budget)
    return out


# ---- one child process: everything at one OMP_NUM_THREADS ------------------------

def child(threads: int, sizes: list[int], repeat: int, budget: float, dscribe: bool, torch_ok: bool) -> dict:
    assert kernels.lib.gm_max_threads() == threads, "OMP_NUM_THREADS was not applied"
    sf = SymmetryFunctions.default(["Si"])
    table = sf.tables["Si"]
    results: dict[str, dict[int, float]] = {}
    if torch_ok:  # torch must agree with the C kernel on Si64 before it is timed
        torch_rows(64, threads, repeat, budget, check=True)

    def put(row, n, ms):
        results.setdefault(row, {})[n] = ms

    for n in sizes:
        atoms = structure(n)
        species = sf.species(atoms)
        centres = np.arange(n, dtype=np.int32)
        nl = sf.neighbour_list(atoms)
        if threads == 1:
            put("C: neighbour list (cell list, serial)", n, best_of(lambda: sf.neighbour_list(atoms), repeat, budget))
        put(f"C: values ({threads} thread{'s' * (threads > 1)})", n,
            best_of(lambda: kernels.symmetry_functions(centres, species, nl, table, False), repeat, budget))
        put(f"C: values + derivatives ({threads} thread{'s' * (threads > 1)})", n,
            best_of(lambda: kernels.symmetry_functions(centres, species, nl, table, True), repeat, budget))
        put(f"C: SymmetryFunctions.compute(atoms), end to end ({threads} thread{'s' * (threads > 1)})", n,
            best_of(lambda: sf.compute(atoms), repeat, budget))
        if dscribe and threads == 1:
            from dscribe.descriptors import ACSF

            acsf = ACSF(r_cut=CUTOFF, g2_params=[[eta, 0.0] for eta in DEFAULT_G2_ETAS],
                        g4_params=[list(p) for p in itertools.product(DEFAULT_G4_ETAS, DEFAULT_G4_ZETAS,
                                                                      DEFAULT_G4_LAMBDAS)],
                        species=["Si"], periodic=True)
            if n == sizes[0]:  # same definitions? (DScribe adds a G1 column first)
                ours = sf.values(atoms)["Si"]
                err = np.abs(acsf.create(atoms)[:, 1:] - ours).max() / np.abs(ours).max()
                print(f"# DScribe vs C values on Si{n}: {err:.1e}", file=sys.stderr)
            put("DScribe ACSF: values (n_jobs=1)", n, best_of(lambda: acsf.create(atoms, n_jobs=1), repeat, budget))
            if n == 64:
                put("DScribe ACSF: derivatives (numerical, n_jobs=1)", n,
                    best_of(lambda: acsf.derivatives(atoms, method="numerical", attach=True, n_jobs=1), 1, budget))
        if torch_ok:
            for row, ms in torch_rows(n, threads, repeat, budget).items():
                if "triplet list" in row and threads > 1:
                    continue
                put(row + (f" ({threads} threads)" if threads > 1 else ""), n, ms)
    return results


# ---- neighbour list alone, optionally against another checkout ----------------

def nl_cases() -> dict:
    """name -> Atoms of the neighbour-list timings (cutoff CUTOFF)."""
    cases = {}
    for rep in (2, 3, 4):
        atoms = bulk("Si", "diamond", a=5.431, cubic=True).repeat(rep)
        atoms.rattle(0.05, seed=1)
        cases[f"Si{len(atoms)}"] = atoms
    slab = fcc111("Pt", (4, 4, 4), vacuum=8.0)
    slab.rattle(0.03, seed=1)
    cases["Pt(111) 4x4x4 slab"] = slab
    return cases


def nl_worker() -> None:
    """Answer "case task calls" lines on stdin with the CPU ms per call (one JSON
    number per line); task is "nl" (neighbour list) or "compute" (whole
    SymmetryFunctions.compute with the default Si set)."""
    cases = nl_cases()
    sf = SymmetryFunctions.default(["Si"])
    print(json.dumps({name: len(kernels.neighbour_list(a.positions, a.cell.array, a.pbc, CUTOFF).first)
                      for name, a in cases.items()}), flush=True)
    for line in sys.stdin:
        name, task, calls = line.rsplit(maxsplit=2)  # case names contain spaces

        def fn(atoms=cases[name], task=task):
            if task == "nl":
                return kernels.neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF)
            return sf.compute(atoms)

        fn()
        t = time.thread_time()
        for _ in range(int(calls)):
            fn()
        print(json.dumps((time.thread_time() - t) / int(calls) * 1e3), flush=True)


def nl_main(before: str | None, repeat: int) -> None:
    trees = {"this checkout": ROOT} | ({"before": os.path.abspath(before)} if before else {})
    workers, pairs = {}, {}
    for label, tree in trees.items():
        env = dict(os.environ, GMETAD_BENCH_TREE=tree, OMP_NUM_THREADS="1")
        workers[label] = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--nl-worker"], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        pairs[label] = json.loads(workers[label].stdout.readline())
    if before and pairs["before"] != pairs["this checkout"]:
        raise SystemExit(f"the checkouts find different pair counts: {pairs}")
    cases = nl_cases()
    tasks = [(name, "nl") for name in cases] + [("Si64", "compute")]
    load = [os.getloadavg()[0]]
    print(f"Machine: {machine()}; cutoff {CUTOFF} A; CPU ms per call (thread_time), "
          f"best / median of {repeat} batches, batches of the checkouts interleaved.\n")
    head = "| | pairs | " + " | ".join(f"{label} best / median" for label in trees) + " |"
    print(head + (" before / this (medians) |" if before else ""))
    print("|---|---:|" + "---:|" * (len(trees) + bool(before)))
    for name, task in tasks:
        calls = max(1, 20000 // len(cases[name])) if task == "nl" else 10  # ~ 20 ms batches
        times = {label: [] for label in trees}
        for _ in range(repeat):
            for label, w in workers.items():
                w.stdin.write(f"{name} {task} {calls}\n")
                w.stdin.flush()
                times[label].append(json.loads(w.stdout.readline()))
        row = f"| {name}: {'neighbour list' if task == 'nl' else 'SymmetryFunctions.compute'} | "
        row += f"{pairs['this checkout'][name]} | "
        row += " | ".join(f"{min(t):.3f} / {np.median(t):.3f}" for t in times.values()) + " |"
        if before:
            row += f" {np.median(times['before']) / np.median(times['this checkout']):.2f} |"
        print(row, flush=True)
    for w in workers.values():
        w.stdin.close()
        w.wait()
    load.append(os.getloadavg()[0])
    print(f"\nLoad average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}")


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="runs per timing (best is kept)")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds per timing at most (roughly)")
    parser.add_argument("--sizes", default="64,512,4096", help="atom counts, from 64, 512, 4096")
    parser.add_argument("--no-dscribe", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--neighbours", action="store_true", help="time only the neighbour list")
    parser.add_argument("--before", metavar="PATH", help="with --neighbours: also time this checkout")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--nl-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nl_worker:
        nl_worker()
        return
    if args.neighbours:
        nl_main(args.before, args.repeat)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    dscribe = not args.no_dscribe
    torch_ok = not args.no_torch
    if torch_ok:
        try:
            import torch  # noqa: F401
        except ImportError:
            torch_ok = False
    if dscribe:
        try:
            import dscribe  # noqa: F401
        except ImportError:
            dscribe = False
    if args.child:
        print(json.dumps(child(args.child, sizes, args.repeat, args.budget, dscribe, torch_ok)))
        return

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows: dict[str, dict[str, float]] = {}
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(threads), "--sizes", args.sizes,
               "--repeat", str(args.repeat), "--budget", str(args.budget)]
        cmd += ["--no-dscribe"] * (not dscribe) + ["--no-torch"] * (not torch_ok)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        sys.stderr.write(done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"child with OMP_NUM_THREADS={threads} failed")
        rows.update(json.loads(done.stdout.strip().splitlines()[-1]))

    import numpy

    versions = [f"numpy {numpy.__version__}"]
    if dscribe:
        from importlib.metadata import version

        versions.append(f"dscribe {version('dscribe')}")
    if torch_ok:
        import torch

        versions.append(f"torch {torch.__version__}")
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Machine: {machine()}; Python {platform.python_version()}, {', '.join(versions)}")
    print(f"Load average (1 min) before / after: {load_before:.2f} / {load_after:.2f} "
          "(other processes on the machine inflate wall times, most of all with 2 threads)")
    print(f"Best of up to {args.repeat} runs, wall time in ms; 26 functions (8 G2 + 18 G4, Rc = {CUTOFF} A).\n")
    head = "| | " + " | ".join(f"Si{n}" for n in sizes) + " |"
    print(head)
    print("|---|" + "---:|" * len(sizes))
    def base(row):  # row name without its thread count
        return row.split(" (1 thread)")[0].split(" (2 threads)")[0]

    first_seen = {}
    for row in rows:
        first_seen.setdefault(base(row), len(first_seen))
    category = {"C:": 0, "DScribe": 1, "torch": 2}
    order = sorted(rows, key=lambda r: (next(v for k, v in category.items() if r.startswith(k)),
                                        first_seen[base(r)], "2 threads" in r))
    for row in order:
        cells = []
        for n in sizes:
            ms = rows[row].get(str(n))
            cells.append("—" if ms is None else (f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"))
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
