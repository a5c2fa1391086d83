"""``gmetad run DIR``: i-PI, the bias server and a force client for one example.

For each variant (``gmetad``, and ``plain`` with the bias off when the example's
``run.plain`` is set) the runner writes a private copy of the i-PI input and of
the YAML into ``DIR/output/<variant>/`` with fresh socket names, starts i-PI,
the server and the driver, shows progress, and stops all three: when i-PI
finishes, when one of them dies (saying which, with the tail of its log), or on
Ctrl-C. An earlier output folder is kept aside as ``output.N``, never deleted.
Then the example's ``run.analysis`` command runs in the output folder.

The private i-PI input writes a checkpoint every ``run.checkpoint_stride`` steps
(``<prefix>.checkpoint_K``, unless the input has its own ``<checkpoint>``) with
floats at full precision (``floatformat='%.16e'`` unless the input sets one),
so that ``gmetad run DIR --resume`` continues a stopped or killed run exactly:
it restarts i-PI from the newest complete checkpoint or ``RESTART`` of each
variant's folder (see :mod:`biasserver.checkpoint`), the server with
``server.ipi_restart`` naming it (frames and hills of that step and later go to
side files ``*.after-<step>``), and the driver. Earlier logs are kept as
``<name>.log.N``; a variant whose i-PI had finished is not run again.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import xml.etree.ElementTree as ET

import yaml

from . import checkpoint
from .config import RunConfig, as_dict, keep_aside, load
from .protocol import parse_address

POLL_SECONDS = 0.2
#: i-PI's float format in the private input unless the input sets one: 17 significant
#: digits, so that a checkpoint restarts the trajectory exactly (i-PI's default has 9)
EXACT_FLOATFORMAT = "%.16e"
#: name of the checkpoint output added to the private input
CHECKPOINT_NAME = "checkpoint"


class RunFailed(RuntimeError):
    """One of the processes of a run failed; the message says which and why."""


def ipi_command() -> list[str]:
    """argv prefix that starts i-PI with this interpreter.

    i-PI installs ``i-pi`` as a plain script in the environment's ``bin``; a
    ``venv/bin/gmetad`` started without an activated environment does not have
    that folder on PATH, so look beside the interpreter first."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, "i-pi")
        if os.path.isfile(candidate):
            return [sys.executable, candidate]
    found = shutil.which("i-pi")
    if found is None:
        raise RunFailed("i-PI is not installed in this environment (no 'i-pi' script beside "
                        f"{sys.executable} nor on PATH): pip install ipi")
    return [sys.executable, found]


def this_environment(argv: list[str]) -> list[str]:
    """A command of the YAML run with this installation, whatever PATH holds:
    ``gmetad ...`` and ``python ...`` become this interpreter's."""
    if argv and argv[0] == "gmetad":
        return [sys.executable, "-m", "biasserver.cli"] + argv[1:]
    if argv and argv[0] in ("python", "python3"):
        return [sys.executable] + argv[1:]
    return argv


def _socket_name(address: str) -> str:
    """i-PI's bare socket name of a ``unix:NAME`` address."""
    if not address.startswith("unix:") or "/" in address[5:]:
        raise ValueError(f"gmetad run needs unix:NAME addresses (i-PI's convention), got {address!r}")
    return address[5:]


def write_ipi_input(source: str, target: str, ipi_socket: str, old_socket: str,
                    steps: int | None, base: str, restartable: bool = False,
                    checkpoint_stride: int | None = None) -> str:
    """Copy an i-PI input (or checkpoint), pointing the ffsocket at ``ipi_socket``,
    making file paths absolute and optionally setting total_steps. ``restartable``:
    also make its restart files continue the run exactly: EXACT_FLOATFORMAT unless
    the input sets a floatformat, and with ``checkpoint_stride`` a checkpoint every
    that many steps unless the input writes one. Returns the output prefix."""
    tree = ET.parse(source)
    root = tree.getroot()
    output = root.find("output")
    if restartable:
        root.attrib.setdefault("floatformat", EXACT_FLOATFORMAT)
    if restartable and checkpoint_stride is not None:
        if output is not None and output.find("checkpoint") is None:
            ET.SubElement(output, "checkpoint", filename=CHECKPOINT_NAME, stride=str(int(checkpoint_stride)),
                          overwrite="false")
    sockets = [s for s in root.iter("ffsocket") if (s.findtext("address") or "").strip() == old_socket]
    if not sockets:
        raise ValueError(f"{source}: no <ffsocket> with <address> {old_socket} (server.ipi of the YAML)")
    for s in sockets:
        s.find("address").text = f" {ipi_socket} "
    for f in root.iter("file"):
        path = (f.text or "").strip()
        if path and not os.path.isabs(path):
            f.text = f" {os.path.join(base, path)} "
    if steps is not None:
        node = root.find("total_steps")
        if node is None:
            node = ET.SubElement(root, "total_steps")
        node.text = f" {int(steps)} "
    tree.write(target)
    return output.get("prefix", "i-pi") if output is not None else "i-pi"


