"""Several walkers sharing one bias: real i-PI, real ``mpirun``, EMT drivers.

Each walker is the Pt(111) 2x2x3 + H slab of ipi_helpers.py (only H biased,
hills of 0.05 eV every 3 steps, 4.5 A cutoff) in its own folder ``w<r>``, its
i-PI seeded differently (thermal velocities at 300 K), so the walkers diverge:

    i-PI r  <-  rank r of  mpirun -n N gmetad serve gmetad.yaml  <-  gmetad driver emt

Open MPI runs as root and oversubscribed through its environment switches
(biasserver.mpilaunch). Every process is stopped in ``finally``; every wait has a
deadline.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.io import read, write

from biasserver import hillsfile
from biasserver.bias import GMetaDBias
from biasserver.mpilaunch import mpi_command, mpi_environment
from biasserver.symmetry import SymmetryFunctions

from ipi_helpers import (CUTOFF, DEADLINE, HEIGHT, REPO, SLEEPY_MODULE, STEPS, STRIDE, Processes, finish,
                         kill_group, pt_h_slab, start_ipi, unique_socket_name, wait_for, write_config,
                         write_ipi_input)


def write_walkers(workdir: Path, walkers: int, ipi_base: str, ref_base: str, extra_bias: str = "",
                  seeds=None) -> list[Path]:
    """i-PI inputs w<r>/input.xml (seed 1000 + r) and gmetad.yaml with {walker}
    addresses and frames paths; returns the i-PI inputs."""
    inputs = []
    for r in range(walkers):
        folder = workdir / f"w{r}"
        seed = (seeds or {}).get(r, 1000 + r)
        xml, frame = write_ipi_input(folder, pt_h_slab(), f"{ipi_base}-{r}", steps=STEPS, seed=seed,
                                     consolidate_messages=False, total_time_s=3 * DEADLINE)
        inputs.append(xml)
    frame.info.clear()
    write(workdir / "template.xyz", frame, format="extxyz")
    write_config(workdir, f"{ipi_base}-{{walker}}", f"{ref_base}-{{walker}}", restart=False,
                 frames="w{walker}/frames.extxyz", extra_bias=extra_bias, walkers=walkers)
    return inputs


class WalkerJob(Processes):
    """A test's processes, plus the MPI job of the servers."""

    def mpi_serve(self, walkers: int, log: str = "server.log") -> subprocess.Popen:
        with open(self.workdir / log, "wb") as handle:
            proc = subprocess.Popen(mpi_command(walkers, [sys.executable, "-m", "biasserver.cli", "serve",
                                                          "gmetad.yaml"]),
                                    cwd=self.workdir, stdout=handle, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=mpi_environment(self.env),
                                    start_new_session=True)
        proc.log_path = self.workdir / log
        self.procs.append(proc)
        return proc

    def ipi(self, xml: Path, name: str) -> subprocess.Popen:
        """i-PI in the folder of its input (its outputs stay per walker)."""
        proc = start_ipi(xml, name, cwd=xml.parent, timeout=DEADLINE)
        self.procs.append(proc)
        return proc

    def walker_driver(self, r: int, ref_base: str, calculator: str = "emt", kwargs=None, log=None):
        return self.driver(f"unix:{ref_base}-{r}", log or f"w{r}/driver.log", calculator, kwargs)


def run_walkers(workdir: Path, walkers: int, extra_bias: str = "") -> Path:
    """An uninterrupted walkers run to the end."""
    ipi_base, ref_base = unique_socket_name("wk"), unique_socket_name("wkref")
    inputs = write_walkers(workdir, walkers, ipi_base, ref_base, extra_bias)
    job = WalkerJob(workdir)
    job.sockets = [f"{b}-{r}" for b in (ipi_base, ref_base) for r in range(walkers)]
    try:
        ipis = [job.ipi(xml, f"{ipi_base}-{r}") for r, xml in enumerate(inputs)]
        server = job.mpi_serve(walkers)
        drivers = [job.walker_driver(r, ref_base) for r in range(walkers)]
        for ipi in ipis:
            finish(job, ipi, ())
        finish(job, ipis[0], [server] + drivers)
    finally:
        job.stop_all()
    return workdir


@pytest.fixture(scope="module")
def two_walkers(tmp_path_factory):
    return run_walkers(tmp_path_factory.mktemp("walkers2"), 2)


def walker_frames(workdir: Path, r: int):
    return read(workdir / f"w{r}" / "frames.extxyz", ":")


