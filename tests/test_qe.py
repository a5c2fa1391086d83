"""Real DFT through the proxy: i-PI -> ``gmetad serve`` -> Quantum ESPRESSO (pw.x).

A few MD steps of the examples/qe-si8 system (8-atom diamond Si, LDA, shifted 2x2x2 k-mesh,
20 Ry) with pw.x connected to the proxy's unix socket (``pw.x --ipi NAME:UNIX``,
socket file /tmp/ipi_NAME). The recorded frames must be QE's unbiased energies,
forces and stresses in eV / eV/A / eV/A^3: the first one is compared with a
direct ``pw.x`` SCF of the same structure (run at the same time, in its own
folder), and i-PI's potential must be the reference plus the bias.

Quantum ESPRESSO is a requirement of this project (scripts/setup.sh installs it):
without pw.x the test fails, it does not skip.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.io import read

from ipi_helpers import ipi_socket_path, read_properties, start_ipi, stop_process, unique_socket_name

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "qe-si8"
PSEUDO = Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF")
STEPS = 3            # i-PI evaluates step 0 plus one force per step: STEPS + 1 frames
HARD_LIMIT = 240.0   # s for the whole chain; normally about 20 s
RY_PER_BOHR3 = units.Ry / units.Bohr ** 3


def require_qe() -> str:
    exe = shutil.which("pw.x")
    if exe is None or not PSEUDO.exists():
        pytest.fail("Quantum ESPRESSO is not installed (pw.x or /usr/share/espresso/pseudo/Si.pz-vbc.UPF "
                    "missing): run scripts/setup.sh, which installs quantum-espresso and "
                    "quantum-espresso-data with apt-get", pytrace=False)
    return exe


def parse_pw_scf(text: str):
    """Energy (eV), forces (eV/A) and stress (eV/A^3, ASE sign: negative under
    compression) of the last SCF in a pw.x output, converted with ASE's constants
    (the proxy converts QE's hartree with the same ones)."""
    assert "convergence has been achieved" in text, "pw.x SCF did not converge:\n" + text[-3000:]
    energy = float(re.findall(r"^!\s+total energy\s+=\s+(\S+)\s+Ry", text, re.M)[-1]) * units.Ry
    block = text.rsplit("Forces acting on atoms", 1)[1]
    forces = np.array(re.findall(r"atom\s+\d+\s+type\s+\d+\s+force\s+=\s+(\S+)\s+(\S+)\s+(\S+)", block)[:8],
                      dtype=float) * units.Ry / units.Bohr
    lines = text.rsplit("total   stress", 1)[1].splitlines()[1:4]
    sigma = np.array([line.split()[:3] for line in lines], dtype=float) * RY_PER_BOHR3
    return energy, forces, -sigma


def ipi_input_for_test(socket_name: str) -> str:
    """The example's input.xml with a unique socket and STEPS steps."""
    xml = (EXAMPLE / "input.xml").read_text()
    xml, n_addr = re.subn(r"<address>\s*gmetad-qe-si8\s*</address>", f"<address> {socket_name} </address>", xml)
    xml, n_steps = re.subn(r"<total_steps>\s*\d+\s*</total_steps>", f"<total_steps> {STEPS} </total_steps>", xml)
    assert n_addr == 1 and n_steps == 1, "examples/qe-si8/input.xml changed: update this test"
    return xml


def wait_for(path: str, proc: subprocess.Popen, deadline: float, what: str, log: Path) -> None:
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited ({proc.returncode}) before opening {path}:\n"
                                 + log.read_text(errors="replace")[-3000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not open {path} in time:\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.05)


def wait_exit(proc: subprocess.Popen, deadline: float, what: str, log: Path) -> int:
    try:
        return proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} still running after the {HARD_LIMIT:.0f} s limit; log tail:\n"
                             + log.read_text(errors="replace")[-3000:]) from None


