"""``gmetad run DIR`` for an example whose YAML says ``walkers: N``.

One variant (``gmetad`` or ``plain``) is then N i-PI runs, N force clients and
one MPI job of N bias servers sharing the bias (see :mod:`biasserver.walkers`):

    DIR/output/<variant>/gmetad.yaml            private YAML ({walker} addresses)
    DIR/output/<variant>/HILLS, server.log      the shared bias, the MPI job's log
    DIR/output/<variant>/walker-<r>/            i-PI's input, outputs and checkpoints,
                                                frames.extxyz, i-pi.log, driver.log

Walker r's i-PI input is the example's with the ``<prng><seed>`` increased by r
(walker 0 runs the example's own seed), so the walkers start from the same
structure with different velocities and thermostat noise. Progress is shown per
walker. If any process dies, all are stopped, as for a single walker.

``--resume`` continues every walker from the newest step S for which all of
them have a complete checkpoint (or ``RESTART``); without one they start again
from step 0. The servers set aside frames and hills of steps >= S (see
:mod:`biasserver.server`), so the walkers continue together in lockstep with
nothing lost or counted twice.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import yaml

from . import checkpoint
from .config import RunConfig, as_dict, keep_aside
from .mpilaunch import mpi_command, mpi_environment
from .protocol import parse_address
from .runner import (Run, RunFailed, _remove_stale_socket, _socket_name, ipi_command, ipi_total_steps,
                     stop_process_groups, this_environment, write_ipi_input)
from .walkers import PLACEHOLDER, for_walker


def walker_seed(xml_path: str, walker: int) -> int:
    """Set the i-PI input's ``<prng><seed>`` to its value plus ``walker`` (i-PI's
    default seed 12345 when it has none); returns the seed."""
    tree = ET.parse(xml_path)
    root = tree.getroot()
    prng = root.find("prng")
    if prng is None:
        prng = ET.SubElement(root, "prng")
    seed = prng.find("seed")
    if seed is None:
        seed = ET.SubElement(prng, "seed")
        seed.text = " 12345 "
    value = int(seed.text.strip()) + walker
    seed.text = f" {value} "
    tree.write(xml_path)
    return value


def restart_points(folder: str, ipi_input: str) -> dict[int, str]:
    """Complete i-PI restart files of one walker folder: step -> file (the newest
    file for each step)."""
    stems = checkpoint.checkpoint_names(ipi_input)
    points: dict[int, tuple[float, str]] = {}
    for entry in sorted(os.listdir(folder)):
        if entry != checkpoint.RESTART and not any(
                entry == s or (entry.startswith(s + "_") and entry[len(s) + 1:].isdigit()) for s in stems):
            continue
        path = os.path.join(folder, entry)
        try:
            step = checkpoint.restart_step(path)
        except checkpoint.CheckpointError:
            continue
        mtime = os.path.getmtime(path)
        if step not in points or points[step][0] < mtime:
            points[step] = (mtime, path)
    return {step: path for step, (_, path) in points.items()}


class WalkerRun(Run):
    """The processes of one variant with ``walkers: N`` (see the module docstring)."""

    def __init__(self, config: RunConfig, variant: str, outdir: str, steps: int | None, resume: bool = False):
        self.config, self.variant, self.outdir = config, variant, outdir
        self.walkers = int(config.walkers)
        self.example = os.path.dirname(config.path)
        tag = f"gmetad-{os.getpid()}-{variant}"
        self.ipi_sockets = [f"{tag}-w{r}" for r in range(self.walkers)]
        self.ref_sockets = [f"{tag}-w{r}-ref" for r in range(self.walkers)]
        self.processes: dict[str, subprocess.Popen] = {}
        self._ended: dict[str, float] = {}
        self._ranks: set[int] = set()
        self.restart_file, self.restart_step = None, None
        self.folders = [os.path.join(outdir, f"walker-{r}") for r in range(self.walkers)]
        if resume:
            self._prepare_resume(steps)
            return
        self.ipi_inputs = ["input.xml"] * self.walkers
        old_socket = _socket_name(for_walker(config.server.ipi, 0))
        for r, folder in enumerate(self.folders):
            os.makedirs(folder, exist_ok=True)
            target = os.path.join(folder, "input.xml")
            self.prefix = write_ipi_input(config.run.ipi_input, target, self.ipi_sockets[r], old_socket, steps,
                                          os.path.dirname(config.run.ipi_input), restartable=True,
                                          checkpoint_stride=config.run.checkpoint_stride)
            walker_seed(target, r)
        self.total_steps = steps or ipi_total_steps(os.path.join(self.folders[0], "input.xml"))
        data = as_dict(config)
        data.pop("run")
        data["server"].update(ipi=f"unix:{tag}-w{PLACEHOLDER}", listen=f"unix:{tag}-w{PLACEHOLDER}-ref",
                              ipi_restart=None)
        data["bias"].update(hills_file=os.path.join(outdir, "HILLS"), restart=False,
                            enabled=config.bias.enabled and variant == "gmetad")
        data["recorder"]["path"] = os.path.join(outdir, f"walker-{PLACEHOLDER}", "frames.extxyz")
        data["walkers"] = self.walkers
        with open(os.path.join(outdir, "gmetad.yaml"), "w") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)

    def _prepare_resume(self, steps: int | None) -> None:
        """Every walker from the newest step all of them have a restart file for."""
        yaml_path = os.path.join(self.outdir, "gmetad.yaml")
        with open(yaml_path) as handle:
            data = yaml.safe_load(handle)
        originals = [os.path.join(folder, "input.xml") for folder in self.folders]
        points = [restart_points(folder, original) for folder, original in zip(self.folders, originals)]
        common = set.intersection(*(set(p) for p in points))
        self.restart_step = max(common) if common else 0
        files = [p[self.restart_step] if common else original for p, original in zip(points, originals)]
        self.restart_file = files[0]
        self.ipi_inputs = [f"resume-{self.restart_step}.xml"] * self.walkers
        for r in range(self.walkers):
            _remove_stale_socket(_socket_name(for_walker(data["server"]["ipi"], r)))
            _remove_stale_socket(_socket_name(for_walker(data["server"]["listen"], r)))
        old_ipi = data["server"]["ipi"]
        for r, folder in enumerate(self.folders):
            target = os.path.join(folder, self.ipi_inputs[r])
            if os.path.exists(target):
                keep_aside(target)
            self.prefix = write_ipi_input(files[r], target, self.ipi_sockets[r],
                                          _socket_name(for_walker(old_ipi, r)), steps, folder)
            for name in ("i-pi", "driver"):
                log = os.path.join(folder, f"{name}.log")
                if os.path.exists(log):
                    keep_aside(log)
        self.total_steps = ipi_total_steps(os.path.join(self.folders[0], self.ipi_inputs[0]))
        tag = self.ipi_sockets[0][:-len("-w0")]
        data["server"].update(ipi=f"unix:{tag}-w{PLACEHOLDER}", listen=f"unix:{tag}-w{PLACEHOLDER}-ref",
                              ipi_restart=os.path.join(self.outdir, f"walker-{PLACEHOLDER}",
                                                       f"resume-{self.restart_step}.xml"))
        data["bias"]["restart"] = True
        tmp = yaml_path + ".tmp"
        with open(tmp, "w") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)
        os.replace(tmp, yaml_path)
        if os.path.exists(self._log("server")):
            keep_aside(self._log("server"))

    # -- processes ---------------------------------------------------------------
    def _log(self, name: str) -> str:
        if " " in name:   # "i-pi 1", "driver 1": in the walker's folder
            kind, r = name.split()
            return os.path.join(self.folders[int(r)], f"{kind}.log")
        return os.path.join(self.outdir, f"{name}.log")

    def _start_in(self, name: str, argv: list[str], cwd: str, env: dict | None = None) -> None:
        log = open(self._log(name), "w")
        self.processes[name] = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def start(self) -> None:
        for r, folder in enumerate(self.folders):
            self._start_in(f"i-pi {r}", ipi_command() + [self.ipi_inputs[r]], folder)
        for r in range(self.walkers):
            self._wait_for_socket(f"i-pi {r}", self.ipi_sockets[r])
        serve = [sys.executable, "-m", "biasserver.cli", "serve", "gmetad.yaml"]
        self._start_in("server", mpi_command(self.walkers, serve), self.outdir, mpi_environment())
        for r in range(self.walkers):
            self._wait_for_socket("server", self.ref_sockets[r])
        driver = self.config.run.driver
        if not driver:
            raise RunFailed(f"{self.config.path}: 'run.driver' is not set: no force client to start")
        for r, folder in enumerate(self.folders):
            fields = {"address": f"unix:{self.ref_sockets[r]}", "socket": self.ref_sockets[r],
                      "structure": self.config.structure, "dir": self.example}
            self._start_in(f"driver {r}", this_environment([w.format(**fields) for w in shlex.split(driver)]),
                           folder)

    def _check_alive(self) -> None:
        """As :meth:`Run._check_alive`; also remembers the MPI ranks (children of
        mpirun) so that :meth:`stop` can end them if mpirun is gone."""
        server = self.processes.get("server")
        if server is not None and server.poll() is None:
            self._ranks.update(child_pids(server.pid))
        super()._check_alive()

    def _blame(self, name: str, code: int) -> tuple[str, int]:
        """When a driver or i-PI failed because an MPI rank died (its socket closed),
        let mpirun end the job and report the rank (up to 15 s): that is the failure
        to show."""
        server = self.processes.get("server")
        if name == "server" or server is None or server.poll() is not None:
            return name, code
        if not any(not _alive(pid) for pid in self._ranks):
            return name, code
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            return name, code
        return ("server", server.returncode) if server.returncode != 0 else (name, code)

    def progress(self) -> str:
        steps = []
        for folder in self.folders:
            step = 0
            try:
                with open(os.path.join(folder, f"{self.prefix}.out"), "rb") as handle:
                    handle.seek(0, os.SEEK_END)
                    handle.seek(max(0, handle.tell() - 400))
                    last = handle.read().decode(errors="replace").strip().splitlines()[-1]
                    if not last.startswith("#"):
                        step = int(float(last.split()[0]))
            except (OSError, IndexError, ValueError):
                pass
            steps.append(step)
        hills = 0
        try:
            with open(os.path.join(self.outdir, "HILLS")) as handle:
                hills = sum(1 for line in handle if line.strip() and not line.startswith("#"))
        except OSError:
            pass
        per_walker = ", ".join(f"walker {r} step {s}" for r, s in enumerate(steps))
        return f"[{self.variant}] {per_walker} of {self.total_steps}; {hills} hills"

    def stop(self) -> None:
        """Terminate every process group (mpirun forwards SIGTERM to its ranks), then
        kill what lingers, MPI ranks whose mpirun is gone included."""
        stop_process_groups(self.processes.values())
        for pid in self._ranks:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if b"biasserver.cli" not in handle.read():
                        continue   # ended, its id taken by another process
                os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        for name in self.ipi_sockets + self.ref_sockets:
            path = parse_address(f"unix:{name}").path
            if os.path.exists(path):
                os.unlink(path)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (exists and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def child_pids(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found
