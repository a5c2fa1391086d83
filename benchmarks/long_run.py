#!/usr/bin/env python
"""Long G-metaD runs for the bias-cost table of bench_bias.py: exact hills against
the approximations that bound the cost (compression, max_hills).

Si64 diamond, Stillinger-Weber (--engine c: benchmarks/engines, the C implementation,
default; --engine matscipy: matscipy's Manybody, the same potential and much slower),
ASE Langevin at --temperature, 1 fs,
G-metaD through biasserver.calculator.GMetaDCalculator with the method's settings
(h = 1 meV, adaptive sigma = 1 A, stride 20, all atoms biased, default symmetry
functions). OMP_NUM_THREADS (default 1) sets the threads of the bias's C kernels (the
C engine runs one; numpy's BLAS one unless OPENBLAS_NUM_THREADS says otherwise).
One process per run:

    python benchmarks/long_run.py run exact      --steps 50000 --out benchmarks/.cache/long
    python benchmarks/long_run.py run compressed --compression 0.3 ...
    python benchmarks/long_run.py run capped     --max-hills 1000 ...
    python benchmarks/long_run.py run capped     --max-hills 1000 --compression 0.3 --name combined ...
    python benchmarks/long_run.py run reference  --steps 2000 ...   # plain MD (no bias)

Every --window steps it appends to <out>/<name>.npz: the bias's wall time per step
(GMetaDBias.step: symmetry functions, hills, forces, deposition; wall and CPU time of
the thread; the shadow HillSet's bookkeeping below is excluded), the engine's (the
Stillinger-Weber calculator's CPU time), the whole step's,
the number of hills and, for approximate runs, the bias energy of the hills against
the exact sum over every hill deposited so far (a shadow HillSet that never merges)
at that step's structure. The hills file is <out>/<name>.hills. Frames are kept every --frame-every steps for the coverage
(biasserver.coverage). The runs' files are read by bench_bias.py --long-run.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ase import units  # noqa: E402
from ase.build import bulk  # noqa: E402

from biasserver.bias import GMetaDBias  # noqa: E402
from biasserver.calculator import GMetaDCalculator  # noqa: E402
from biasserver.hills import HillSet  # noqa: E402
from biasserver.symmetry import SymmetryFunctions  # noqa: E402

HEIGHT, WIDTH, STRIDE = 1e-3, 1.0, 20


def sw_calculator(engine: str = "c"):
    """The Stillinger-Weber calculator (matscipy's Si parameters): "c" for
    benchmarks/engines' StillingerWeberC, "matscipy" for matscipy's Manybody."""
    if engine == "c":
        here = os.path.dirname(os.path.abspath(__file__))
        if here not in sys.path:
            sys.path.insert(0, here)
        from engines.stillinger_weber import StillingerWeberC
        return StillingerWeberC()
    if engine != "matscipy":
        raise ValueError(f"unknown engine {engine!r}: 'c' or 'matscipy'")
    from matscipy.calculators.manybody import Manybody
    from matscipy.calculators.manybody.explicit_forms.stillinger_weber import (
        Stillinger_Weber_PRB_31_5262_Si, StillingerWeber)
    return Manybody(**StillingerWeber(Stillinger_Weber_PRB_31_5262_Si))


def langevin(atoms, temperature: float, rng: np.random.Generator):
    """The runs' dynamics: velocities drawn at ``temperature`` (K, centre of mass at
    rest), then ASE Langevin at that temperature, 1 fs, friction 0.01 / fs."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)
        return Langevin(atoms, 1.0 * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                        fixcm=False, rng=rng)