def popen(cmd, cwd: Path, log: Path, env=None) -> subprocess.Popen:
    with open(log, "wb") as handle:
        return subprocess.Popen(cmd, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def test_qe_md_through_the_proxy_records_dft_frames(tmp_path):
    pw = require_qe()
    start = time.monotonic()
    deadline = start + HARD_LIMIT
    qe_env = dict(os.environ, OMP_NUM_THREADS="1")
    ipi_name = unique_socket_name("qe")
    ref_name = ipi_name + "-ref"
    md, scf = tmp_path / "md", tmp_path / "scf"
    for folder in (md, scf):
        folder.mkdir()
        shutil.copy(EXAMPLE / "init.xyz", folder / "init.xyz")
        # the example's QE input with a tighter SCF, so that both runs' forces agree to 1e-3 eV/A
        pwi_text, n_conv = re.subn(r"conv_thr\s*=\s*\S+", "conv_thr = 1.0d-10", (EXAMPLE / "si8.pwi").read_text())
        assert n_conv == 1, "examples/qe-si8/si8.pwi changed: update this test"
        (folder / "si8.pwi").write_text(pwi_text)
    (md / "input.xml").write_text(ipi_input_for_test(ipi_name))
    # the example's bias, but a hill every 2 steps so one acts within the run
    (md / "gmetad.yaml").write_text(f"""\
structure: init.xyz
symmetry:
  default: {{elements: [Si], cutoff: 6.0}}
bias: {{height: 0.002, width: 0.5, stride: 2, species: {{Si: 1.0}}, hills_file: HILLS, restart: false}}
server: {{mode: proxy, ipi: "unix:{ipi_name}", listen: "unix:{ref_name}", timeout: 120}}
recorder: {{path: frames.extxyz, fsync: false}}
""")
    # QE's input lists the atoms of init.xyz in the same order, in the same cell
    pwi, xyz = read(md / "si8.pwi", format="espresso-in"), read(md / "init.xyz")
    assert pwi.get_chemical_symbols() == xyz.get_chemical_symbols()
    np.testing.assert_allclose(pwi.positions, xyz.positions, atol=1e-8)
    np.testing.assert_allclose(pwi.cell.array, xyz.cell.array, atol=1e-8)
    assert re.search(r"nosym\s*=\s*\.true\.", (md / "si8.pwi").read_text(), re.I), "nosym=.true. is mandatory"

    procs = []
    try:
        # the direct SCF of the starting structure runs alongside the MD (its own folder)
        direct = popen([pw, "-in", "si8.pwi"], scf, scf / "pw.out", env=qe_env)
        procs.append(direct)
        ipi = start_ipi(md / "input.xml", ipi_name, cwd=md, timeout=60)
        procs.append(ipi)
        serve = popen([sys.executable, "-m", "biasserver.cli", "serve", "gmetad.yaml"], md, md / "serve.log")
        procs.append(serve)
        wait_for(ipi_socket_path(ref_name), serve, deadline, "gmetad serve", md / "serve.log")
        client = popen([pw, "--ipi", f"{ref_name}:UNIX", "-in", "si8.pwi"], md, md / "pw.out", env=qe_env)
        procs.append(client)

        # i-PI ends the run (and sends EXIT down the chain). A proxy or pw.x that dies
        # first would leave i-PI waiting forever: then fail after a short grace period.
        while ipi.poll() is None and time.monotonic() < deadline:
            dead = [(p, what, log) for p, what, log in ((serve, "gmetad serve", md / "serve.log"),
                                                        (client, "pw.x", md / "pw.out")) if p.poll() is not None]
            if dead:
                try:
                    ipi.wait(timeout=min(30.0, max(deadline - time.monotonic(), 0.1)))
                except subprocess.TimeoutExpired:
                    proc, what, log = dead[0]
                    raise AssertionError(f"{what} exited ({proc.returncode}) before i-PI finished:\n"
                                         + log.read_text(errors="replace")[-3000:]) from None
            time.sleep(0.1)
        assert wait_exit(ipi, deadline, "i-PI", ipi.log_path) == 0, ipi.log_path.read_text()[-3000:]
        assert wait_exit(serve, deadline, "gmetad serve", md / "serve.log") == 0, \
            (md / "serve.log").read_text()[-3000:]
        assert wait_exit(client, deadline, "pw.x (driver)", md / "pw.out") == 0, (md / "pw.out").read_text()[-3000:]
        assert wait_exit(direct, deadline, "pw.x (scf)", scf / "pw.out") == 0, (scf / "pw.out").read_text()[-3000:]
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        for name in (ipi_name, ref_name):
            with contextlib.suppress(OSError):
                os.unlink(ipi_socket_path(name))
    elapsed = time.monotonic() - start

    served = (md / "serve.log").read_text()
    assert f"served {STEPS + 1} steps" in served and "dropping force client" not in served, served[-3000:]
    driver_log = (md / "pw.out").read_text()
    assert "DRIVER MODE" in driver_log and "UNIX socket" in driver_log

    frames = read(md / "frames.extxyz", ":")
    assert [f.info["step"] for f in frames] == list(range(STEPS + 1))
    for f in frames:
        assert f.get_chemical_symbols() == ["Si"] * 8
        e = f.get_potential_energy()
        assert -108.5 < e / 8 < -107.0, \
            f"step {f.info['step']}: {e} eV is not LDA Si8 with a 2x2x2 k-mesh (about -861.6 eV)"
        assert np.abs(f.get_forces()).max() < 5.0
        stress = f.get_stress(voigt=False)
        pressure_gpa = -np.trace(stress) / 3 / units.GPa
        assert -10.0 < pressure_gpa < 10.0 and pressure_gpa != 0.0, pressure_gpa  # near equilibrium
    # the MD moved the atoms, and consecutive DFT energies differ
    assert np.abs(frames[-1].positions - frames[0].positions).max() > 1e-3
    assert len({round(f.get_potential_energy(), 6) for f in frames}) == len(frames)

    # frame 0 (i-PI's starting structure) against the direct SCF of the same positions
    first = frames[0]
    np.testing.assert_allclose(first.positions, xyz.positions, atol=1e-6)
    energy, forces, stress = parse_pw_scf((scf / "pw.out").read_text())
    assert abs(first.get_potential_energy() - energy) < 1e-4, (first.get_potential_energy(), energy)
    np.testing.assert_allclose(first.get_forces(), forces, atol=1e-3)
    np.testing.assert_allclose(first.get_stress(voigt=False), stress, atol=1e-5)  # 1e-5 eV/A^3 = 1.6 MPa

    # i-PI integrated reference + bias: its potential is the recorded energy plus bias_energy
    props = read_properties(md / "md.out")
    assert len(props["potential"]) == STEPS + 1
    expected = np.array([f.get_potential_energy() + f.info["bias_energy"] for f in frames])
    np.testing.assert_allclose(props["potential"], expected, atol=1e-3)
    assert frames[0].info["bias_energy"] == 0.0 and frames[-1].info["bias_energy"] > 0.0, \
        [f.info["bias_energy"] for f in frames]
    print(f"QE MD through the proxy: {STEPS} steps in {elapsed:.1f} s")