def digests(log: str) -> dict[int, str]:
    """walker -> hill-set digest from the servers' final log lines."""
    out = {}
    for line in log.splitlines():
        if " hills, digest " in line:
            walker = int(line.split(" walker ")[1].split()[0])
            out[walker] = line.split("digest ")[1].split(";")[0].strip()
    return out


def check_shared_bias(workdir: Path, walkers: int) -> None:
    """The properties every walkers run must have (see the issue's test list)."""
    from biasserver.walkers import hill_digest
    log = (workdir / "server.log").read_text()
    records = hillsfile.read(workdir / "HILLS").records
    deposition_steps = list(range(STRIDE, STEPS + 1, STRIDE))
    # every rank's hill set is identical, and identical to the hills file's
    loaded = GMetaDBias.load(workdir / "HILLS")
    assert digests(log) == {r: hill_digest(loaded) for r in range(walkers)}, log[-3000:]
    # each hill once: one H hill per walker per deposition step, in walker order
    assert [r.step for r in records] == [s for s in deposition_steps for _ in range(walkers)]
    assert [r.id for r in records] == list(range(len(records)))
    sf = SymmetryFunctions.default(["Pt", "H"], CUTOFF)
    header = [ln for ln in (workdir / "HILLS").read_text().splitlines() if ln.startswith("#!")]
    lines = [ln for ln in (workdir / "HILLS").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for r in range(walkers):
        frames = walker_frames(workdir, r)
        # no gaps, no duplicates
        assert [a.info["step"] for a in frames] == list(range(STEPS + 1))
        assert all(a.info["walker"] == r and a.info["bead"] == 0 for a in frames)
        for a in frames:
            # labels are the reference calculator's on the recorded positions
            ref = a.copy()
            ref.calc = EMT()
            e, f = ref.get_potential_energy(), ref.get_forces()
            assert abs(a.get_potential_energy() - e) <= max(1e-8 * abs(e), 0.5e-8 * np.abs(f).sum())
            np.testing.assert_allclose(a.get_forces(), f, rtol=0, atol=5e-7)
            step = a.info["step"]
            # the bias felt at step s: every walker's hills of steps < s
            assert a.info["n_hills"] == walkers * len([s for s in deposition_steps if s <= step])
            felt = len([rec for rec in records if rec.step < step])
            if felt:
                partial = workdir / f"HILLS_{r}_{step}"
                partial.write_text("\n".join(header + lines[:felt]) + "\n")
                expected = GMetaDBias.load(partial).energy_forces(a)[0]
                assert a.info["bias_energy"] == pytest.approx(expected, abs=1e-8)
            else:
                assert a.info["bias_energy"] == 0.0
            # walker r's hill of this step is centred on its own H environment
            if step in deposition_steps:
                mine = [rec for rec in records if rec.step == step][r]
                g = sf.values(a)["H"][0]
                np.testing.assert_allclose(mine.centre, g, rtol=0, atol=1e-6)
    # the walkers did diverge: their hills differ
    first = [rec for rec in records if rec.step == STRIDE]
    assert np.abs(first[0].centre - first[1].centre).max() > 1e-4


def test_two_walkers_share_one_bias(two_walkers):
    check_shared_bias(two_walkers, 2)
    log = (two_walkers / "server.log").read_text()
    assert "walker 0 of 2" in log and "walker 1 of 2" in log


def test_three_walkers_share_one_bias(tmp_path):
    check_shared_bias(run_walkers(tmp_path, 3), 3)


def test_force_client_of_one_walker_killed_mid_step(two_walkers, tmp_path):
    """Walker 1's driver stalls at its 5th evaluation and is SIGKILLed; a new one
    takes the step. Walker 0 waits at the next deposition and nothing differs from
    the uninterrupted run."""
    kill_at = 5
    (tmp_path / "sleepy.py").write_text(SLEEPY_MODULE)
    ipi_base, ref_base = unique_socket_name("wkc"), unique_socket_name("wkcref")
    inputs = write_walkers(tmp_path, 2, ipi_base, ref_base)
    marker = tmp_path / "asleep"
    job = WalkerJob(tmp_path)
    job.sockets = [f"{b}-{r}" for b in (ipi_base, ref_base) for r in range(2)]
    try:
        ipis = [job.ipi(xml, f"{ipi_base}-{r}") for r, xml in enumerate(inputs)]
        server = job.mpi_serve(2)
        d0 = job.walker_driver(0, ref_base)
        doomed = job.walker_driver(1, ref_base, "sleepy:SleepyEMT", {"sleep_at": kill_at, "marker": str(marker)},
                                   log="w1/driver1.log")
        wait_for(marker.exists, DEADLINE, "walker 1's driver to stall", job)
        kill_group(doomed)
        d1 = job.walker_driver(1, ref_base, log="w1/driver2.log")
        for ipi in ipis:
            finish(job, ipi, ())
        finish(job, ipis[0], [server, d0, d1])
    finally:
        job.stop_all()
    log = (tmp_path / "server.log").read_text()
    dropped = [ln for ln in log.splitlines() if "dropping force client" in ln]
    assert len(dropped) == 1 and " walker 1 " in dropped[0] and f"at step {kill_at}" in dropped[0], log
    # walker 0 waited at the next deposition step while walker 1's new driver started
    waited = {int(ln.split(" walker ")[1].split()[0]): float(ln.split("of which ")[1].split(" s waiting")[0])
              for ln in log.splitlines() if " s waiting for the last walker to arrive" in ln}
    assert waited[0] > 0.3 and waited[0] > waited[1], log[-2000:]
    check_shared_bias(tmp_path, 2)
    same = hillsfile.read(two_walkers / "HILLS").records
    for a, b in zip(hillsfile.read(tmp_path / "HILLS").records, same, strict=True):
        assert a.step == b.step and a.height == b.height
        np.testing.assert_allclose(a.centre, b.centre, rtol=0, atol=1e-9)
    for r in range(2):
        for a, b in zip(walker_frames(tmp_path, r), walker_frames(two_walkers, r), strict=True):
            np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-8)
            assert a.info["bias_energy"] == pytest.approx(b.info["bias_energy"], rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- #
# gmetad run with walkers: the example, a rank killed, --resume
# --------------------------------------------------------------------------- #

RUN_STEPS = 30           # per walker
CHECKPOINT_STRIDE = 10   # i-PI checkpoints at steps 10 and 20
SLOW_MODULE = '''
"""EMT that takes at least 30 ms per evaluation (a run slow enough to be killed)."""
import time

from ase.calculators.emt import EMT


class SlowEMT(EMT):
    def calculate(self, *args, **kwargs):
        time.sleep(0.03)
        super().calculate(*args, **kwargs)
'''


def walkers_example(tmp_path: Path) -> Path:
    """examples/pt111-h-walkers with a slow EMT driver and checkpoints every 10 steps."""
    import shutil
    example = tmp_path / "example"
    shutil.copytree(REPO / "examples" / "pt111-h-walkers", example)
    (example / "slow.py").write_text(SLOW_MODULE)
    text = (example / "gmetad.yaml").read_text()
    text = text.replace("driver: gmetad driver emt", "driver: gmetad driver slow:SlowEMT")
    text = text.replace("  plain: false", f"  plain: false\n  checkpoint_stride: {CHECKPOINT_STRIDE}")
    (example / "gmetad.yaml").write_text(text)
    return example


def gmetad_run(example: Path, output: Path, *extra) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(example), os.environ.get("PYTHONPATH", "")]))
    log = open(output.parent / f"{output.name}.{'resume' if extra else 'run'}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "biasserver.cli", "run", str(example), "--steps", str(RUN_STEPS),
                             "--output", str(output), *extra], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def frames_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"Lattice=")
    except OSError:
        return 0


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """An uninterrupted gmetad run of the walkers example (2 walkers x 30 steps)."""
    tmp = tmp_path_factory.mktemp("walkers_run")
    example = walkers_example(tmp)
    proc = gmetad_run(example, tmp / "output")
    assert proc.wait(timeout=4 * DEADLINE) == 0, (tmp / "output.run.log").read_text()[-3000:]
    return tmp / "output"


