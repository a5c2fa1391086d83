"""End-to-end tests of the bias server with real components.

Every test drives a real i-PI 3.3 MD run of a small Pt(111) slab (2x2x3, EMT)
with one H atom, the only biased atom (hills of 0.05 eV every 3 steps, adaptive
width 0.3 A, symmetry functions with a 4.5 A cutoff), through real sockets:

    i-PI  <-  gmetad serve (proxy)  <-  gmetad driver emt        (proxy mode)
    i-PI  <-  gmetad driver emt,  i-PI <- gmetad serve --mode bias  (bias mode)

Servers and drivers run as processes (``python -m biasserver.cli``) in their
own sessions, except the malformed-message test, which runs BiasServer in a
thread to capture its log. Every process is stopped in ``finally`` and every
wait has a deadline, so a hang fails the test instead of blocking it.

i-PI 3.3.1 behaviour these tests rely on (checked here):
* with ``consolidate_messages false`` a client that dies in the middle of a step
  is dropped ("died or got unresponsive") and the step is re-queued with the
  same positions for the next client that connects; with the default
  (consolidated) mode i-PI's poll thread dies with ConnectionResetError and the
  run hangs, so the server-restart test uses ``consolidate_messages false``.
* i-PI's ``format='ase'`` trajectory writes positions in angstrom with 8
  decimals; ``extras`` trajectories hold the JSON extras of each step.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import re
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase import units as ase_units
from ase.calculators.emt import EMT
from ase.io import read, write

from biasserver import hillsfile
from biasserver.bias import GMetaDBias
from biasserver.protocol import (ClientRole, ForceResult, Positions, ServerRole, connect, encode_forceready,
                                 ipi_unix_path, listen)
from biasserver.recorder import FrameRecorder
from biasserver.server import BiasServer
from biasserver.symmetry import SymmetryFunctions
from drivers.client import run_driver

from ipi_helpers import (CUTOFF, DEADLINE, DEFAULT_PROPERTIES, HEIGHT, REPO, SLEEPY_MODULE, STEPS, STRIDE,
                         WIDTH, Processes, finish, kill_group, pt_h_slab, read_properties, unique_socket_name,
                         wait_for, wait_ipi, write_config, write_ipi_input)

PROPERTIES = DEFAULT_PROPERTIES + ("ensemble_bias{electronvolt}",)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def ipi_input(workdir: Path, name: str, steps: int = STEPS, consolidate: bool = True,
              extra_ffsockets: str = "", extra_forces: str = "", extra_ensemble: str = ""):
    """i-PI input for the Pt-H slab (NVE, 300 K velocities, seed fixed, 1 fs)
    with positions written every step in angstrom at 8 decimals (format 'ase')
    and the JSON extras of every step. Also writes the template structure
    ``template.xyz`` for servers and drivers. Returns (xml path, frame)."""
    xml, frame = write_ipi_input(workdir, pt_h_slab(), name, steps=steps, trajectory_stride=1,
                                 consolidate_messages=consolidate, properties=PROPERTIES,
                                 extra_ffsockets=extra_ffsockets, extra_forces=extra_forces,
                                 extra_ensemble=extra_ensemble, total_time_s=3 * DEADLINE)
    text = xml.read_text()
    old = ("<trajectory filename='pos' stride='1' format='xyz' cell_units='angstrom'> "
           "positions{angstrom} </trajectory>")
    assert old in text
    text = text.replace(old, "<trajectory filename='pos' stride='1' format='ase'> positions </trajectory>\n"
                             "    <trajectory filename='extras' stride='1'> extras </trajectory>")
    xml.write_text(text)
    frame.info.clear()
    write(workdir / "template.xyz", frame, format="extxyz")
    return xml, frame


def read_positions(workdir: Path) -> np.ndarray:
    return np.array([a.positions for a in read(workdir / "sim.pos_0.extxyz", ":")])


def read_extras(workdir: Path) -> list[dict]:
    """The JSON extras i-PI received at every step (its extras trajectory)."""
    out = []
    for line in (workdir / "sim.extras_0").read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(ast.literal_eval(line)["raw"][0]))
    return out


def hill_records(path: Path):
    return hillsfile.read(path).records


def frames_of(workdir: Path):
    return read(workdir / "frames.extxyz", ":")


def ev_as_printed_by_ipi(e_ev: float) -> float:
    """An energy in eV sent to i-PI in hartree (ASE's constant), printed in i-PI's eV."""
    from ipi.utils.units import unit_to_internal
    return e_ev / ase_units.Hartree / unit_to_internal("energy", "electronvolt", 1.0)


def assert_same_hills(records, reference, atol=1e-9):
    assert [r.step for r in records] == [r.step for r in reference]
    assert [r.element for r in records] == [r.element for r in reference]
    for r, q in zip(records, reference):
        assert r.height == pytest.approx(q.height, rel=1e-12)
        np.testing.assert_allclose(r.centre, q.centre, rtol=0, atol=atol)
        # the inverse covariance has round-off zeros (1e-12 where entries reach 1e4)
        # whose value depends on the vector width and FMA: compare on its scale
        metric = np.asarray(q.metric)
        np.testing.assert_allclose(np.asarray(r.metric), metric, rtol=0, atol=1e-6 * np.abs(metric).max())


def assert_same_run(workdir: Path, reference: Path) -> None:
    """Two proxy runs have the same trajectory, frames and i-PI energies."""
    np.testing.assert_allclose(read_positions(workdir), read_positions(reference), rtol=0, atol=1.5e-8)
    frames, expected = frames_of(workdir), frames_of(reference)
    assert len(frames) == len(expected)
    for a, b in zip(frames, expected):
        assert a.info["step"] == b.info["step"] and a.info["n_hills"] == b.info["n_hills"]
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), rel=1e-12, abs=1e-12)
        assert a.info["bias_energy"] == pytest.approx(b.info["bias_energy"], rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(read_properties(workdir / "sim.out")["potential"],
                               read_properties(reference / "sim.out")["potential"], rtol=0, atol=2.5e-8)


def run_proxy_chain(workdir: Path, consolidate: bool = True) -> Path:
    """i-PI <- gmetad serve (proxy) <- gmetad driver emt, to the end."""
    name = unique_socket_name("srv")
    ref = unique_socket_name("srvref")
    xml, _ = ipi_input(workdir, name, consolidate=consolidate)
    write_config(workdir, name, ref)
    procs = Processes(workdir)
    procs.sockets = (name, ref)
    try:
        ipi = procs.ipi(xml, name)
        server = procs.serve()
        driver = procs.driver(f"unix:{ref}")
        finish(procs, ipi, (server, driver))
    finally:
        procs.stop_all()
    return workdir


@pytest.fixture(scope="module")
def proxy_run(tmp_path_factory):
    """An uninterrupted proxy-mode run: the reference for the other runs."""
    return run_proxy_chain(tmp_path_factory.mktemp("proxy"))


# --------------------------------------------------------------------------- #
# 1. proxy and bias modes give the same trajectory
# --------------------------------------------------------------------------- #


def test_proxy_and_bias_modes_give_the_same_trajectory(proxy_run, tmp_path):
    variants = {
        "force": dict(extra_forces="<force forcefield='gmetad'> </force>"),
        "ensemble_bias": dict(extra_ensemble="<bias> <force forcefield='gmetad'> </force> </bias>"),
    }
    procs_all, runs = [], {}
    try:
        # the two bias-mode runs go concurrently: EMT driver -> i-PI directly,
        # the server in bias mode -> i-PI's second forcefield
        for key, extra in variants.items():
            d = tmp_path / key
            d.mkdir()
            name, bname = unique_socket_name("bm"), unique_socket_name("bmbias")
            ffs = (f"  <ffsocket name='gmetad' mode='unix' pbc='false'>\n    <address> {bname} </address>\n"
                   "    <latency> 1e-4 </latency>\n  </ffsocket>")
            xml, _ = ipi_input(d, name, extra_ffsockets=ffs, **extra)
            write_config(d, bname, unique_socket_name("unused"))
            procs = Processes(d)
            procs.sockets = (name, bname)
            procs_all.append(procs)
            ipi = procs.ipi(xml, name)
            runs[key] = (procs, ipi, procs.serve("server.log", "--mode", "bias"),
                         procs.driver(f"unix:{name}"))
        for key, (procs, ipi, server, driver) in runs.items():
            finish(procs, ipi, (server, driver))
    finally:
        for procs in procs_all:
            procs.stop_all()

    p_proxy = read_properties(proxy_run / "sim.out")
    x_proxy = read_positions(proxy_run)
    hills_proxy = hill_records(proxy_run / "HILLS")
    np.testing.assert_array_equal(p_proxy["step"], np.arange(STEPS + 1))
    assert x_proxy.shape == (STEPS + 1, 13, 3)
    assert [r.step for r in hills_proxy] == list(range(STRIDE, STEPS + 1, STRIDE))
    assert all(r.element == "H" for r in hills_proxy)
    assert np.all(p_proxy["ensemble_bias"] == 0)
    # the bias acts: the potential jumps by about one hill height after each deposition
    assert p_proxy["potential"][STRIDE + 1] - p_proxy["potential"][STRIDE] > 0.5 * HEIGHT

    for key in variants:
        d = tmp_path / key
        assert "bias mode" in (d / "server.log").read_text()
        assert not (d / "frames.extxyz").exists() or (d / "frames.extxyz").stat().st_size == 0
        props = read_properties(d / "sim.out")
        np.testing.assert_array_equal(props["step"], np.arange(STEPS + 1))
        # positions to the output precision (8 decimals in angstrom)
        np.testing.assert_allclose(read_positions(d), x_proxy, rtol=0, atol=1.5e-8, err_msg=key)
        # total energy (potential + ensemble bias) to the printed precision (9 digits)
        total = props["potential"] + props["ensemble_bias"]
        np.testing.assert_allclose(total, p_proxy["potential"], rtol=0, atol=2.5e-8, err_msg=key)
        np.testing.assert_allclose(props["conserved"], p_proxy["conserved"], rtol=0, atol=2.5e-8, err_msg=key)
        # same hills: same steps, heights, centres (1e-6) and covariances
        assert_same_hills(hill_records(d / "HILLS"), hills_proxy, atol=1e-6)
    # <ensemble><bias>: i-PI reports the bias apart from the potential
    ens = read_properties(tmp_path / "ensemble_bias" / "sim.out")
    assert ens["ensemble_bias"][STRIDE + 1] > 0.5 * HEIGHT
    force = read_properties(tmp_path / "force" / "sim.out")
    assert np.all(force["ensemble_bias"] == 0)


# --------------------------------------------------------------------------- #
# 2. recorded frames are the reference calculator's own numbers
# --------------------------------------------------------------------------- #


def test_recorded_frames_match_the_reference_calculator(proxy_run, tmp_path):
    frames = frames_of(proxy_run)
    assert [a.info["step"] for a in frames] == list(range(STEPS + 1))
    hills = hill_records(proxy_run / "HILLS")
    props = read_properties(proxy_run / "sim.out")
    extras = read_extras(proxy_run)
    assert len(extras) == STEPS + 1

    text = (proxy_run / "HILLS").read_text().splitlines()
    header = [ln for ln in text if ln.startswith("#!")]
    records = [ln for ln in text if ln.strip() and not ln.startswith("#!")]
    for k, atoms in enumerate(frames):
        ref = atoms.copy()
        ref.calc = EMT()
        e, f = ref.get_potential_energy(), ref.get_forces()
        e_rec, f_rec = atoms.get_potential_energy(), atoms.get_forces()
        # extxyz keeps positions to 1e-8 A: first-order bound on the energy change
        tol = max(1e-8 * abs(e), 0.5e-8 * np.abs(f).sum())
        assert abs(e_rec - e) <= tol, (k, e_rec, e)
        np.testing.assert_allclose(f_rec, f, rtol=0, atol=5e-7)
        assert np.isfinite(atoms.get_stress()).all()

        # the bias of frame k comes from the hills deposited before step k;
        # n_hills counts the hills after the step (its own deposition included)
        felt = [r for r in hills if r.step < k]
        assert atoms.info["n_hills"] == len([r for r in hills if r.step <= k])
        if not felt:
            assert atoms.info["bias_energy"] == 0.0
        else:
            partial = tmp_path / f"HILLS_{k}"
            partial.write_text("\n".join(header + records[:len(felt)]) + "\n")
            bias = GMetaDBias.load(partial)
            assert atoms.info["bias_energy"] == pytest.approx(bias.energy_forces(atoms)[0], abs=1e-8)

        # i-PI received reference + bias, with both in the extras
        assert extras[k]["reference_energy"] == e_rec
        assert extras[k]["bias_energy"] == atoms.info["bias_energy"]
        assert extras[k]["n_hills"] == atoms.info["n_hills"]
        assert props["potential"][k] == pytest.approx(
            ev_as_printed_by_ipi(e_rec + atoms.info["bias_energy"]), abs=1e-8)
    assert frames[-1].info["bias_energy"] > 2 * HEIGHT


# --------------------------------------------------------------------------- #
# 3. a force client killed mid-step is replaced without losing the step
# --------------------------------------------------------------------------- #


def test_force_client_killed_mid_step_is_replaced(proxy_run, tmp_path):
    kill_step = 5
    (tmp_path / "sleepy.py").write_text(SLEEPY_MODULE)
    name, ref = unique_socket_name("kc"), unique_socket_name("kcref")
    xml, _ = ipi_input(tmp_path, name)
    write_config(tmp_path, name, ref)
    marker = tmp_path / "asleep"
    procs = Processes(tmp_path)
    procs.sockets = (name, ref)
    try:
        ipi = procs.ipi(xml, name)
        server = procs.serve()
        doomed = procs.driver(f"unix:{ref}", "driver1.log", "sleepy:SleepyEMT",
                              {"sleep_at": kill_step, "marker": str(marker)})
        wait_for(marker.exists, DEADLINE, "the first driver to stall", procs)
        assert int(marker.read_text()) == doomed.pid
        kill_group(doomed)   # SIGKILL while the server waits for its reply
        driver = procs.driver(f"unix:{ref}", "driver2.log")
        finish(procs, ipi, (server, driver))
    finally:
        procs.stop_all()

    log = (tmp_path / "server.log").read_text()
    dropped = [ln for ln in log.splitlines() if "dropping force client" in ln]
    assert len(dropped) == 1, log
    assert f"pid {doomed.pid}" in dropped[0] and f"at step {kill_step}" in dropped[0], dropped[0]
    assert "WARNING" in dropped[0]
    assert log.count("force client connected") == 2

    frames = frames_of(tmp_path)
    assert [a.info["step"] for a in frames] == list(range(STEPS + 1))
    # the step went to the second client: same run as without the failure (a fresh
    # EMT neighbour list changes the sums in the last bits only)
    assert_same_run(tmp_path, proxy_run)
    assert_same_hills(hill_records(tmp_path / "HILLS"), hill_records(proxy_run / "HILLS"))


# --------------------------------------------------------------------------- #
# 4. the server killed and restarted from its hills file continues the run
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kill_step", [7, 6], ids=["between-depositions", "at-a-deposition-step"])
def test_server_killed_and_restarted_continues_with_the_same_bias(proxy_run, tmp_path, kill_step):
    (tmp_path / "sleepy.py").write_text(SLEEPY_MODULE)
    name, ref = unique_socket_name("rs"), unique_socket_name("rsref")
    # consolidate_messages false: i-PI re-queues the step of a client that dies
    xml, _ = ipi_input(tmp_path, name, consolidate=False)
    write_config(tmp_path, name, ref, restart=True)
    marker = tmp_path / "asleep"
    procs = Processes(tmp_path)
    procs.sockets = (name, ref)
    try:
        ipi = procs.ipi(xml, name)
        server1 = procs.serve("server1.log")
        driver1 = procs.driver(f"unix:{ref}", "driver1.log", "sleepy:SleepyEMT",
                               {"sleep_at": kill_step, "marker": str(marker)})
        wait_for(marker.exists, DEADLINE, "the driver to stall", procs)
        kill_group(server1)   # SIGKILL the server while it waits for the reference
        kill_group(driver1)   # its driver is orphaned; a new one will connect

        # what is on disk after the crash: whole frames up to the step before,
        # and only the hills of completed steps
        frames = frames_of(tmp_path)
        assert [a.info["step"] for a in frames] == list(range(kill_step))
        hills_before = hill_records(tmp_path / "HILLS")
        assert [r.step for r in hills_before] == list(range(STRIDE, kill_step, STRIDE))
        time.sleep(0.3)
        assert ipi.poll() is None, "i-PI died with its client:\n" + procs.tails()

        server2 = procs.serve("server2.log")
        driver2 = procs.driver(f"unix:{ref}", "driver2.log")
        finish(procs, ipi, (server2, driver2))
    finally:
        procs.stop_all()

    assert "died or got unresponsive" in (tmp_path / "ipi.log").read_text()
    log2 = (tmp_path / "server2.log").read_text()
    m = re.search(r"(\d+) hills loaded.*continuing at step (\d+)", log2)
    assert m, log2
    assert int(m.group(1)) == len(hills_before) and int(m.group(2)) == kill_step

    frames = frames_of(tmp_path)
    steps = [a.info["step"] for a in frames]
    assert steps == list(range(STEPS + 1)), steps
    # the restarted bias is the same bias: the run is the uninterrupted one
    assert_same_hills(hill_records(tmp_path / "HILLS"), hill_records(proxy_run / "HILLS"))
    assert_same_run(tmp_path, proxy_run)


def _serve_steps(name: str, server_factory, steps, template) -> list:
    """Play i-PI in-process: a BiasServer (from ``server_factory(ipi_address,
    listen_address)``, in a thread) and an EMT driver (thread) evaluate the
    given Atoms in order; returns the ForceResults i-PI would receive."""
    ref = name + "ref"
    threads, outcome = [], {}
    lst = listen(f"unix:{name}")
    server = server_factory(f"unix:{name}", f"unix:{ref}")
    try:
        def target(key, fn, *args, **kwargs):
            try:
                outcome[key] = fn(*args, **kwargs)
            except BaseException as err:   # reported by the test
                outcome[key + " error"] = err
        threads = [threading.Thread(target=target, args=("server", server.serve), daemon=True),
                   threading.Thread(target=target, args=("driver", run_driver, EMT(), template, f"unix:{ref}"),
                                    kwargs=dict(connect_timeout=20, io_timeout=30), daemon=True)]
        for t in threads:
            t.start()
        conn = lst.accept(timeout=20, io_timeout=30)
        role = ServerRole(conn, compute_timeout=30)
        results = [role.evaluate(Positions(a.cell, a.positions)) for a in steps]
        role.send_exit()
        conn.close()
        for t in threads:
            t.join(timeout=20)
            assert not t.is_alive(), "server or driver did not stop after EXIT"
    finally:
        lst.close()
        if any(t.is_alive() for t in threads):
            server.close()
    assert not [k for k in outcome if k.endswith("error")], outcome
    return results


def test_restart_after_a_recorded_but_unanswered_step(proxy_run, tmp_path, caplog):
    """The other crash window: the server recorded step s (and deposited its
    hills) but died before i-PI got the reply, so i-PI re-sends step s."""
    caplog.set_level(logging.INFO, logger="gmetad")
    reference = frames_of(proxy_run)
    template = reference[0].copy()
    s = 2 * STRIDE
    sf = SymmetryFunctions.default(["Pt", "H"], CUTOFF)
    hills_path, frames_path = tmp_path / "HILLS", tmp_path / "frames.extxyz"

    def factory(ipi_address, listen_address):   # as `gmetad serve` with bias.restart: true
        bias = GMetaDBias(sf, height=HEIGHT, width=WIDTH, stride=STRIDE, species={"H": 1.0})
        if hills_path.exists():
            bias.load_hills(hills_path)
        bias.record_hills(hills_path)
        recorder = FrameRecorder(frames_path, template.get_chemical_symbols(), template.pbc, fsync=False)
        return BiasServer(bias, template, ipi_address, listen_address=listen_address, recorder=recorder,
                          compute_timeout=30, connect_timeout=20, accept_timeout=30)

    first = _serve_steps(unique_socket_name("ru"), factory, reference[:s + 1], template)
    assert [r.step for r in hill_records(hills_path)] == [STRIDE, s]
    caplog.clear()
    # the restarted server gets step s again, then the following steps
    second = _serve_steps(unique_socket_name("ru"), factory, reference[s:s + STRIDE + 2], template)
    assert f"step {s} repeats the last recorded frame" in caplog.text
    assert re.search(rf"2 hills loaded .*continuing at step {s + 1}", caplog.text), caplog.text

    frames = frames_of(tmp_path)
    assert [a.info["step"] for a in frames] == list(range(s + STRIDE + 2))
    assert [r.step for r in hill_records(hills_path)] == [STRIDE, s, s + STRIDE]   # no second hill at s
    # the hill of step s was set aside before the step was redone, then deposited again
    assert [r.step for r in hill_records(tmp_path / f"HILLS.after-{s}")] == [s]
    # the repeated step: the forces and energy i-PI got the first time (without step s's hill)
    np.testing.assert_allclose(second[0].forces, first[-1].forces, rtol=0, atol=1e-9)
    assert second[0].energy == pytest.approx(first[-1].energy, abs=1e-9)
    # after it, the run goes on as the uninterrupted one
    for a, b in zip(frames, reference):
        assert a.info["n_hills"] == b.info["n_hills"]
        assert a.info["bias_energy"] == pytest.approx(b.info["bias_energy"], abs=1e-6)


# --------------------------------------------------------------------------- #
# 5. malformed replies: the client is dropped, nothing recorded, a good one finishes
# --------------------------------------------------------------------------- #

BAD_ENERGY = 12345.0


def _forceready_bytes(natoms: int, nan_forces: bool = False) -> bytes:
    message = bytearray(encode_forceready(ForceResult(BAD_ENERGY, np.full((natoms, 3), 0.1))))
    if nan_forces:
        message[24:32] = struct.pack("<d", float("nan"))   # header 12 + energy 8 + natoms 4
    return bytes(message)


def _misbehave(address: str, natoms: int, how: str) -> None:
    """Connect as a force client, take the step's positions, then answer wrongly
    and wait until the server closes the connection."""
    conn = connect(address, timeout=20, io_timeout=20)
    try:
        assert ClientRole(conn, natoms=natoms).wait_positions() is not None
        word = conn.recv_header()
        if word == "STATUS":          # a server may poll before asking for the forces
            conn.send_header("HAVEDATA")
            word = conn.recv_header()
        assert word == "GETFORCE"
        if how == "garbage header":
            conn.send_bytes(b"GARBAGE!@#$%")
        elif how == "wrong natoms":
            conn.send_bytes(_forceready_bytes(natoms - 1))
        elif how == "nan forces":
            conn.send_bytes(_forceready_bytes(natoms, nan_forces=True))
        elif how == "closed mid-message":
            conn.send_bytes(_forceready_bytes(natoms)[:40])
            return   # finally closes
        else:
            raise ValueError(how)
        conn.sock.settimeout(20)
        try:
            assert conn.sock.recv(1024) == b"", "the server kept the connection"
        except ConnectionResetError:
            pass
    finally:
        conn.close()


MALFORMED = {
    "garbage header": "bad header",
    "wrong natoms": "FORCEREADY: natoms = 12 but 13 expected",
    "nan forces": "FORCEREADY: non-finite value(s) in forces",
    "closed mid-message": "FORCEREADY: connection closed",
}


def test_malformed_replies_drop_the_client_and_record_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gmetad")
    steps = 3
    name, ref = unique_socket_name("mf"), unique_socket_name("mfref")
    xml, frame = ipi_input(tmp_path, name, steps=steps)
    natoms = len(frame)
    bias = GMetaDBias(SymmetryFunctions.default(["Pt", "H"], CUTOFF), height=HEIGHT, width=WIDTH,
                      stride=STRIDE, species={"H": 1.0})
    recorder = FrameRecorder(tmp_path / "frames.extxyz", frame.get_chemical_symbols(), frame.pbc, fsync=False)
    procs = Processes(tmp_path)
    procs.sockets = (name, ref)
    server = None
    outcome = {}
    thread = None
    try:
        ipi = procs.ipi(xml, name)
        server = BiasServer(bias, frame, f"unix:{name}", listen_address=f"unix:{ref}", recorder=recorder,
                            compute_timeout=20, connect_timeout=20, accept_timeout=DEADLINE)

        def serve():
            try:
                outcome["served"] = server.serve()
            except BaseException as err:   # reported by the test
                outcome["error"] = err

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        for k, how in enumerate(MALFORMED, 1):
            _misbehave(f"unix:{ref}", natoms, how)
            wait_for(lambda: server.pool.dropped == k, 20, f"the server to drop the '{how}' client")
            assert recorder.n_frames == 0 and os.path.getsize(tmp_path / "frames.extxyz") == 0
        served = run_driver(EMT(), frame, f"unix:{ref}", connect_timeout=20, io_timeout=30)
        wait_ipi(ipi, timeout=DEADLINE)
        thread.join(timeout=20)
        assert not thread.is_alive(), "the server did not stop after i-PI ended"
    finally:
        procs.stop_all()
        if thread is not None and thread.is_alive() and server is not None:
            server.close()

    assert "error" not in outcome, outcome
    assert outcome["served"] == steps + 1 and served == steps + 1
    drops = [r.getMessage() for r in caplog.records
             if r.name == "gmetad.server" and "dropping force client" in r.getMessage()]
    assert len(drops) == len(MALFORMED), drops
    for message, (how, reason) in zip(drops, MALFORMED.items()):
        assert reason in message, (how, message)
        assert f"unix peer pid {os.getpid()}" in message and "at step 0" in message
    assert all(r.levelno == logging.WARNING for r in caplog.records if "dropping force client" in r.getMessage())

    frames = frames_of(tmp_path)
    assert [a.info["step"] for a in frames] == list(range(steps + 1))
    for atoms in frames:
        ref_atoms = atoms.copy()
        ref_atoms.calc = EMT()
        assert atoms.get_potential_energy() != BAD_ENERGY
        assert atoms.get_potential_energy() == pytest.approx(ref_atoms.get_potential_energy(), rel=1e-8)


# --------------------------------------------------------------------------- #
# 6. security defaults
# --------------------------------------------------------------------------- #


def test_proxy_unix_socket_is_private_and_remote_listening_needs_consent(tmp_path):
    frame = pt_h_slab()
    name = unique_socket_name("sec")
    server = BiasServer(None, frame, "unix:nobody-home", listen_address=f"unix:{name}")
    try:
        mode = os.stat(ipi_unix_path(name)).st_mode
        assert mode & 0o777 == 0o600, oct(mode)
    finally:
        server.close()
    assert not os.path.exists(ipi_unix_path(name))

    for address in ("inet:0.0.0.0:0", "inet:[::]:0"):
        with pytest.raises(ValueError, match="non-loopback") as err:
            listen(address)
        assert "allow_remote" in str(err.value) and "authentication" in str(err.value)
        with pytest.raises(ValueError, match="non-loopback"):
            BiasServer(None, frame, "unix:nobody-home", listen_address=address)
    listen("inet:127.0.0.1:0").close()   # loopback needs no consent
    with listen("inet:0.0.0.0:0", allow_remote=True) as lst:   # explicit consent
        assert lst.address.port > 0

    # the command line says why and exits with an error
    ipi_name = unique_socket_name("secipi")
    frame.info.clear()
    write(tmp_path / "template.xyz", frame, format="extxyz")
    config = write_config(tmp_path, ipi_name, "x")
    config.write_text(config.read_text().replace("listen: unix:x", "listen: inet:0.0.0.0:0"))
    proc = subprocess.run([sys.executable, "-m", "biasserver.cli", "serve", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=DEADLINE,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 1, proc.stderr
    assert "refusing to listen on non-loopback host" in proc.stderr and "allow_remote" in proc.stderr