def run(args) -> None:
    atoms = bulk("Si", "diamond", 5.431, cubic=True).repeat(2)
    rng = np.random.default_rng(args.seed)
    sf = SymmetryFunctions.default(["Si"])
    os.makedirs(args.out, exist_ok=True)
    hills_path = os.path.join(args.out, f"{args.name or args.variant}.hills")
    if os.path.exists(hills_path):
        os.remove(hills_path)    # a fresh run: its hills file starts empty
    bias = shadow = None
    bias_times: list[float] = []
    bias_cpu: list[float] = []
    engine_cpu: list[float] = []
    if args.variant != "reference":
        bias = GMetaDBias(sf, height=HEIGHT, width=WIDTH, stride=STRIDE, species={"Si": 1.0},
                          compression=args.compression if args.variant in ("compressed", "capped") else None,
                          max_hills=args.max_hills if args.variant == "capped" else None,
                          hills_file=hills_path)
        if args.variant != "exact":
            shadow = HillSet(sf.size("Si"), adaptive=True)
            hills = bias.hills["Si"]
            plain_add, plain_merge = hills.add, hills.merge_into

            def shadow_add(centre, height, metric, step):
                # not part of the bias's cost: its time is subtracted in step()
                t, c = time.perf_counter(), time.thread_time()
                shadow.add(centre, height, metric, step)
                shadow_time[0] += time.perf_counter() - t
                shadow_time[1] += time.thread_time() - c

            def add(centre, height, metric, step):
                shadow_add(centre, height, metric, step)
                return plain_add(centre, height, metric, step)

            def merge_into(index, centre, height, metric, step, *rest):
                shadow_add(centre, height, metric, step)
                return plain_merge(index, centre, height, metric, step, *rest)

            hills.add, hills.merge_into = add, merge_into
        timed_step = bias.step
        shadow_time = [0.0, 0.0]     # wall, CPU (s) of the shadow's adds in this step

        def step(a):
            shadow_time[0] = shadow_time[1] = 0.0
            t, c = time.perf_counter(), time.thread_time()
            out = timed_step(a)
            bias_cpu.append(time.thread_time() - c - shadow_time[1])
            bias_times.append(time.perf_counter() - t - shadow_time[0])
            return out

        bias.step = step
    engine = sw_calculator(args.engine)
    timed_calculate = engine.calculate

    def calculate(*a, **k):
        c = time.thread_time()
        timed_calculate(*a, **k)
        engine_cpu.append(time.thread_time() - c)

    engine.calculate = calculate
    atoms.calc = engine if bias is None else GMetaDCalculator(engine, bias)
    dyn = langevin(atoms, args.temperature, rng)
    out = os.path.join(args.out, f"{args.name or args.variant}.npz")
    record = {k: [] for k in ("step", "bias_ms", "bias_cpu_ms", "bias_max_ms", "step_ms", "engine_cpu_ms", "n_hills",
                              "energy", "exact_energy", "temperature")}
    frames = []
    t0 = time.perf_counter()
    done = 0
    while done < args.steps:
        n = min(args.window, args.steps - done)
        bias_times.clear()
        bias_cpu.clear()
        engine_cpu.clear()
        t = time.perf_counter()
        for _ in range(n // args.frame_every):
            dyn.run(args.frame_every)
            frames.append(atoms.positions.copy())
        if n % args.frame_every:
            dyn.run(n % args.frame_every)
        wall = time.perf_counter() - t
        done += n
        record["step"].append(done)
        record["step_ms"].append(wall / n * 1e3)
        record["engine_cpu_ms"].append(float(np.mean(engine_cpu)) * 1e3)
        record["temperature"].append(atoms.get_temperature())
        if bias is not None:
            record["bias_ms"].append(float(np.mean(bias_times)) * 1e3)
            record["bias_cpu_ms"].append(float(np.mean(bias_cpu)) * 1e3)
            record["bias_max_ms"].append(float(np.max(bias_times)) * 1e3)
            record["n_hills"].append(bias.n_hills)
            energy = float(bias.atom_energies(atoms).sum())
            record["energy"].append(energy)
            if shadow is not None and len(shadow):
                g = sf.values(atoms)["Si"]
                record["exact_energy"].append(float(shadow.evaluate(g, gradient=False)[0].sum()))
            else:
                record["exact_energy"].append(energy)
        np.savez(out + ".tmp.npz", frames=np.array(frames), cell=atoms.cell.array,
                 steps_done=done, seconds=time.perf_counter() - t0, variant=args.variant,
                 engine=args.engine,
                 compression=np.nan if args.compression is None else args.compression,
                 max_hills=-1 if args.max_hills is None else args.max_hills,
                 frame_every=args.frame_every, temperature_K=args.temperature,
                 threads=int(os.environ["OMP_NUM_THREADS"]),
                 load_average=os.getloadavg()[0], **{k: np.array(v) for k, v in record.items()})
        os.replace(out + ".tmp.npz", out)
        last = (f", bias {record['bias_ms'][-1]:.2f} ms/step wall ({record['bias_cpu_ms'][-1]:.2f} CPU of the "
                f"main thread), {record['n_hills'][-1]} hills" if bias else "")
        print(f"{args.variant}: step {done}, {time.perf_counter() - t0:.0f} s, "
              f"{record['step_ms'][-1]:.1f} ms/step{last}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="one run")
    p.add_argument("variant", choices=["exact", "compressed", "capped", "reference"])
    p.add_argument("--name", help="file name (default: the variant)")
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--compression", type=float, default=None,
                   help="compression threshold (compressed; optional with capped)")
    p.add_argument("--max-hills", type=int, default=None)
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--window", type=int, default=500, help="steps per record")
    p.add_argument("--frame-every", type=int, default=20, help="steps between kept frames")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--engine", choices=["c", "matscipy"], default="c",
                   help="Stillinger-Weber implementation (default: c, benchmarks/engines)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", ".cache", "long_run"))
    args = parser.parse_args(argv)
    if args.variant == "compressed" and args.compression is None:
        parser.error("compressed needs --compression")
    if args.variant == "capped" and args.max_hills is None:
        parser.error("capped needs --max-hills")
    if args.variant in ("exact", "reference") and (args.compression is not None or args.max_hills is not None):
        parser.error(f"{args.variant} takes neither --compression nor --max-hills")
    run(args)


if __name__ == "__main__":
    main()
