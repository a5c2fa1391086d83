"""Restarts that continue the uninterrupted run exactly, with real i-PI, EMT and processes.

1. Setting aside what was recorded after a step: the frames and hills files are
   split byte for byte into the kept file and a side file ``*.after-<step>``.
2. The deposition-step window: the server crashes (test hook
   ``GMETAD_TEST_CRASH_AT``, os._exit at a named point) after a step's hill is
   written but before its frame, or after its frame but before i-PI has the
   forces; i-PI (``consolidate_messages false``) re-queues the step, a new server
   redoes it. Frames, hills, the energies i-PI got and its trajectory equal an
   uninterrupted run's (the test_server.py system: Pt(111) 2x2x3 + H, EMT).
3. The whole job (``gmetad run``: i-PI, server, driver) SIGKILLed at a random
   step and continued with ``gmetad run --resume`` from i-PI's newest
   checkpoint: the same frames and hills as a run of the same length without
   the kill (the Pt(111)-H example, EMT).

Tolerances. A server restart (2) re-evaluates the same positions (i-PI
re-sends them bit for bit) with a bias rebuilt bit-identically from the hills
file, so the run is the uninterrupted one up to the EMT neighbour-list
round-off a fresh driver brings (the test_server.py tolerances). A whole-job
restart (3) continues from i-PI's checkpoint, written by ``gmetad run`` with
floatformat %.16e (17 significant digits): positions and momenta round-trip
except for the last bit of i-PI's unit conversion (seen: 2e-19 A), which
chaotic MD amplifies over the remaining steps (seen after 190 steps: hill
centres 3e-14 apart, bias energies 1e-14 eV; the frames' positions, printed
with 8 decimals, identical). Compared on the scale of each quantity: 1e-9 of
the largest |x| (positions, centres, energies). i-PI's default %16.8e would
start the restart ~3e-8 A off, beyond that tolerance for positions.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from biasserver.checkpoint import CheckpointError, newest, restart_step
from biasserver.recorder import FrameRecorder, set_aside as set_aside_frames
from biasserver.server import CRASH_ENV, CRASH_EXIT_CODE
from biasserver.walkerrun import child_pids

from test_server import (DEADLINE, STEPS, STRIDE, Processes, assert_same_hills, assert_same_run, finish,
                         frames_of, hill_records, ipi_input, kill_group, read_extras, read_properties,
                         run_proxy_chain, unique_socket_name, write_config)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pt111-h"

#: the whole-job test: MD steps, i-PI checkpoint stride, seed of the kill step
JOB_STEPS = 240
JOB_CHECKPOINT = 25
KILL_SEED = int(os.environ.get("GMETAD_RESTART_SEED", "20261202"))


# --------------------------------------------------------------------------- #
# 1. setting aside: byte-for-byte split, side files never overwritten
# --------------------------------------------------------------------------- #


def _frames_file(path: Path, steps) -> list[bytes]:
    """Write frames of the given steps; returns each frame's bytes."""
    from ase.build import bulk
    atoms = bulk("Cu", "fcc", 3.6, cubic=True)
    recorder = FrameRecorder(path, atoms.get_chemical_symbols(), atoms.pbc, fsync=False)
    sizes = []
    for step in steps:
        before = path.stat().st_size
        recorder.record(atoms.positions + 0.01 * step, atoms.cell.array, -1.0 * step, np.full((4, 3), 0.1 * step),
                        None, bias_energy=0.001 * step, step=step, walker=0, n_hills=step // 3)
        sizes.append(path.stat().st_size - before)
    recorder.close()
    data = path.read_bytes()
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def test_frames_after_a_step_go_to_a_side_file(tmp_path):
    path = tmp_path / "frames.extxyz"
    chunks = _frames_file(path, range(10))
    # an interrupted frame at the end (a kill in the middle of a write)
    with open(path, "ab") as handle:
        handle.write(chunks[0][: len(chunks[0]) // 2])
    side = set_aside_frames(path, 6)
    assert side == str(tmp_path / "frames.after-6.extxyz")
    assert path.read_bytes() == b"".join(chunks[:6])
    # the interrupted frame is cut off, as when a recorder opens the file
    assert Path(side).read_bytes() == b"".join(chunks[6:])
    assert [a.info["step"] for a in read(side, ":")] == [6, 7, 8, 9]
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p], os.listdir(tmp_path)
    # nothing later: the file is left alone, no side file
    assert set_aside_frames(path, 6) is None and path.read_bytes() == b"".join(chunks[:6])
    # a second set-aside of the same step never overwrites the first side file
    with open(path, "ab") as handle:
        handle.write(chunks[6])
    assert set_aside_frames(path, 6) == str(tmp_path / "frames.after-6.1.extxyz")
    assert (tmp_path / "frames.after-6.1.extxyz").read_bytes() == chunks[6]
    assert path.read_bytes() == b"".join(chunks[:6])
    # the recorder appends after the frames kept
    recorder = FrameRecorder(path, ["Cu"] * 4, fsync=False)
    assert recorder.set_aside(3) == str(tmp_path / "frames.after-3.extxyz") and recorder.n_frames_on_disk == 3
    recorder.record(np.zeros((4, 3)), np.eye(3) * 3.6, 0.0, np.zeros((4, 3)), step=3)
    recorder.close()
    assert [a.info["step"] for a in read(path, ":")] == [0, 1, 2, 3]


def test_hills_after_a_step_go_to_a_side_file(tmp_path):
    from biasserver.bias import GMetaDBias
    from biasserver.symmetry import SymmetryFunctions
    from ase.build import bulk
    path = tmp_path / "HILLS"
    sf = SymmetryFunctions.default(["Si"], 4.0)
    bias = GMetaDBias(sf, height=0.01, width=0.3, stride=2, species={"Si": 1.0}, compression=0.5,
                      hills_file=path)
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.05, seed=3)
    rng = np.random.default_rng(4)
    states = {}
    for step in range(2, 13, 2):
        atoms.positions += rng.normal(0, 0.02, atoms.positions.shape)
        states[step] = ({e: (h.centres.copy(), h.heights.copy()) for e, h in bias.hills.items()}, atoms.copy())
        bias.step_count = step
        bias.deposit(atoms)
    records = hill_records(path)
    merges = len(records) - bias.n_hills
    assert merges > 0, "the test needs merged hills (compression) to check that earlier versions come back"
    text = path.read_bytes()
    # undo the depositions of steps >= 8: the hills are those before step 8, earlier versions of merges included
    side = bias.set_aside_from(8)
    assert side == f"{path}.after-8"
    kept = [r for r in records if r.step < 8]
    assert [(r.id, r.step) for r in hill_records(path)] == [(r.id, r.step) for r in kept]
    assert [(r.id, r.step) for r in hill_records(side)] == [(r.id, r.step) for r in records if r.step >= 8]
    header = b"".join(line for line in text.splitlines(keepends=True) if line.startswith(b"#"))
    assert path.read_bytes().startswith(header) and Path(side).read_bytes().startswith(header)
    assert len(path.read_bytes()) + len(Path(side).read_bytes()) == len(text) + len(header)
    centres, heights = states[8][0]["Si"]
    np.testing.assert_array_equal(bias.hills["Si"].centres, centres)
    np.testing.assert_array_equal(bias.hills["Si"].heights, heights)
    assert bias.last_deposition() == 6 and bias.set_aside_from(8) is None
    # depositing again appends after the hills kept
    bias.step_count = 8
    bias.deposit(states[8][1])
    assert [r.step for r in hill_records(path)][-1] == 8
    bias.close()


def test_restart_step_of_ipi_files(tmp_path):
    good = tmp_path / "chk"
    good.write_text("<!-- info -->\n<simulation verbosity='low'>\n <step>40</step>\n <total_steps>90</total_steps>\n"
                    "</simulation>\n")
    assert restart_step(good) == 40
    fresh = tmp_path / "input.xml"
    fresh.write_text("<simulation><total_steps> 90 </total_steps></simulation>")
    assert restart_step(fresh) == 0
    cut = tmp_path / "md.checkpoint_3"
    cut.write_text(good.read_text()[:40])
    with pytest.raises(CheckpointError, match="md.checkpoint_3: not a complete i-PI XML file"):
        restart_step(cut)
    (tmp_path / "RESTART").write_text(good.read_text().replace("40", "30"))
    fresh.write_text("<simulation><output prefix='md'><checkpoint filename='checkpoint' stride='5'/></output>"
                     "</simulation>")
    # the highest complete one; the truncated md.checkpoint_3 is skipped
    (tmp_path / "md.checkpoint_1").write_text(good.read_text().replace("40", "35"))
    assert newest(tmp_path, fresh) == (str(tmp_path / "md.checkpoint_1"), 35)


def test_ipi_restart_key_is_checked_before_anything_starts(tmp_path):
    from ase import Atom
    from ase.build import fcc111
    from ase.io import write
    from biasserver.cli import build_server
    from biasserver.config import ConfigError, load
    slab = fcc111("Pt", (2, 2, 2), vacuum=5.0)
    slab.append(Atom("H", slab.positions[-1] + (0.0, 0.0, 1.5)))
    slab.info.clear()
    write(tmp_path / "template.xyz", slab)
    config = write_config(tmp_path, "x", "y", restart=True)
    text = config.read_text()
    config.write_text(text.replace("  timeout:", "  ipi_restart: RESTART\n  timeout:"))
    with pytest.raises(ConfigError, match=r"gmetad.yaml: 'server.ipi_restart': file .*RESTART not found"):
        load(config)
    (tmp_path / "RESTART").write_text("<simulation><step>12</step>")   # cut short by a kill
    with pytest.raises(CheckpointError, match=r"RESTART: not a complete i-PI XML file"):
        build_server(load(config))
    assert not (tmp_path / "frames.extxyz").exists() and not (tmp_path / "HILLS").exists()
    config.write_text(text.replace("  timeout:", "  ipi_restart: RESTART\n  timeout:")
                      .replace("restart: true", "restart: false"))
    with pytest.raises(ConfigError, match=r"'server.ipi_restart' continues a run: it needs 'bias.restart: true'"):
        load(config)


# --------------------------------------------------------------------------- #
# 2. the deposition-step window: a server crashed inside a step redoes it exactly
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the test_server.py proxy chain without any crash."""
    return run_proxy_chain(tmp_path_factory.mktemp("uninterrupted"))


@pytest.mark.parametrize("point", ["after-hill", "after-frame"])
def test_server_crashed_inside_a_deposition_step_redoes_it_exactly(uninterrupted, tmp_path, point):
    crash_step = 2 * STRIDE
    name, ref = unique_socket_name("win"), unique_socket_name("winref")
    # consolidate_messages false: i-PI re-queues the step of a client that dies
    xml, _ = ipi_input(tmp_path, name, consolidate=False)
    write_config(tmp_path, name, ref, restart=True)
    procs = Processes(tmp_path)
    procs.sockets = (name, ref)
    try:
        ipi = procs.ipi(xml, name)
        procs.env[CRASH_ENV] = f"{point}:{crash_step}"
        server1 = procs.serve("server1.log")
        del procs.env[CRASH_ENV]
        driver1 = procs.driver(f"unix:{ref}", "driver1.log")
        assert server1.wait(timeout=DEADLINE) == CRASH_EXIT_CODE, procs.tails()
        kill_group(driver1)
        # on disk: the hill of the crash step; its frame only after the frame was written
        assert [r.step for r in hill_records(tmp_path / "HILLS")][-1] == crash_step
        recorded = [a.info["step"] for a in frames_of(tmp_path)]
        assert recorded == list(range(crash_step + (point == "after-frame"))), recorded
        assert ipi.poll() is None, "i-PI died with its client:\n" + procs.tails()

        server2 = procs.serve("server2.log")
        driver2 = procs.driver(f"unix:{ref}", "driver2.log")
        finish(procs, ipi, (server2, driver2))
    finally:
        procs.stop_all()

    assert [a.info["step"] for a in frames_of(tmp_path)] == list(range(STEPS + 1))
    reference_hills = hill_records(uninterrupted / "HILLS")
    assert_same_hills(hill_records(tmp_path / "HILLS"), reference_hills)
    assert [r.id for r in hill_records(tmp_path / "HILLS")] == [r.id for r in reference_hills]
    # frames (bias_energy included), i-PI's trajectory and the energies it printed
    assert_same_run(tmp_path, uninterrupted)
    # the bias energy i-PI got for every step, the redone one included (JSON extras)
    got = [x["bias_energy"] for x in read_extras(tmp_path)]
    expected = [x["bias_energy"] for x in read_extras(uninterrupted)]
    assert len(got) == len(expected) == STEPS + 1
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * max(np.abs(expected).max(), 1e-3),
                               err_msg=f"bias energies i-PI got, crash {point}:{crash_step}")
    log2 = (tmp_path / "server2.log").read_text()
    assert f"step {crash_step} is redone" in log2, log2
    # the hill deposited before the crash is kept in the side file (and was deposited again)
    assert [r.step for r in hill_records(tmp_path / f"HILLS.after-{crash_step}")] == [crash_step]


# --------------------------------------------------------------------------- #
# 3. the whole job killed at a random step, then gmetad run --resume
# --------------------------------------------------------------------------- #


def gmetad_run(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "biasserver.cli", "run", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def _example(folder: Path) -> Path:
    """The Pt(111)-H example, biased run only, no analysis, frequent checkpoints."""
    folder.mkdir()
    for name in ("init.xyz", "input.xml"):
        (folder / name).write_bytes((EXAMPLE / name).read_bytes())
    config = (EXAMPLE / "gmetad.yaml").read_text()
    config = config.replace("plain: true", "plain: false").replace("analysis: python {dir}/analyse.py", "")
    config = config.replace("steps: 4000", f"steps: {JOB_STEPS}\n  checkpoint_stride: {JOB_CHECKPOINT}")
    assert f"checkpoint_stride: {JOB_CHECKPOINT}" in config and "plain: false" in config
    (folder / "gmetad.yaml").write_text(config)
    return folder


def _recorded_steps(path: Path) -> int:
    """Number of complete frames in a frames file being written."""
    from biasserver.recorder import _frame_ends
    try:
        return len(_frame_ends(path.read_bytes()))
    except FileNotFoundError:
        return 0


def _kill_job_at(example: Path, output: Path, kill_at: int) -> int:
    """Start ``gmetad run``, SIGKILL it and the process groups of i-PI, the server and
    the driver once ``kill_at`` frames are recorded; returns the frames recorded then."""
    frames = output / "gmetad" / "frames.extxyz"
    runner = subprocess.Popen([sys.executable, "-m", "biasserver.cli", "run", str(example), "--output", str(output)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + DEADLINE
        while _recorded_steps(frames) < kill_at:
            assert runner.poll() is None, runner.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"the run did not record {kill_at} frames in {DEADLINE} s"
            time.sleep(0.005)
        children = child_pids(runner.pid)
        os.killpg(runner.pid, signal.SIGKILL)     # the runner first: it must not stop the others cleanly
        for pid in children:
            os.killpg(pid, signal.SIGKILL)     # each was started in a session of its own
        runner.wait(timeout=10)
        assert len(children) == 3, f"expected i-PI, the server and the driver, found pids {children}"
        for pid in children:
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
                time.sleep(0.01)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    return _recorded_steps(frames)


def test_whole_job_killed_at_a_random_step_resumes_as_the_uninterrupted_run(tmp_path):
    kill_at = random.Random(KILL_SEED).randint(JOB_CHECKPOINT + 5, JOB_STEPS - 20)
    where = f"(kill seed {KILL_SEED}: killed at {kill_at} recorded frames"
    example = _example(tmp_path / "example")
    reference = gmetad_run(str(example), "--output", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]

    recorded = _kill_job_at(example, tmp_path / "killed", kill_at)
    where += f", {recorded} on disk after the kill)"
    out = tmp_path / "killed" / "gmetad"
    found = newest(out, out / "input.xml")
    assert found is not None, f"no i-PI checkpoint {where}: {sorted(os.listdir(out))}"
    restart_from, step = found
    assert 0 < step <= recorded and step % JOB_CHECKPOINT == 0, (restart_from, step, where)

    resumed = gmetad_run(str(example), "--output", str(tmp_path / "killed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:] + where
    assert f"resumed at step {step} from {os.path.basename(restart_from)}" in resumed.stderr, resumed.stderr + where
    log = (out / "server.log").read_text()
    assert f"restart at i-PI's step {step}" in log, log[-3000:] + where

    ref = tmp_path / "reference" / "gmetad"
    frames, expected = read(out / "frames.extxyz", ":"), read(ref / "frames.extxyz", ":")
    steps = [a.info["step"] for a in frames]
    assert steps == list(range(JOB_STEPS + 1)), f"steps not contiguous {where}: {steps}"
    # what the killed job recorded after the checkpoint is kept aside, and is the reference's
    aside = read(out / f"frames.after-{step}.extxyz", ":")
    assert [a.info["step"] for a in aside] == list(range(step, recorded)), where
    for a in aside:
        np.testing.assert_array_equal(a.positions, expected[a.info["step"]].positions, err_msg=where)
    scale = max(np.abs(a.positions).max() for a in expected)
    for a, b in zip(frames, expected):
        s = a.info["step"]
        np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-9 * scale, err_msg=f"step {s} {where}")
        assert a.info["n_hills"] == b.info["n_hills"], f"step {s} {where}"
        for key, value, target in (("energy", a.get_potential_energy(), b.get_potential_energy()),
                                   ("bias_energy", a.info["bias_energy"], b.info["bias_energy"])):
            assert value == pytest.approx(target, rel=0, abs=1e-9 * max(abs(target), 1.0)), \
                f"{key} at step {s} {where}"
    hills, expected_hills = hill_records(out / "HILLS"), hill_records(ref / "HILLS")
    assert [(r.id, r.step, r.element) for r in hills] == [(r.id, r.step, r.element) for r in expected_hills], where
    assert [r.step for r in hills] == list(range(5, JOB_STEPS + 1, 5)), where   # the example's stride
    centre_scale = max(np.abs(r.centre).max() for r in expected_hills)
    for r, q in zip(hills, expected_hills):
        np.testing.assert_allclose(r.centre, q.centre, rtol=0, atol=1e-9 * centre_scale, err_msg=f"{r.step} {where}")
        assert r.height == pytest.approx(q.height, rel=1e-12), where
    # i-PI's own record: the restarted i-PI appends its properties from step + 1 on
    # to what the killed one had flushed (no header if that was nothing); the
    # columns are those of the reference's header
    full = read_properties(ref / "md.out")
    rows = np.loadtxt(out / "md.out", comments="#", ndmin=2)
    after = full["step"] > step
    resumed = rows[-after.sum():]
    np.testing.assert_array_equal(resumed[:, 0], full["step"][after], err_msg=where)
    potential = list(full).index("potential")
    np.testing.assert_allclose(resumed[:, potential], full["potential"][after], rtol=0,
                               atol=1e-9 * np.abs(full["potential"]).max(), err_msg=where)

    # resuming a finished run does nothing; there is nothing to resume without an output folder
    again = gmetad_run(str(example), "--output", str(tmp_path / "killed"), "--resume")
    assert again.returncode == 0 and f"had finished ({JOB_STEPS} steps)" in again.stderr, again.stderr
    assert len(read(out / "frames.extxyz", ":")) == JOB_STEPS + 1
    missing = gmetad_run(str(example), "--output", str(tmp_path / "nothing"), "--resume")
    assert missing.returncode == 2 and "no earlier output" in missing.stderr, missing.stderr


def test_total_steps_of_ipi_files_default_to_ipis(tmp_path):
    # i-PI leaves total_steps out of the restart files it writes when it has its
    # default (1000); a resumed run of 1000 steps must read it as i-PI does
    from biasserver.runner import IPI_DEFAULT_TOTAL_STEPS, ipi_total_steps
    with_steps, without = tmp_path / "input.xml", tmp_path / "RESTART"
    with_steps.write_text("<simulation><total_steps> 240 </total_steps></simulation>")
    without.write_text("<simulation><step>1000</step></simulation>")
    assert ipi_total_steps(str(with_steps)) == 240
    assert ipi_total_steps(str(without)) == IPI_DEFAULT_TOTAL_STEPS == 1000
