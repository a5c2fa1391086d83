"""The examples and the command line, end to end: gmetad run, hills, select."""
import os
import subprocess
import sys

import numpy as np
from ase.io import read

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gmetad(*args, timeout=240, cwd=None, env=None):
    """Run the gmetad command line; fail (not hang) after ``timeout`` seconds."""
    return subprocess.run([sys.executable, "-m", "biasserver.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


def without_environment_on_path() -> dict:
    """The environment of ``venv/bin/gmetad`` started without activating the venv:
    PATH holds only the system's folders, not this interpreter's."""
    return dict(os.environ, PATH="/usr/bin:/bin")


def test_run_pt111_h_both_variants_and_analysis(tmp_path):
    out = tmp_path / "out"
    # i-PI, the driver and the analysis come from this interpreter's environment, not PATH
    result = gmetad("run", os.path.join(ROOT, "examples", "pt111-h"), "--steps", "40", "--output", str(out),
                    env=without_environment_on_path())
    assert result.returncode == 0, result.stderr[-3000:]
    for variant in ("gmetad", "plain"):
        frames = read(out / variant / "frames.extxyz", ":")
        assert [f.info["step"] for f in frames] == list(range(41))
    gm = read(out / "gmetad" / "frames.extxyz", ":")
    # stride 5: deposits at steps 5, 10, ..., 40 (n_hills counts after the step)
    assert gm[-1].info["n_hills"] == 8 and gm[5].info["n_hills"] == 1 and gm[4].info["n_hills"] == 0
    plain = read(out / "plain" / "frames.extxyz", ":")
    assert all(f.info["n_hills"] == 0 for f in plain)
    # both runs start from the same state with the same seed: identical until the first hill acts
    np.testing.assert_allclose(gm[4].positions, plain[4].positions, atol=1e-6)
    summary = (out / "sites.txt").read_text()
    assert "G-metaD" in summary and "plain MD" in summary
    assert (out / "sites.png").stat().st_size > 1000
    hills = gmetad("hills", str(out / "gmetad" / "HILLS"))
    assert hills.returncode == 0 and "H: 8 hills in D = 70" in hills.stdout


def pt111_h_copy(folder, *replacements):
    """A copy of examples/pt111-h in ``folder`` with (old, new) text replaced in its YAML."""
    folder.mkdir()
    src = os.path.join(ROOT, "examples", "pt111-h")
    for name in ("init.xyz", "input.xml"):
        (folder / name).write_bytes(open(os.path.join(src, name), "rb").read())
    config = open(os.path.join(src, "gmetad.yaml")).read()
    for old, new in replacements:
        assert old in config
        config = config.replace(old, new)
    (folder / "gmetad.yaml").write_text(config)
    return folder


def test_run_reports_a_dead_driver(tmp_path):
    example = pt111_h_copy(tmp_path / "broken", ("gmetad driver emt", "gmetad driver no-such-engine"),
                           ("plain: true", "plain: false"))
    result = gmetad("run", str(example), "--steps", "10", timeout=120)
    assert result.returncode == 1
    assert "the driver process exited with code" in result.stderr
    assert "stopped i-PI, the server and the driver" in result.stderr
    assert "no-such-engine" in result.stderr
    leftover = subprocess.run(["pgrep", "-f", str(example)], capture_output=True, text=True).stdout
    assert leftover.strip() == ""


def test_run_checks_the_configuration_before_starting_anything(tmp_path):
    example = pt111_h_copy(tmp_path / "bad-wall", ("atoms: H,", "atoms: [36, 99],"))
    result = gmetad("run", str(example), "--steps", "10", timeout=60)
    assert result.returncode == 1
    assert "gmetad.yaml" in result.stderr and "'bias.walls[0]'" in result.stderr and "[36, 99]" in result.stderr
    assert not (example / "output").exists()   # neither i-PI nor the server nor the driver started


def test_select_by_stride_and_fps(tmp_path):
    from ase.build import bulk
    from ase.io import write
    frames = []
    for k in range(12):
        atoms = bulk("Si", "diamond", 5.43, cubic=True)
        atoms.rattle(0.02 + 0.02 * (k % 4), seed=k)
        frames.append(atoms)
    frames[7].positions[0] += (0.6, 0.3, 0.0)          # one unusual environment
    write(tmp_path / "frames.extxyz", frames)
    out = tmp_path / "picked.extxyz"
    result = gmetad("select", str(tmp_path / "frames.extxyz"), "--stride", "1", "--fps", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    picked = read(out, ":")
    assert len(picked) == 3
    assert any(np.allclose(p.positions, frames[7].positions) for p in picked)
    result = gmetad("select", str(tmp_path / "frames.extxyz"), "--stride", "4", "-o", str(out))
    assert len(read(out, ":")) == 3


def test_run_stops_everything_on_ctrl_c(tmp_path):
    import signal
    import time
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "biasserver.cli", "run",
                             os.path.join(ROOT, "examples", "pt111-h"), "--steps", "100000",
                             "--only", "gmetad", "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # Ctrl-C reaches a foreground process; one started from a shell's
                            # background job (a CI script's `&`) inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        frames = out / "gmetad" / "frames.extxyz"
        seen = 0   # frames on disk when the interruption is sent (one write per frame)
        while seen < 5:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run did not start recording within 120 s"
            time.sleep(0.2)
            seen = frames.read_bytes().count(b"Lattice=") if frames.exists() else 0
        proc.send_signal(signal.SIGINT)
        # the stop took 1-11 s here (a process that outlives SIGTERM gets SIGKILL after the
        # runner's 10 s grace); 60 s was once not enough under a load average of 8
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "interrupted; stopping i-PI, the server and the driver" in stderr
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout
    assert leftover.strip() == ""
    # what was recorded before the interruption is intact
    recorded = read(out / "gmetad" / "frames.extxyz", ":")
    assert len(recorded) >= seen
    assert [f.info["step"] for f in recorded] == list(range(len(recorded)))
