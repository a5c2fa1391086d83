"""The training-set recorder: frames readable by ASE, crash-safe appends."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from biasserver.recorder import FrameRecorder


def test_frames_round_trip_through_ase(tmp_path):
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    rng = np.random.default_rng(0)
    path = tmp_path / "frames.extxyz"
    expected = []
    with FrameRecorder(path, atoms.get_chemical_symbols(), atoms.pbc) as rec:
        for step in range(5):
            pos = atoms.positions + rng.normal(scale=0.05, size=(8, 3))
            forces = rng.normal(size=(8, 3))
            virial = rng.normal(size=(3, 3))
            virial = virial + virial.T
            rec.record(pos, atoms.cell.array, -40.0 - step, forces, virial,
                       bias_energy=0.01 * step, step=step, walker=0, n_hills=step)
            expected.append((pos, forces, virial))
    frames = read(path, ":")
    assert len(frames) == 5
    for step, (frame, (pos, forces, virial)) in enumerate(zip(frames, expected)):
        assert frame.get_potential_energy() == pytest.approx(-40.0 - step)
        np.testing.assert_allclose(frame.positions, pos, atol=1e-7)
        np.testing.assert_allclose(frame.get_forces(), forces, atol=1e-7)
        np.testing.assert_allclose(frame.get_stress(voigt=False), -virial / atoms.get_volume(), atol=1e-9)
        assert frame.info["step"] == step and frame.info["walker"] == 0
        assert frame.info["bias_energy"] == pytest.approx(0.01 * step)


def test_no_stress_without_virial_or_for_slabs(tmp_path):
    atoms = bulk("Cu", "fcc", 3.6, cubic=True)
    path = tmp_path / "f.extxyz"
    with FrameRecorder(path, atoms.get_chemical_symbols(), (True, True, False)) as rec:
        rec.record(atoms.positions, atoms.cell.array, -1.0, np.zeros((4, 3)), np.eye(3), step=0)
        rec.record(atoms.positions, atoms.cell.array, -1.0, np.zeros((4, 3)), None, step=1)
    for frame in read(path, ":"):
        assert "stress" not in frame.calc.results


def test_partial_frame_from_a_crash_is_cut(tmp_path):
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    path = tmp_path / "frames.extxyz"
    with FrameRecorder(path, atoms.get_chemical_symbols()) as rec:
        for step in range(3):
            rec.record(atoms.positions, atoms.cell.array, -1.0, np.zeros((8, 3)), step=step)
    whole = path.read_bytes()
    path.write_bytes(whole + whole[: len(whole) // 5])     # a frame cut in the middle
    rec = FrameRecorder(path, atoms.get_chemical_symbols())
    assert rec.n_frames_on_disk == 3
    assert path.read_bytes() == whole
    rec.record(atoms.positions, atoms.cell.array, -2.0, np.zeros((8, 3)), step=3)
    rec.close()
    assert [f.info["step"] for f in read(path, ":")] == [0, 1, 2, 3]


def test_killed_writer_leaves_whole_frames(tmp_path):
    """SIGKILL a process that records as fast as it can: the file holds whole frames only."""
    path = tmp_path / "frames.extxyz"
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from ase.build import bulk
        from biasserver.recorder import FrameRecorder
        atoms = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
        rec = FrameRecorder({str(path)!r}, atoms.get_chemical_symbols(), fsync=False)
        step = 0
        while True:
            rec.record(atoms.positions, atoms.cell.array, -1.0, np.ones((64, 3)), step=step)
            step += 1
            if step == 20:
                print("recording", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "recording"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rec = FrameRecorder(path, ["Si"] * 64)      # repairs a cut frame, if any
    rec.close()
    frames = read(path, ":")
    assert len(frames) >= 20
    assert [f.info["step"] for f in frames] == list(range(len(frames)))