def test_gmetad_run_with_walkers(example_run):
    out = example_run / "gmetad"
    records = hillsfile.read(out / "HILLS").records
    assert [r.step for r in records] == [s for s in range(5, RUN_STEPS + 1, 5) for _ in range(2)]
    first = []
    for r in range(2):
        frames = read(out / f"walker-{r}" / "frames.extxyz", ":")
        assert [a.info["step"] for a in frames] == list(range(RUN_STEPS + 1))
        assert {a.info["walker"] for a in frames} == {r}
        first.append(frames[1].positions)
        # each walker's i-PI ran with its own seed: the example's plus r
        root = ET.parse(out / f"walker-{r}" / "input.xml").getroot()
        assert int(root.findtext("prng/seed")) == 31415 + r
    assert np.abs(first[0] - first[1]).max() > 1e-6
    report = (example_run / "walkers.txt").read_text()
    assert "walker 0:" in report and "walker 1:" in report and "all walkers:" in report


def gmetad_select(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "biasserver.cli", "select", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=DEADLINE)


def test_select_takes_every_walkers_frames(example_run, tmp_path):
    """gmetad select over a walkers run: its folder, or its walkers' files named one
    by one; every frame picked is one of its walker's, walker field kept."""
    out = example_run / "gmetad"
    files = [out / f"walker-{r}" / "frames.extxyz" for r in range(2)]
    recorded = {r: {a.info["step"]: a for a in read(files[r], ":")} for r in range(2)}
    from_folder, from_files = tmp_path / "folder.extxyz", tmp_path / "files.extxyz"
    result = gmetad_select(out, "--fps", 12, "-o", from_folder)
    assert result.returncode == 0, result.stderr
    assert f"selected 12 of {2 * (RUN_STEPS + 1)} frames" in result.stderr
    assert gmetad_select(*files, "--fps", 12, "-o", from_files).returncode == 0
    assert from_files.read_text() == from_folder.read_text()
    picked = read(from_folder, ":")
    assert len(picked) == 12 and {a.info["walker"] for a in picked} == {0, 1}
    for a in picked:
        original = recorded[a.info["walker"]][a.info["step"]]
        assert a.info["bead"] == 0 and a.info["n_hills"] == original.info["n_hills"]
        np.testing.assert_array_equal(a.positions, original.positions)
        np.testing.assert_array_equal(a.get_forces(), original.get_forces())
        assert a.get_potential_energy() == original.get_potential_energy()
    # the stride applies to each walker's trajectory
    assert gmetad_select(out, "--stride", 10, "-o", tmp_path / "strided.extxyz").returncode == 0
    strided = read(tmp_path / "strided.extxyz", ":")
    assert [(a.info["walker"], a.info["step"]) for a in strided] == [(r, s) for r in range(2) for s in (0, 10, 20, 30)]


