"""Several walkers sharing one bias: exploration per reference call, and the exchange cost.

    python benchmarks/bench_walkers.py [--steps 1000] [--quick] [--skip-runs] [--skip-exchange]

1. **Exploration.** The Pt(111)-H example (examples/pt111-h-walkers: one H on a
   3x3x4 Pt(111) slab, EMT, 600 K, h = 20 meV every 5 steps, only H biased) run
   with ``gmetad run`` as 1, 2 and 4 walkers of L steps each, 2 walkers of 2L and
   one walker of 4L (4L is the budget of the 4 walkers: the same number of
   reference calls). For each run: the distinct H environments found (greedy
   covering at radius 1 of all walkers' H symmetry functions in step order,
   standardised by a plain-MD run of L steps, biasserver.coverage), per 1000
   reference evaluations, and the hills deposited.
2. **Exchange cost.** ``mpirun -n N`` of this script's worker: each rank makes the
   hill candidates of one H hill (70 functions, adaptive metric) and calls
   :meth:`WalkerGroup.share` K times with all ranks in step (a plain MPI barrier
   first, not timed). Per exchange: the whole call (wall and CPU time), of it the
   allgather (pickling, the collective, unpickling) and the adding of the N new
   hills to the rank's bias (the cost of having N times more hills, not of MPI),
   and the wall time it adds over one walker's own deposition without MPI
   (``apply_candidates`` of its hill); medians over the K exchanges, the largest
   over the ranks. For comparison, taking turns with the exchange at every
   deposition (so that all meet the same load on a busy machine): the peer,
   PLUMED's WALKERS_MPI way (a blocking MPI allgather of the same hills, every
   rank adding them all; its ranks spin while they wait), and the blocking
   allgather alone.

--quick: L = 100 and K = 50 (for CI); the table in benchmarks/README.md is the
full run (L = 1000, K = 400).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXAMPLE = os.path.join(REPO, "examples", "pt111-h-walkers")
H_INDEX = 36


def make_example(root: str, walkers: int, steps: int, plain: bool = False) -> str:
    """A copy of the walkers example with ``walkers`` and ``steps`` set."""
    folder = os.path.join(root, f"example-{walkers}x{steps}{'-plain' if plain else ''}")
    shutil.copytree(EXAMPLE, folder)
    path = os.path.join(folder, "gmetad.yaml")
    text = open(path).read()
    text = text.replace("walkers: 2", f"walkers: {walkers}")
    text = text.replace("  steps: 2000 ", f"  steps: {steps} ")
    text = text.replace("  analysis: python {dir}/analyse.py\n", "")
    if plain:
        text = text.replace("  plain: false", "  plain: true")
    open(path, "w").write(text)
    return folder


def run(folder: str, only: str = "gmetad") -> tuple[str, float]:
    out = os.path.join(folder, "output")
    start = time.perf_counter()
    log = open(os.path.join(folder, "run.log"), "w")
    code = subprocess.call([sys.executable, "-m", "biasserver.cli", "run", folder, "--only", only],
                           stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if code != 0:
        raise SystemExit(f"gmetad run {folder} failed (code {code}); see {folder}/run.log")
    return os.path.join(out, only), time.perf_counter() - start


def walker_frames(outdir: str):
    from ase.io import read
    folders = sorted((f for f in os.listdir(outdir) if f.startswith("walker-")), key=lambda f: int(f[7:]))
    return [read(os.path.join(outdir, f, "frames.extxyz"), ":") for f in folders]


def h_environments(frames, sf) -> np.ndarray:
    from biasserver.coverage import environments
    return environments(frames, sf)["H"]


def exploration(steps: int, root: str) -> list[str]:
    from biasserver import hillsfile
    from biasserver.coverage import Coverage
    from biasserver.symmetry import SymmetryFunctions
    sf = SymmetryFunctions.default(["Pt", "H"], 6.0)
    plain_dir, _ = run(make_example(root, 1, steps, plain=True), only="plain")
    reference = Coverage.from_reference({"H": h_environments(walker_frames(plain_dir)[0], sf)})
    rows = ["| walkers x steps | reference calls | wall s | hills | distinct H environments | per 1000 calls |",
            "|---|---:|---:|---:|---:|---:|"]
    plain_cover = Coverage(reference.mean, reference.scale, reference.radius)
    plain_cover.add({"H": h_environments(walker_frames(plain_dir)[0], sf)})
    rows.append(f"| plain MD 1 x {steps} (reference set) | {steps + 1} | - | 0 | {plain_cover.count('H')} | "
                f"{1000 * plain_cover.count('H') / (steps + 1):.1f} |")
    for walkers, length in ((1, steps), (2, steps), (4, steps), (2, 2 * steps), (1, 4 * steps)):
        outdir, wall = run(make_example(root, walkers, length))
        runs = walker_frames(outdir)
        calls = sum(len(frames) for frames in runs)
        cover = Coverage(reference.mean, reference.scale, reference.radius)
        # all walkers' environments in step order (walker order within a step)
        per_walker = [h_environments(frames, sf) for frames in runs]
        for k in range(max(len(g) for g in per_walker)):
            cover.add({"H": np.array([g[k] for g in per_walker if k < len(g)])})
        hills = len(hillsfile.read(os.path.join(outdir, "HILLS")).records)
        rows.append(f"| {walkers} x {length} | {calls} | {wall:.0f} | {hills} | {cover.count('H')} | "
                    f"{1000 * cover.count('H') / calls:.1f} |")
        log = open(os.path.join(outdir, "server.log")).read()
        stats = [ln.split("; ", 1)[1] for ln in log.splitlines() if " exchanges, " in ln]
        if stats:
            rows.append(f"|   (servers: {stats[0]}) | | | | | |")
        print(rows[-1] if not stats else rows[-2], file=sys.stderr, flush=True)
    return rows


# -- the exchange micro-benchmark (run under mpirun) -----------------------------
def exchange_worker(repeat: int) -> None:
    from mpi4py import MPI
    from ase.io import read
    from biasserver.bias import GMetaDBias
    from biasserver.symmetry import SymmetryFunctions
    from biasserver.walkers import WalkerGroup
    comm = MPI.COMM_WORLD
    atoms = read(os.path.join(EXAMPLE, "init.xyz"))
    rng = np.random.default_rng(comm.Get_rank())
    sf = SymmetryFunctions.default(["Pt", "H"], 6.0)

    def fresh_bias():
        return GMetaDBias(sf, height=0.02, width=0.5, stride=5, species={"H": 1.0, "Pt": 0.0})

    candidates = []
    for k in range(8):   # distinct hills to cycle through
        moved = atoms.copy()
        moved.positions[H_INDEX] += rng.normal(0, 0.2, 3)
        candidates.append(fresh_bias().hill_candidates(moved))
    # local deposition of one walker's hill, no MPI
    local, bias = [], fresh_bias()
    for k in range(repeat):
        bias.step_count = 5 * (k + 1)
        start = time.perf_counter()
        bias.apply_candidates(candidates[k % 8])
        local.append(time.perf_counter() - start)
    # the exchange, the peer and the allgather alone take turns at every deposition k, so
    # that all three meet the same load on a busy machine
    group, bias, peer_bias = WalkerGroup(comm), fresh_bias(), fresh_bias()
    total, adding, collective, cpu, peer, plain = [], [], [], [], [], []
    for k in range(repeat):
        comm.Barrier()
        before = group.apply_seconds, group.collective_seconds
        start, start_cpu = time.perf_counter(), time.process_time()
        group.share(bias, 5 * (k + 1), candidates[k % 8])
        total.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        adding.append(group.apply_seconds - before[0])
        collective.append(group.collective_seconds - before[1])
        # the peer, PLUMED's WALKERS_MPI way: a blocking MPI allgather, every rank adding all hills
        comm.Barrier()
        start = time.perf_counter()
        gathered = comm.allgather(candidates[k % 8])
        peer_bias.step_count = 5 * (k + 1)
        for groups in gathered:
            peer_bias.apply_candidates(groups)
        peer.append(time.perf_counter() - start)
        # the blocking MPI allgather alone: the communication's floor
        comm.Barrier()
        start = time.perf_counter()
        comm.allgather(candidates[k % 8])
        plain.append(time.perf_counter() - start)
    stats = np.array([np.median(total), np.median(cpu), np.median(collective), np.median(adding),
                      np.median(peer), np.median(plain)])
    every = comm.gather(stats, root=0)
    if comm.Get_rank() == 0:
        worst = np.max(every, axis=0)
        print(comm.Get_size(), np.median(local) * 1e3, *(worst * 1e3), bias.n_hills)


def exchange(repeat: int) -> list[str]:
    from biasserver.mpilaunch import mpi_command, mpi_environment
    rows = ["| walkers | one walker's deposition without MPI, ms | exchange: wall, ms | exchange: CPU, ms | "
            "of the wall time, the allgather, ms | of the wall time, adding all walkers' hills, ms "
            "| wall time added over one walker's own deposition, ms | peer: blocking allgather, every rank "
            "adding the hills, ms | blocking allgather alone, ms | exchange / peer | hills at the end |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in (1, 2, 4):
        argv = mpi_command(n, [sys.executable, os.path.abspath(__file__), "--exchange-worker",
                               "--repeat", str(repeat)])
        out = subprocess.run(argv, capture_output=True, text=True, env=mpi_environment(), cwd=REPO)
        if out.returncode != 0:
            raise SystemExit(out.stdout + out.stderr)
        size, local, total, cpu, collective, adding, peer, plain, hills = out.stdout.split()
        local, total, peer = float(local), float(total), float(peer)
        rows.append(f"| {size} | {local:.3f} | {total:.3f} | {float(cpu):.3f} | {float(collective):.3f} | "
                    f"{float(adding):.3f} | {total - local:.3f} | {peer:.3f} | {float(plain):.3f} | "
                    f"{total / peer:.2f} | {hills} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="L, steps per walker of the short runs")
    parser.add_argument("--repeat", type=int, default=400, help="K, exchanges timed per walker count")
    parser.add_argument("--quick", action="store_true", help="L = 100, K = 50")
    parser.add_argument("--skip-runs", action="store_true")
    parser.add_argument("--skip-exchange", action="store_true")
    parser.add_argument("--exchange-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.exchange_worker:
        exchange_worker(args.repeat)
        return
    if args.quick:
        args.steps, args.repeat = 100, 50
    if not args.skip_exchange:
        print("\n".join(exchange(args.repeat)))
    if not args.skip_runs:
        root = tempfile.mkdtemp(prefix="bench-walkers-")
        try:
            print("\n".join(exploration(args.steps, root)))
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
