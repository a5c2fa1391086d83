"""Time per MD step of i-PI + a zero-force client, directly and through the bias server.

    python benchmarks/bench_server.py [--sizes 64 512] [--steps 2000]

For each size, three chains run the same i-PI NVE input with a force engine that
costs nothing (benchmarks/zero_forces.py), so only the socket chain is timed:

- direct: i-PI <-> driver;
- proxy: i-PI <-> gmetad serve (proxy, bias off, no recording) <-> driver;
- proxy+record: the same, recording every frame (extxyz, no fsync).

The force engine notes the time of every call; the time per MD step is the
median interval between consecutive calls over the second half of the run
(steady state: start-up and the first steps do not count, and the median
ignores the odd hiccup of a shared machine). Each chain runs ``--repeat``
times and the best median is kept. The table prints ms per step and the time
the server adds.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import uuid

import numpy as np
import yaml
from ase.build import bulk
from ase.io import write

HERE = os.path.dirname(os.path.abspath(__file__))

XML = """<simulation verbosity='quiet'>
  <output prefix='bench'><properties stride='1000' filename='out'> [ step ] </properties></output>
  <total_steps> {steps} </total_steps>
  <prng><seed> 1 </seed></prng>
  <ffsocket name='ff' mode='unix' pbc='false'>
    <address> {socket} </address><latency> 1e-4 </latency>
  </ffsocket>
  <system>
    <initialize nbeads='1'>
      <file mode='ase' units='angstrom'> {structure} </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces><force forcefield='ff'/></forces>
    <motion mode='dynamics'><dynamics mode='nve'><timestep units='femtosecond'> 1 </timestep></dynamics></motion>
  </system>
</simulation>
"""


def run_chain(workdir: str, structure: str, steps: int, chain: str) -> float:
    """Median time per MD step (s) in the second half of one run through ``chain``."""
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    with open(os.path.join(workdir, "input.xml"), "w") as handle:
        handle.write(XML.format(steps=steps, socket=tag, structure=structure))
    driver_address = f"unix:{tag}"
    procs = []
    times_file = os.path.join(workdir, "call_times.txt")
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GMETAD_BENCH_TIMES=times_file)
    procs.append(subprocess.Popen(["i-pi", "input.xml"], cwd=workdir, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    try:
        if chain != "direct":
            config = {
                "structure": structure,
                "symmetry": {"default": {"elements": ["Si"], "cutoff": 4.0}},
                "bias": {"enabled": False, "hills_file": None, "species": {"Si": 1.0}},
                "server": {"mode": "proxy", "ipi": f"unix:{tag}", "listen": f"unix:{tag}-ref"},
                "recorder": {"path": os.path.join(workdir, "frames.extxyz") if chain == "proxy+record" else None,
                             "fsync": False},
            }
            with open(os.path.join(workdir, "gmetad.yaml"), "w") as handle:
                yaml.safe_dump(config, handle)
            procs.append(subprocess.Popen([sys.executable, "-m", "biasserver.cli", "--log-level", "warning",
                                           "serve", "gmetad.yaml"], cwd=workdir, env=env))
            driver_address = f"unix:{tag}-ref"
        procs.append(subprocess.Popen([sys.executable, "-m", "drivers.client", "-c", "zero_forces:ZeroForces",
                                       "-s", structure, "-a", driver_address], cwd=workdir, env=env,
                                      stderr=subprocess.DEVNULL))
        if procs[0].wait(timeout=1800) != 0:
            raise RuntimeError(f"i-PI failed in the {chain} chain")
        for proc in procs[1:]:
            proc.wait(timeout=60)
        calls = np.loadtxt(times_file)
        return float(np.median(np.diff(calls[len(calls) // 2:])))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if os.path.exists(os.path.join(workdir, "frames.extxyz")):
            os.remove(os.path.join(workdir, "frames.extxyz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--steps", type=int, default=2000, help="MD steps per run at 64 atoms (fewer when larger)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per chain; the best median is kept")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for natoms in args.sizes:
            reps = round((natoms / 8) ** (1 / 3))
            atoms = bulk("Si", "diamond", 5.43, cubic=True) * (reps, reps, reps)
            structure = os.path.join(workdir, f"si{len(atoms)}.xyz")
            write(structure, atoms, format="extxyz")
            steps = max(400, args.steps * 64 // len(atoms))
            per_step = {chain: [] for chain in ("direct", "proxy", "proxy+record")}
            for _ in range(args.repeat):          # interleaved, so slow phases hit every chain
                for chain in per_step:
                    per_step[chain].append(run_chain(workdir, structure, steps, chain) * 1e3)
            per_step = {chain: min(times) for chain, times in per_step.items()}
            rows.append((len(atoms), per_step))
    print(f"{'atoms':>6} {'direct ms/step':>15} {'proxy ms/step':>14} {'added':>8} "
          f"{'proxy+record':>13} {'added':>8}")
    for natoms, t in rows:
        print(f"{natoms:6d} {t['direct']:15.3f} {t['proxy']:14.3f} {t['proxy'] - t['direct']:8.3f} "
              f"{t['proxy+record']:13.3f} {t['proxy+record'] - t['direct']:8.3f}")


if __name__ == "__main__":
    main()