def test_select_errors_name_the_file_at_fault(example_run, tmp_path):
    good = example_run / "gmetad" / "walker-0" / "frames.extxyz"
    broken = tmp_path / "broken.extxyz"
    broken.write_text("2\nLattice=\"1 0 0 0 1 0 0 0 1\" Properties=species:S:1:pos:R:3\nPt 0 0\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, words in (([good, tmp_path / "missing.extxyz"], "missing.extxyz: no such frames file or run folder"),
                        ([good, broken], "broken.extxyz: not an extxyz frames file"),
                        ([empty], "empty: a folder without frames")):
        result = gmetad_select(*args, "-o", tmp_path / "out.extxyz")
        assert result.returncode == 1 and words in result.stderr, result.stderr
    assert not (tmp_path / "out.extxyz").exists()


def test_a_killed_rank_ends_the_run_and_resume_continues_every_walker(example_run, tmp_path):
    """SIGKILL of rank 1 mid-run: mpirun ends the job naming the rank, gmetad run
    stops everything; --resume continues both walkers from the newest common
    checkpoint, and the result is the uninterrupted run's."""
    from biasserver.walkerrun import child_pids
    example = walkers_example(tmp_path)
    output = tmp_path / "output"
    out = output / "gmetad"
    run = gmetad_run(example, output)
    try:
        wait_for(lambda: all(frames_count(out / f"walker-{r}" / "frames.extxyz") >= 23 for r in range(2)),
                 4 * DEADLINE, "both walkers past step 22")
        mpirun = next(p for p in child_pids(run.pid) if b"mpirun" in Path(f"/proc/{p}/cmdline").read_bytes())
        ranks = sorted(child_pids(mpirun))
        rank1 = next(p for p in ranks if f"walker 1 of 2, pid {p})" in (out / "server.log").read_text())
        os.kill(rank1, signal.SIGKILL)
        assert run.wait(timeout=DEADLINE) == 1
    finally:
        if run.poll() is None:
            kill_group(run)
    log = (out / "server.log").read_text()
    assert "rank 1" in log and "signal 9" in log, log[-2000:]
    assert "the server process exited" in (tmp_path / "output.run.log").read_text()

    resumed = gmetad_run(example, output, "--resume")
    assert resumed.wait(timeout=4 * DEADLINE) == 0, (tmp_path / "output.resume.log").read_text()[-3000:]
    assert "resumed at step 20" in (tmp_path / "output.resume.log").read_text()

    ref = example_run / "gmetad"
    got, want = hillsfile.read(out / "HILLS").records, hillsfile.read(ref / "HILLS").records
    assert [(r.step, r.id) for r in got] == [(r.step, r.id) for r in want]
    for a, b in zip(got, want):
        assert a.height == b.height
        np.testing.assert_allclose(a.centre, b.centre, rtol=0, atol=1e-10)
    for r in range(2):
        frames = read(out / f"walker-{r}" / "frames.extxyz", ":")
        expected = read(ref / f"walker-{r}" / "frames.extxyz", ":")
        assert [a.info["step"] for a in frames] == list(range(RUN_STEPS + 1))
        for a, b in zip(frames, expected, strict=True):
            np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-8)
            assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), rel=1e-12, abs=1e-10)
            assert a.info["bias_energy"] == pytest.approx(b.info["bias_energy"], rel=1e-9, abs=1e-12)
            assert a.info["n_hills"] == b.info["n_hills"]
        # the frames the killed run had recorded from step 20 on were set aside, not lost
        assert (out / f"walker-{r}" / "frames.after-20.extxyz").exists()


