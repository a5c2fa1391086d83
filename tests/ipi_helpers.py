"""Helpers to run a real i-PI (3.x) in tests.

Typical use::

    from ipi_helpers import unique_socket_name, write_ipi_input, running_ipi, read_properties

    name = unique_socket_name()
    xml, frame = write_ipi_input(tmp_path, atoms, name, steps=5)
    with running_ipi(xml, name, cwd=tmp_path, timeout=60) as proc:
        run_driver(EMT(), frame, f"unix:{name}", io_timeout=30)
        wait_ipi(proc, timeout=30)           # i-PI finished its steps
    props = read_properties(tmp_path / "sim.out")   # {"step": ..., "potential": ... (eV)}

``frame`` is the structure as i-PI sees it (rotated so a is along x and b lies in
the xy plane, i-PI's upper-triangular cell convention); compare energies against
it. The unix socket file is ``/tmp/ipi_<name>``; the driver address is
``unix:<name>``.

i-PI 3.3 facts these helpers rely on:

* ``<address>`` of a unix ``<ffsocket>`` must be a bare name: i-PI prepends
  ``<simulation sockets_prefix>`` (default ``/tmp/ipi_``), so an absolute path
  would become ``/tmp/ipi_/abs/path``. The socket file appears ~0.7 s after
  start (Python imports); it is removed when i-PI exits.
* The xyz reader takes the cell and units from the comment line
  ``# CELL(abcABC): a b c alpha beta gamma cell{angstrom} positions{angstrom}``;
  ``<file mode='xyz' units='angstrom'>`` must agree with it. i-PI keeps the cell
  upper triangular (a along x), hence :func:`ipi_frame`.
* Properties are written at step 0 (the initial structure) and then every
  stride: a run of N steps makes N + 1 force evaluations.
* i-PI's unit constants are not ASE's: its angstrom differs by 1.4e-8, its eV
  by 9.6e-8 and its GPa by 3.0e-5 (relative), so exact comparisons must emulate
  them (``ipi.utils.units.unit_to_internal``).
* Default ``consolidate_messages=true`` sends POSDATA and GETFORCE back to back
  without STATUS in between; ``false`` uses the classic STATUS polling through a
  thread pool. ``<latency>`` (default 1e-4 s) is the poll-loop sleep.
* At the end i-PI sends EXIT to its clients and exits with code 0;
  ``<total_time>`` is its own wall-clock limit.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from biasserver.protocol import ipi_unix_path
from biasserver.runner import ipi_command

IPI_PREFIX = "/tmp/ipi_"

#: properties written by default (units chosen so they can be compared with ASE)
DEFAULT_PROPERTIES = (
    "step",
    "time{femtosecond}",
    "conserved{electronvolt}",
    "temperature{kelvin}",
    "kinetic_md{electronvolt}",
    "potential{electronvolt}",
    "pressure_md{gigapascal}",
)


def unique_socket_name(tag: str = "gmetad") -> str:
    """A fresh i-PI unix socket name (i-PI makes it ``/tmp/ipi_<name>``)."""
    return f"{tag}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def ipi_socket_path(name: str) -> str:
    """The socket file i-PI creates for ``<address>name</address>`` (mode unix)."""
    return IPI_PREFIX + name


def ipi_frame(atoms, vacuum: float = 10.0):
    """A copy of ``atoms`` rigidly rotated into i-PI's cell convention.

    i-PI stores h (lattice vectors as columns) upper triangular, i.e. a along x
    and b in the xy plane (lower-triangular rows in ASE terms). Positions are
    rotated with the cell, so energies and forces are unchanged in magnitude. A
    structure without a cell gets an orthorhombic box with ``vacuum`` around it.
    """
    from ase.geometry import cell_to_cellpar, cellpar_to_cell

    frame = atoms.copy()
    if frame.cell.rank < 3:
        extent = np.ptp(frame.positions, axis=0) + vacuum
        frame.set_cell(np.diag(extent), scale_atoms=False)
        frame.center()
    if frame.cell.handedness < 0:
        raise ValueError("left-handed cells are not supported by i-PI")
    scaled = frame.get_scaled_positions(wrap=False)
    new_cell = cellpar_to_cell(cell_to_cellpar(frame.cell.array))
    frame.set_cell(new_cell, scale_atoms=False)
    frame.set_positions(scaled @ new_cell)
    return frame


def write_ipi_xyz(atoms, path: Union[str, Path]) -> Path:
    """Write ``atoms`` (already in i-PI's frame, see :func:`ipi_frame`) as an i-PI xyz.

    The comment line is ``# CELL(abcABC): a b c alpha beta gamma cell{angstrom}
    positions{angstrom}``, which i-PI's xyz reader understands.
    """
    from ase.geometry import cell_to_cellpar

    path = Path(path)
    a, b, c, al, be, ga = cell_to_cellpar(atoms.cell.array)
    lines = [
        f"{len(atoms)}",
        f"# CELL(abcABC): {a:.12f} {b:.12f} {c:.12f} {al:.12f} {be:.12f} {ga:.12f} "
        "cell{angstrom} positions{angstrom}",
    ]
    for sym, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions):
        lines.append(f"{sym:3s} {x:20.12f} {y:20.12f} {z:20.12f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_ipi_input(
    workdir: Union[str, Path],
    atoms,
    socket_name: str,
    steps: int = 5,
    timestep_fs: float = 1.0,
    temperature_K: float = 300.0,
    ensemble: str = "nve",
    seed: int = 12345,
    prefix: str = "sim",
    properties: Sequence[str] = DEFAULT_PROPERTIES,
    trajectory_stride: int = 0,
    latency: float = 1e-4,
    consolidate_messages: bool = True,
    extra_ffsockets: str = "",
    extra_forces: str = "",
    extra_ensemble: str = "",
    total_time_s: float = 600.0,
) -> "tuple[Path, object]":
    """Write ``init.xyz`` and ``input.xml`` for an i-PI MD run into ``workdir``.

    One ``<ffsocket name='driver' mode='unix' pbc='false'>`` at
    ``/tmp/ipi_<socket_name>``; ``ensemble`` is ``'nve'`` or ``'nvt'`` (SVR
    thermostat, tau 10 fs). Velocities are thermal at ``temperature_K``.
    Properties go to ``<prefix>.out`` every step; with ``trajectory_stride`` > 0
    positions (angstrom) and forces (eV/A) trajectories are written as
    ``<prefix>.pos_0.xyz`` and ``<prefix>.for_0.xyz``. ``extra_*`` strings are
    inserted verbatim (more forcefields, more ``<force>`` entries, an
    ``<bias>`` block for ``<ensemble>``). ``total_time_s`` is i-PI's own
    wall-clock limit (a safety net).

    Returns (path of input.xml, the Atoms in i-PI's frame).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    frame = ipi_frame(atoms)
    write_ipi_xyz(frame, workdir / "init.xyz")
    if ensemble == "nve":
        dyn = (
            "<dynamics mode='nve'>\n"
            f"        <timestep units='femtosecond'> {timestep_fs} </timestep>\n"
            "      </dynamics>"
        )
    elif ensemble == "nvt":
        dyn = (
            "<dynamics mode='nvt'>\n"
            f"        <timestep units='femtosecond'> {timestep_fs} </timestep>\n"
            "        <thermostat mode='svr'><tau units='femtosecond'> 10 </tau></thermostat>\n"
            "      </dynamics>"
        )
    else:
        raise ValueError(f"ensemble must be 'nve' or 'nvt', not {ensemble!r}")
    traj = ""
    if trajectory_stride > 0:
        traj = (
            f"    <trajectory filename='pos' stride='{trajectory_stride}' format='xyz' "
            "cell_units='angstrom'> positions{angstrom} </trajectory>\n"
            f"    <trajectory filename='for' stride='{trajectory_stride}' format='xyz' "
            "cell_units='angstrom'> forces{ev/ang} </trajectory>\n"
        )
    xml = f"""<simulation verbosity='low' safe_stride='1000'>
  <output prefix='{prefix}'>
    <properties stride='1' filename='out' flush='1'> [ {', '.join(properties)} ] </properties>
{traj}  </output>
  <total_steps> {int(steps)} </total_steps>
  <total_time> {float(total_time_s)} </total_time>
  <prng><seed> {int(seed)} </seed></prng>
  <ffsocket name='driver' mode='unix' pbc='false'>
    <address> {socket_name} </address>
    <latency> {latency} </latency>
    <consolidate_messages> {str(bool(consolidate_messages)).lower()} </consolidate_messages>
  </ffsocket>
{extra_ffsockets}
  <system>
    <initialize nbeads='1'>
      <file mode='xyz' units='angstrom'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> {temperature_K} </velocities>
    </initialize>
    <forces>
      <force forcefield='driver'> </force>
{extra_forces}
    </forces>
    <ensemble>
      <temperature units='kelvin'> {temperature_K} </temperature>
{extra_ensemble}
    </ensemble>
    <motion mode='dynamics'>
      {dyn}
    </motion>
  </system>
</simulation>
"""
    path = workdir / "input.xml"
    path.write_text(xml)
    return path, frame


def start_ipi(
    xml_path: Union[str, Path],
    socket_name: Optional[str] = None,
    cwd: Optional[Union[str, Path]] = None,
    timeout: float = 30.0,
    log_name: str = "ipi.log",
) -> subprocess.Popen:
    """Start ``i-pi xml_path`` in ``cwd`` and wait until its socket exists.

    stdout and stderr go to ``cwd/log_name``. Waits up to ``timeout`` seconds
    for ``/tmp/ipi_<socket_name>`` (skipped if ``socket_name`` is None). Raises
    RuntimeError (with the log tail) if i-PI exits or the socket does not
    appear; the process is killed in that case.
    """
    xml_path = Path(xml_path)
    cwd = Path(cwd) if cwd is not None else xml_path.parent
    logf = open(cwd / log_name, "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        ipi_command() + [str(xml_path)],
        cwd=cwd,
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    logf.close()
    proc.log_path = cwd / log_name  # type: ignore[attr-defined]
    if socket_name is None:
        return proc
    path = ipi_socket_path(socket_name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    stop_process(proc)
    raise RuntimeError(
        f"i-PI did not open {path} within {timeout} s (exit code {proc.returncode}); log tail:\n"
        + log_tail(proc)
    )


def log_tail(proc: subprocess.Popen, nchars: int = 3000) -> str:
    """The last ``nchars`` characters of a process log written by :func:`start_ipi`."""
    path = getattr(proc, "log_path", None)
    if path is None or not Path(path).exists():
        return "(no log)"
    return Path(path).read_text(errors="replace")[-nchars:]


def wait_ipi(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """Wait for i-PI to exit; raise RuntimeError (with log tail) on timeout or failure."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise RuntimeError(f"i-PI did not finish within {timeout} s; log tail:\n" + log_tail(proc)) from None
    if rc != 0:
        raise RuntimeError(f"i-PI exited with code {rc}; log tail:\n" + log_tail(proc))
    return rc


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate ``proc`` (and its process group), then kill if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def running_ipi(
    xml_path: Union[str, Path],
    socket_name: Optional[str] = None,
    cwd: Optional[Union[str, Path]] = None,
    timeout: float = 30.0,
) -> Iterator[subprocess.Popen]:
    """Context manager: :func:`start_ipi`, and always stop i-PI and remove its
    socket file on exit."""
    proc = start_ipi(xml_path, socket_name, cwd=cwd, timeout=timeout)
    try:
        yield proc
    finally:
        stop_process(proc)
        if socket_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(ipi_socket_path(socket_name))


def read_properties(path: Union[str, Path]) -> dict:
    """Parse an i-PI properties file into {name: 1-D array}.

    Column names are taken from the ``# column N --> name{unit} : ...`` header
    lines, with the ``{unit}`` suffix stripped (``potential{electronvolt}`` ->
    ``potential``). Multi-column properties (``# cols.  2-10 --> cell_h``)
    become ``cell_h_0`` ... ``cell_h_8``.
    """
    names = []
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            if "-->" in line:
                left, right = line.split("-->", 1)
                name = right.split(":", 1)[0].strip().split("{", 1)[0].strip()
                cols = left.replace("#", " ").split()[-1]
                if "-" in cols:
                    lo, hi = (int(x) for x in cols.split("-"))
                    names.extend(f"{name}_{k}" for k in range(hi - lo + 1))
                else:
                    names.append(name)
            continue
        if line.strip():
            rows.append([float(x) for x in line.split()])
    data = np.array(rows, dtype=float).reshape(len(rows), -1)
    if data.shape[1] != len(names):
        raise ValueError(f"{path}: {len(names)} column names but {data.shape[1]} columns")
    return {n: data[:, i] for i, n in enumerate(names)}


# --------------------------------------------------------------------------- #
# a G-metaD job of a Pt(111)-H slab: i-PI, gmetad serve, gmetad driver emt as
# processes (test_server, test_beads, test_restart, test_walkers)
# --------------------------------------------------------------------------- #

REPO = Path(__file__).resolve().parents[1]

STEPS = 12          # MD steps per i-PI run (STEPS + 1 force evaluations)
STRIDE = 3          # hills at steps 3, 6, 9, 12
HEIGHT = 0.05       # eV
WIDTH = 0.3         # A (adaptive covariance)
CUTOFF = 4.5        # A
DEADLINE = 60.0     # s, any single wait for a run to finish

SLEEPY_MODULE = '''
"""EMT that stalls on one evaluation (a force client to be killed mid-step)."""
import os
import time
from ase.calculators.emt import EMT


class SleepyEMT(EMT):
    """On its ``sleep_at``-th evaluation (0-based) write the process id to
    ``marker`` and sleep ``seconds`` before computing."""

    def __init__(self, sleep_at=-1, marker=None, seconds=120.0, **kwargs):
        super().__init__(**kwargs)
        self.sleep_at, self.marker, self.seconds, self.calls = sleep_at, marker, seconds, 0

    def calculate(self, *args, **kwargs):
        if self.calls == self.sleep_at:
            with open(self.marker + ".tmp", "w") as handle:
                handle.write(str(os.getpid()))
            os.replace(self.marker + ".tmp", self.marker)
            time.sleep(self.seconds)
        self.calls += 1
        super().calculate(*args, **kwargs)
'''


@lru_cache(maxsize=1)
def _relaxed_slab():
    """Pt(111) 2x2x3 + H in the fcc hollow, EMT-relaxed (bottom layer fixed)."""
    slab = fcc111("Pt", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "H", 1.0, "fcc")
    slab.info.clear()
    slab.pbc = True
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 3]))
    slab.calc = EMT()
    BFGS(slab, logfile=None).run(fmax=0.02, steps=200)
    slab.set_constraint()
    slab.calc = None
    return slab


def pt_h_slab():
    return _relaxed_slab().copy()


def write_config(workdir: Path, ipi: str, listen_name: str, restart: bool = False,
                 timeout: float = DEADLINE, frames: str = "frames.extxyz", extra_bias: str = "",
                 walkers: int | None = None) -> Path:
    """``gmetad.yaml`` of a proxy server for the slab (only H biased, the constants
    above); ``extra_bias``: more lines of the bias section; with ``walkers``, the
    addresses and ``frames`` hold {walker}."""
    path = workdir / "gmetad.yaml"
    path.write_text(f"""structure: template.xyz
symmetry:
  default: {{elements: [Pt, H], cutoff: {CUTOFF}}}
bias:
  height: {HEIGHT}
  width: {WIDTH}
  stride: {STRIDE}
  species: {{H: 1.0, Pt: 0.0}}
  hills_file: HILLS
  restart: {str(restart).lower()}
{extra_bias}server:
  mode: proxy
  ipi: unix:{ipi}
  listen: unix:{listen_name}
  timeout: {timeout}
recorder:
  path: {frames}
  fsync: false
""" + ("" if walkers is None else f"walkers: {walkers}\n"))
    return path


class Processes:
    """Processes a test starts, each in its own session; :meth:`stop_all` (call
    it in ``finally``) terminates, then kills, every process group."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1",
                        PYTHONPATH=os.pathsep.join([str(REPO), str(workdir), os.environ.get("PYTHONPATH", "")]))

    def start(self, args, log: str) -> subprocess.Popen:
        with open(self.workdir / log, "wb") as handle:
            proc = subprocess.Popen([sys.executable, "-m", "biasserver.cli", *args], cwd=self.workdir,
                                    stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, start_new_session=True)
        proc.log_path = self.workdir / log
        self.procs.append(proc)
        return proc

    def serve(self, log: str = "server.log", *extra) -> subprocess.Popen:
        return self.start(["serve", "gmetad.yaml", *extra], log)

    def driver(self, address: str, log: str = "driver.log", calculator: str = "emt",
               kwargs: dict | None = None) -> subprocess.Popen:
        args = ["driver", calculator, "-s", "template.xyz", "-a", address, "--connect-timeout", str(DEADLINE)]
        if kwargs:
            args += ["--kwargs", json.dumps(kwargs)]
        return self.start(args, log)

    def ipi(self, xml: Path, name: str) -> subprocess.Popen:
        proc = start_ipi(xml, name, cwd=self.workdir, timeout=DEADLINE)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout=3.0)
        for name in getattr(self, "sockets", ()):
            try:
                os.unlink(ipi_unix_path(name))
            except OSError:
                pass

    def tails(self) -> str:
        return "\n".join(f"--- {Path(p.log_path).name} (rc {p.poll()}):\n{log_tail(p, 1500)}"
                         for p in self.procs if hasattr(p, "log_path"))


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def wait_for(predicate, timeout: float, what: str, procs: Processes | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n" + (procs.tails() if procs else ""))


def finish(procs: Processes, ipi: subprocess.Popen, others=(), timeout: float = DEADLINE) -> None:
    """Wait for i-PI to end the run (exit 0) and the given processes to exit 0."""
    try:
        wait_ipi(ipi, timeout=timeout)
    except RuntimeError as err:
        raise AssertionError(f"{err}\n{procs.tails()}") from None
    for proc in others:
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{proc.args} did not exit after i-PI ended\n{procs.tails()}") from None
        assert rc == 0, f"{proc.args} exited with {rc}\n{procs.tails()}"