#: i-PI's total_steps when its input (or a restart file it wrote) has none: i-PI
#: leaves the default out of the restart files it writes
IPI_DEFAULT_TOTAL_STEPS = 1000


def ipi_total_steps(path: str) -> int:
    """The total_steps of an i-PI input or restart file (i-PI's default when absent)."""
    text = ET.parse(path).findtext("total_steps")
    return int(text) if text is not None and text.strip() else IPI_DEFAULT_TOTAL_STEPS


def _remove_stale_socket(name: str) -> None:
    """Remove the socket file of a killed run's ``unix:NAME`` address when nothing
    listens on it any more (a connection is refused)."""
    import socket
    path = parse_address(f"unix:{name}").path
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


def is_ipi(name: str) -> bool:
    """Whether a run's process ``name`` is an i-PI: "i-pi", or "i-pi <r>" of walker r."""
    return name.split()[0] == "i-pi"


def stop_process_groups(processes, grace: float = 10.0) -> None:
    """SIGTERM to the process group of every process still running, then SIGKILL to
    those that have not ended ``grace`` seconds later."""
    processes = list(processes)
    for proc in processes:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Run:
    """The three processes of one variant, started and stopped together."""

    def __init__(self, config: RunConfig, variant: str, outdir: str, steps: int | None, resume: bool = False):
        self.config, self.variant, self.outdir = config, variant, outdir
        self.example = os.path.dirname(config.path)
        tag = f"gmetad-{os.getpid()}-{variant}"
        self.ipi_socket, self.ref_socket = tag, f"{tag}-ref"
        self.processes: dict[str, subprocess.Popen] = {}
        self._ended: dict[str, float] = {}
        #: resumed runs: i-PI's restart file and step
        self.restart_file, self.restart_step = None, None
        if resume:
            self._prepare_resume(steps)
            return
        os.makedirs(outdir, exist_ok=True)   # a resumed job whose variant had not started
        #: the i-PI input, in outdir
        self.ipi_input = "input.xml"
        self.prefix = write_ipi_input(config.run.ipi_input, os.path.join(outdir, "input.xml"),
                                      self.ipi_socket, _socket_name(config.server.ipi), steps,
                                      os.path.dirname(config.run.ipi_input), restartable=True,
                                      checkpoint_stride=config.run.checkpoint_stride)
        self.total_steps = steps or ipi_total_steps(os.path.join(outdir, "input.xml"))
        data = as_dict(config)
        data.pop("run")
        data["server"].update(ipi=f"unix:{self.ipi_socket}", listen=f"unix:{self.ref_socket}")
        data["bias"].update(hills_file=os.path.join(outdir, "HILLS"), restart=False,
                            enabled=config.bias.enabled and variant == "gmetad")
        data["recorder"]["path"] = os.path.join(outdir, "frames.extxyz")
        with open(os.path.join(outdir, "gmetad.yaml"), "w") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)

    @property
    def complete(self) -> bool:
        """Whether i-PI had already done all its steps (a resumed run with nothing left)."""
        return self.restart_step is not None and self.restart_step >= self.total_steps

    def _prepare_resume(self, steps: int | None) -> None:
        """Continue the run in outdir: i-PI from its newest restart file (or from the
        start when it wrote none), with this runner's sockets; the server with
        ``server.ipi_restart`` naming that file; earlier logs kept aside."""
        yaml_path = os.path.join(self.outdir, "gmetad.yaml")
        with open(yaml_path) as handle:
            data = yaml.safe_load(handle)
        original = os.path.join(self.outdir, "input.xml")
        found = checkpoint.newest(self.outdir, original)
        self.restart_file, self.restart_step = found if found is not None else (original, 0)
        self.ipi_input = f"resume-{self.restart_step}.xml"
        target = os.path.join(self.outdir, self.ipi_input)
        if os.path.exists(target):
            keep_aside(target)
        for address in (data["server"]["ipi"], data["server"]["listen"]):
            _remove_stale_socket(_socket_name(address))
        self.prefix = write_ipi_input(self.restart_file, target, self.ipi_socket,
                                      _socket_name(data["server"]["ipi"]), steps, self.outdir)
        self.total_steps = ipi_total_steps(target)
        data["server"].update(ipi=f"unix:{self.ipi_socket}", listen=f"unix:{self.ref_socket}", ipi_restart=target)
        data["bias"]["restart"] = True
        tmp = yaml_path + ".tmp"
        with open(tmp, "w") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)
        os.replace(tmp, yaml_path)
        for name in ("i-pi", "server", "driver"):
            if os.path.exists(self._log(name)):
                keep_aside(self._log(name))

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(os.path.join(self.outdir, f"{name}.log"), "w")
        self.processes[name] = subprocess.Popen(argv, cwd=self.outdir, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def start(self) -> None:
        self._start("i-pi", ipi_command() + [self.ipi_input])
        self._wait_for_socket("i-pi", self.ipi_socket)
        self._start("server", [sys.executable, "-m", "biasserver.cli", "serve", "gmetad.yaml"])
        # DFT codes try to connect once and give up: start them when the proxy listens
        self._wait_for_socket("server", self.ref_socket)
        driver = self.config.run.driver
        if not driver:
            raise RunFailed(f"{self.config.path}: 'run.driver' is not set: no force client to start")
        fields = {"address": f"unix:{self.ref_socket}", "socket": self.ref_socket,
                  "structure": self.config.structure, "dir": self.example}
        self._start("driver", this_environment([w.format(**fields) for w in shlex.split(driver)]))

    def _wait_for_socket(self, name: str, socket_name: str, seconds: float = 60) -> None:
        path = parse_address(f"unix:{socket_name}").path
        deadline = time.monotonic() + seconds
        while not os.path.exists(path):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RunFailed(f"the {name} did not open its socket {path} within {seconds:.0f} s; "
                                f"see {self._log(name)}")
            time.sleep(POLL_SECONDS)

    def _log(self, name: str) -> str:
        return os.path.join(self.outdir, f"{name}.log")

    def _tail(self, name: str, lines: int = 8) -> str:
        try:
            with open(self._log(name)) as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""

    def _check_alive(self) -> None:
        """Raise RunFailed when a process failed, or ended cleanly but left i-PI hanging."""
        for name, proc in self.processes.items():
            code = proc.poll()
            if code is None or (code == 0 and is_ipi(name)):
                continue
            if code == 0:
                # the server and driver end on i-PI's EXIT, just before i-PI itself exits
                self._ended.setdefault(name, time.monotonic())
                if time.monotonic() - self._ended[name] < 30:
                    continue
                ipi = next((n for n, p in self.processes.items() if is_ipi(n) and p.poll() is None), "i-pi")
                raise RunFailed(f"the {name} ended but i-PI did not finish within 30 s; "
                                f"see {self._log(ipi)}:\n{self._tail(ipi)}")
            name, code = self._blame(name, code)
            raise RunFailed(f"the {name} process exited with code {code} before i-PI finished; "
                            f"last lines of {self._log(name)}:\n{self._tail(name)}")

    def _blame(self, name: str, code: int) -> tuple[str, int]:
        """The failure to report when process ``name`` exited with ``code`` (itself here)."""
        return name, code

    def progress(self) -> str:
        step = 0
        try:
            with open(os.path.join(self.outdir, f"{self.prefix}.out"), "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 400))
                last = handle.read().decode(errors="replace").strip().splitlines()[-1]
                if not last.startswith("#"):
                    step = int(float(last.split()[0]))
        except (OSError, IndexError, ValueError):
            pass
        hills = 0
        try:
            with open(os.path.join(self.outdir, "HILLS")) as handle:
                hills = sum(1 for line in handle if line and not line.startswith("#"))
        except OSError:
            pass
        return f"[{self.variant}] step {step}/{self.total_steps}, {hills} hills"

    def wait(self) -> None:
        """Wait for every i-PI to finish (printing progress), then for the others to exit."""
        last_print = 0.0
        interactive = sys.stderr.isatty()
        ipis = [proc for name, proc in self.processes.items() if is_ipi(name)]
        while any(proc.poll() is None for proc in ipis):
            self._check_alive()
            now = time.monotonic()
            if now - last_print > (0.5 if interactive else 15):
                print(("\r" if interactive else "") + self.progress(), end="" if interactive else "\n",
                      file=sys.stderr, flush=True)
                last_print = now
            time.sleep(POLL_SECONDS)
        if interactive:
            print(file=sys.stderr)
        self._check_alive()
        for name, proc in self.processes.items():
            if is_ipi(name):
                continue
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise RunFailed(f"the {name} did not exit within 60 s after i-PI finished") from None
            if code != 0:
                raise RunFailed(f"the {name} process exited with code {code}; last lines of "
                                f"{self._log(name)}:\n{self._tail(name)}")
        print(self.progress() + " - done", file=sys.stderr)

    def stop(self) -> None:
        """Terminate whatever still runs (process groups), then kill after a grace period."""
        stop_process_groups(self.processes.values())
        for name in (self.ipi_socket, self.ref_socket):
            path = parse_address(f"unix:{name}").path
            if os.path.exists(path):
                os.unlink(path)


def run_example(directory: str, steps: int | None = None, only: str | None = None,
                output: str | None = None, resume: bool = False) -> int:
    """Run an example folder, or with ``resume`` continue its stopped run in
    ``output`` (see module docstring); returns a process exit code."""
    config_path = os.path.join(directory, "gmetad.yaml")
    if not os.path.exists(config_path):
        print(f"gmetad run: {config_path} not found (an example folder holds gmetad.yaml, "
              "input.xml and the structure)", file=sys.stderr)
        return 2
    config = load(os.path.abspath(config_path))
    output = os.path.abspath(output or os.path.join(directory, "output"))
    if resume and not os.path.isdir(output):
        print(f"gmetad run --resume: no earlier output {output} to continue", file=sys.stderr)
        return 2
    if os.path.exists(output) and not resume:
        print(f"gmetad run: earlier output kept as {keep_aside(output)}", file=sys.stderr)
    variants = ["gmetad"] + (["plain"] if config.run.plain else [])
    if only:
        variants = [only]
    for variant in variants:
        outdir = os.path.join(output, variant)
        continued = resume and os.path.exists(os.path.join(outdir, "gmetad.yaml"))
        # a resumed run keeps its own length unless --steps says otherwise
        kind = Run
        if config.walkers is not None:   # N i-PI runs, N drivers, one MPI job of servers
            from .walkerrun import WalkerRun as kind
        run = kind(config, variant, outdir, steps if continued else steps or config.run.steps, resume=continued)
        if run.complete:
            print(f"gmetad run: {variant} run in {outdir} had finished ({run.total_steps} steps)", file=sys.stderr)
            continue
        if continued:
            print(f"gmetad run: {variant} run in {outdir} resumed at step {run.restart_step} "
                  f"from {os.path.basename(run.restart_file)}", file=sys.stderr)
        else:
            print(f"gmetad run: {variant} run in {run.outdir}", file=sys.stderr)
        try:
            run.start()
            run.wait()
        except RunFailed as err:
            print(f"gmetad run: {err}\ngmetad run: stopped i-PI, the server and the driver", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\ngmetad run: interrupted; stopping i-PI, the server and the driver "
                  f"(output so far in {run.outdir})", file=sys.stderr)
            return 130
        finally:
            run.stop()
    if config.run.analysis:
        argv = this_environment([w.format(dir=os.path.dirname(config.path), output=output)
                                 for w in shlex.split(config.run.analysis)])
        code = subprocess.call(argv, cwd=output)
        if code != 0:
            print(f"gmetad run: the analysis '{config.run.analysis}' exited with code {code}", file=sys.stderr)
            return 1
    return 0


def main(args) -> int:
    return run_example(args.directory, args.steps, args.only, args.output, getattr(args, "resume", False))