def test_runaway_guard_holds_back_one_walkers_hills(tmp_path):
    """bias.runaway_energy: a walker whose bias energy is above it at a deposition
    step deposits nothing there (logged); the other walker's hills still go in."""
    limit = 0.6 * HEIGHT
    run_walkers(tmp_path, 2, extra_bias=f"  runaway_energy: {limit}\n")
    records = hillsfile.read(tmp_path / "HILLS").records
    log = (tmp_path / "server.log").read_text()
    sf = SymmetryFunctions.default(["Pt", "H"], CUTOFF)
    frames = [{a.info["step"]: a for a in walker_frames(tmp_path, r)} for r in range(2)]
    held = 0
    for step in range(STRIDE, STEPS + 1, STRIDE):
        hills = [rec for rec in records if rec.step == step]
        expected = []
        for r in range(2):
            a = frames[r][step]
            if a.info["bias_energy"] > limit:
                held += 1
                assert f"walker {r} bead 0 step {step}: hills held back: bias energy" in log
            else:
                expected.append(sf.values(a)["H"][0])
        assert len(hills) == len(expected)
        for rec, g in zip(hills, expected):
            np.testing.assert_allclose(rec.centre, g, rtol=0, atol=1e-6)
    assert 0 < held < 2 * len(range(STRIDE, STEPS + 1, STRIDE)), "the limit held back nothing or everything"
    check_digests = digests(log)
    assert len(set(check_digests.values())) == 1 and len(check_digests) == 2


# --------------------------------------------------------------------------- #
# the exchange itself, under mpirun
# --------------------------------------------------------------------------- #

EXCHANGE_SCRIPT = '''
"""Rank 1's bias deposits higher hills than the others' (as a rank with another
build or configuration would): the exchange after it reports the difference."""
import json
import sys

import numpy as np
from ase.io import read
from mpi4py import MPI

from biasserver.bias import GMetaDBias
from biasserver.symmetry import SymmetryFunctions
from biasserver.walkers import WalkerError, WalkerGroup, hill_digest

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
group = WalkerGroup(comm)
# messages that outgrow the allgather's slot, then shrink: every rank gets all of them
for n in (10, 100_000, 300_000, 5):
    got = group.allgather(bytes([rank]) * (n + rank))
    assert [m for m in got] == [bytes([r]) * (n + r) for r in range(size)], n
atoms = read(sys.argv[1])
atoms.positions[-1] += np.random.default_rng(rank).normal(0, 0.1, 3)
bias = GMetaDBias(SymmetryFunctions.default(["Pt", "H"], 4.5), height=0.05 if rank != 1 else 0.06,
                  width=0.5, stride=5, species={"H": 1.0, "Pt": 0.0})
candidates = bias.hill_candidates(atoms)
group.share(bias, 5, candidates)
after = (bias.n_hills, hill_digest(bias))
try:
    group.share(bias, 10, candidates)
    error = None
except WalkerError as err:
    error = str(err)
results = comm.gather((after, error), root=0)
if rank == 0:
    print(json.dumps(results))
'''


def test_exchange_finds_hill_sets_that_differ(tmp_path):
    walkers = 3
    write(tmp_path / "slab.xyz", pt_h_slab())
    (tmp_path / "exchange.py").write_text(EXCHANGE_SCRIPT)
    env = mpi_environment(dict(os.environ, PYTHONPATH=str(REPO)))
    out = subprocess.run(mpi_command(walkers, [sys.executable, "exchange.py", "slab.xyz"]), cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=DEADLINE)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads(out.stdout)
    # every rank holds every walker's hill of step 5; rank 1's are higher
    assert [n for (n, _), _ in results] == [walkers] * walkers
    digests = [d for (_, d), _ in results]
    assert digests[0] == digests[2] != digests[1]
    # the next exchange says so, on every rank
    for _, error in results:
        assert error is not None and "before step 10 the hills of walker 1 differ from walker 0's" in error
