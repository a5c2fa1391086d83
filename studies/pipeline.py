"""The study pipeline shared by every system: sample, select, train, test, compare.

A study is a sequence of named **stages** run by :class:`Pipeline`. Each stage
works in its own folder ``WORKDIR/<stage>/`` and, when it has finished, writes a
done-marker ``WORKDIR/stages/<stage>.json`` holding its settings, the keys of
the stages it used, its outputs (JSON) and its wall time. A rerun skips every
stage whose marker matches; a run that was interrupted resumes at the first
unfinished stage (and inside it where the stage can: sampling runs restart from
i-PI's checkpoints, trainings from their checkpoints, property evaluations per
committee member); changing a stage's settings changes its key and therefore
the keys of all stages after it, which are redone.

Building blocks (system-independent):

- :class:`RunSpec` and :func:`sample`: one MD or G-metaD run through the real
  path (i-PI + ``gmetad serve`` + a ``gmetad driver``), via
  :mod:`biasserver.runner`; plain MD is the same run with the bias off.
- :func:`md_log`, :func:`stability`: what i-PI's property file says about a run
  (temperature held, cell volume, no blow-up).
- :func:`coverage_curves`: the coverage measure (:mod:`biasserver.coverage`) of
  each run against simulated time.
- :func:`select_equal_budget`: the same number of frames from every training set
  by the same rule (a strided pool, then farthest-point sampling of
  environments), and held-out test frames from what is left.
- :func:`train_committee`: a committee NNP through :mod:`nnp`, identical settings
  for every set.
- :func:`cross_table`: each NNP's energy and force errors on each set's test frames.
- :func:`property_task`, :func:`summarise_members`: a property function evaluated
  with every committee member separately (and with the truth), then mean and
  spread over members; :func:`parallel` runs such tasks side by side.

Units: angstrom, eV, eV/A, K, fs; times in ps for the coverage curves.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TextIO

import numpy as np
import yaml
from ase import Atoms
from ase.io import read, write

#: i-PI socket placeholder of the generated inputs (the runner replaces it)
SOCKET = "gmetad-study"


# ------------------------------------------------------------------ stage cache


class StageError(RuntimeError):
    """A stage failed; the message names the stage and the cause."""


def _key(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as indented JSON atomically (NaN written as null)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(_plain(data), handle, indent=1, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)


def _plain(x: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays to Python, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


class Pipeline:
    """Stages with done-markers in ``workdir`` (see the module docstring).

    stream: where progress lines go. ``stop_after``: name of a stage after which
    :meth:`stage` raises :class:`StopRequested` (tests of resumption).
    """

    def __init__(self, workdir: str, stream: TextIO = sys.stderr, stop_after: str | None = None):
        self.workdir = os.path.abspath(workdir)
        self.stream = stream
        self.stop_after = stop_after
        self.markers: dict[str, dict] = {}
        self.ran: list[str] = []       # stages computed (not taken from the cache) in this process
        self.started = time.monotonic()
        os.makedirs(os.path.join(self.workdir, "stages"), exist_ok=True)

    def path(self, *parts: str) -> str:
        """A path inside the work folder."""
        return os.path.join(self.workdir, *parts)

    def relative(self, path: str) -> str:
        """``path`` relative to the work folder, as stage outputs store files (a moved
        work folder still resolves them)."""
        return os.path.relpath(path, self.workdir)

    def relative_paths(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """``outputs`` (a stage's output dict) with every absolute path inside the
        work folder made :meth:`relative`; other values as they are."""
        inside = self.workdir + os.sep
        return {k: self.relative(v) if isinstance(v, str) and v.startswith(inside) else v
                for k, v in outputs.items()}

    def absolute(self, path: str) -> str:
        """A stored path (relative to the work folder, or absolute) as an absolute path."""
        return path if os.path.isabs(path) else self.path(path)

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed / 60:5.1f} min] {message}", file=self.stream, flush=True)

    def _marker_path(self, name: str, kind: str = "") -> str:
        return self.path("stages", f"{name}{kind}.json")

    def stage(self, name: str, settings: Mapping[str, Any], fn: Callable[[str, bool], Any],
              depends: Sequence[str] = (), adopt: Callable[[str], bool] | None = None) -> Any:
        """Run stage ``name`` unless its done-marker matches, and return its outputs.

        fn(folder, resume) does the work in ``folder`` (created; ``resume`` True
        when an earlier attempt with the same key was interrupted there) and
        returns JSON-able outputs. ``depends``: earlier stages whose results it
        uses (their keys enter this stage's key). ``adopt(folder)``: for stages
        whose work can be recognised in their folder (a sampling run:
        :func:`run_matches`); when it says the folder already holds this stage's
        work (begun or finished, e.g. a run made outside the pipeline), the stage
        resumes there instead of clearing the folder, and ``fn`` finishes or
        merely collects that work."""
        missing = [d for d in depends if d not in self.markers]
        if missing:
            raise StageError(f"stage {name}: depends on {', '.join(missing)}, which did not run first")
        inputs = {d: self.markers[d]["key"] for d in depends}
        key = _key({"stage": name, "settings": settings, "inputs": inputs})
        done_path = self._marker_path(name)
        if os.path.exists(done_path):
            with open(done_path) as handle:
                marker = json.load(handle)
            if marker.get("key") == key:
                self.markers[name] = marker
                self.say(f"{name}: done earlier ({marker['seconds']:.0f} s), skipped")
                return marker["outputs"]
            self.say(f"{name}: settings or inputs changed since it ran: redoing it")
            os.remove(done_path)
        folder = self.path(name)
        started_path = self._marker_path(name, ".started")
        resume = False
        if os.path.exists(started_path) and os.path.isdir(folder):
            with open(started_path) as handle:
                resume = json.load(handle).get("key") == key
        if not resume and adopt is not None and os.path.isdir(folder) and adopt(folder):
            resume = True
            self.say(f"{name}: {folder} holds this stage's own work: continuing it")
        if not resume and os.path.isdir(folder):
            shutil.rmtree(folder)   # another key's leftovers: never mixed into this result
        os.makedirs(folder, exist_ok=True)
        write_json(started_path, {"key": key})
        self.say(f"{name}: {'resuming' if resume else 'starting'}")
        t0 = time.monotonic()
        try:
            outputs = fn(folder, resume)
        except Exception as err:
            raise StageError(f"stage {name} failed: {type(err).__name__}: {err}") from err
        seconds = time.monotonic() - t0
        marker = {"stage": name, "key": key, "settings": settings, "inputs": inputs,
                  "outputs": outputs, "seconds": seconds,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(done_path, marker)
        os.remove(started_path)
        self.markers[name] = json.loads(json.dumps(_plain(marker)))
        self.ran.append(name)
        self.say(f"{name}: done in {seconds:.0f} s")
        if self.stop_after == name:
            raise StopRequested(f"stopped after stage {name}")
        return self.markers[name]["outputs"]

    def timings(self) -> dict[str, float]:
        """Seconds each known stage took when it ran."""
        return {name: float(m["seconds"]) for name, m in self.markers.items()}


class StopRequested(Exception):
    """Raised after the stage named by ``Pipeline.stop_after`` (tests of resumption)."""


# ------------------------------------------------------------------ sampling runs


@dataclass
class RunSpec:
    """One sampling run through i-PI + ``gmetad serve`` + a driver.

    structure: starting configuration (an Atoms, periodic); steps: MD steps
    (steps + 1 reference evaluations, step 0 included); temperature (K) of the
    Langevin thermostat and of the initial velocities; timestep (fs);
    ensemble: ``nvt`` or ``npt`` (i-PI's flexible MTTK cell: shape and volume
    change, at ``pressure`` GPa); bias: None for plain MD, else the ``bias``
    section of the run YAML (height eV, width A, stride, well_tempered K, ...);
    walls: the YAML's wall list (also in plain MD if given); driver: the force
    client's command (``gmetad driver NAME ...``); seed: i-PI's random seed;
    tau: thermostat time constant (fs); barostat_tau (fs); fixed: indices of
    atoms i-PI holds in place (``<fixatoms>``, e.g. a slab's bottom layers).
    """

    name: str
    structure: Atoms
    steps: int
    temperature: float
    driver: str
    ensemble: str = "nvt"
    bias: dict | None = None
    walls: list = field(default_factory=list)
    seed: int = 1
    timestep: float = 1.0
    tau: float = 100.0
    barostat_tau: float = 500.0
    pressure: float = 0.0
    property_stride: int = 10
    fixed: list = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """JSON description (for stage keys and reports)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "structure"}
        if not self.fixed:
            d.pop("fixed")      # runs without fixed atoms keep the keys they had before the field existed
        s = self.structure
        d["structure"] = {"symbols": s.get_chemical_formula(), "cell": np.round(s.cell.array, 6).tolist(),
                          "positions_sha": hashlib.sha256(np.round(s.positions, 6).tobytes()).hexdigest()[:12]}
        return d


IPI_TEMPLATE = """<simulation verbosity='low' safe_stride='100'>
  <!-- {name}: generated by studies.pipeline -->
  <output prefix='md'>
    <properties stride='{property_stride}' filename='out' flush='10'>
      [ step, time{{picosecond}}, conserved{{electronvolt}}, temperature{{kelvin}},
        potential{{electronvolt}}, pressure_md{{gigapascal}}, volume{{angstrom3}} ]
    </properties>
  </output>
  <total_steps> {steps} </total_steps>
  <prng><seed> {seed} </seed></prng>
  <ffsocket name='gmetad' mode='unix' pbc='false'>
    <address> {socket} </address>
    <latency> 1e-4 </latency>
    <consolidate_messages> false </consolidate_messages>
  </ffsocket>
  <system>
    <initialize nbeads='1'>
      <file mode='ase' units='angstrom'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> {temperature} </velocities>
    </initialize>
    <forces>
      <force forcefield='gmetad'/>
    </forces>
    <motion mode='dynamics'>{fixatoms}
      <dynamics mode='{ensemble}'>
        <timestep units='femtosecond'> {timestep} </timestep>
        <thermostat mode='langevin'>
          <tau units='femtosecond'> {tau} </tau>
        </thermostat>{barostat}
      </dynamics>
    </motion>
    <ensemble>
      <temperature units='kelvin'> {temperature} </temperature>{pressure_tag}
    </ensemble>
  </system>
</simulation>
"""

BAROSTAT = """
        <barostat mode='flexible'>
          <tau units='femtosecond'> {barostat_tau} </tau>
          <thermostat mode='langevin'>
            <tau units='femtosecond'> {tau} </tau>
          </thermostat>
        </barostat>"""


def write_run_directory(spec: RunSpec, folder: str, symmetry: Mapping[str, Any]) -> str:
    """Write ``folder/{init.xyz, input.xml, gmetad.yaml}`` for ``spec``: an example
    folder :func:`biasserver.runner.run_example` can run. ``symmetry``: the YAML's
    symmetry section. Returns the folder."""
    if spec.ensemble not in ("nvt", "npt"):
        raise ValueError(f"run {spec.name}: ensemble must be nvt or npt, got {spec.ensemble!r}")
    if not spec.structure.pbc.all():
        raise ValueError(f"run {spec.name}: the structure must be periodic in all three directions")
    os.makedirs(folder, exist_ok=True)
    write(os.path.join(folder, "init.xyz"), spec.structure, format="extxyz")
    fields = dataclasses.asdict(spec)
    fields.pop("structure")
    barostat = BAROSTAT.format(**fields) if spec.ensemble == "npt" else ""
    pressure = (f"\n      <pressure units='gigapascal'> {spec.pressure} </pressure>"
                if spec.ensemble == "npt" else "")
    fixatoms = (f"\n      <fixatoms> [ {', '.join(str(int(i)) for i in spec.fixed)} ] </fixatoms>"
                if spec.fixed else "")
    with open(os.path.join(folder, "input.xml"), "w") as handle:
        handle.write(IPI_TEMPLATE.format(**fields, socket=SOCKET, barostat=barostat, pressure_tag=pressure,
                                         fixatoms=fixatoms))
    species = {e: 1.0 for e in sorted(set(spec.structure.get_chemical_symbols()))}
    bias = {"height": 0.001, "width": 1.0, "stride": 20, "species": species}
    bias.update(spec.bias or {})
    bias.update(walls=list(spec.walls), hills_file="HILLS", restart=False, enabled=spec.bias is not None)
    config = {
        "structure": "init.xyz",
        "symmetry": dict(symmetry),
        "bias": bias,
        "server": {"mode": "proxy", "ipi": f"unix:{SOCKET}", "listen": f"unix:{SOCKET}-ref"},
        "recorder": {"path": "frames.extxyz", "fsync": False},
        "run": {"ipi_input": "input.xml", "driver": spec.driver, "steps": int(spec.steps),
                "checkpoint_stride": 200},
    }
    with open(os.path.join(folder, "gmetad.yaml"), "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    return folder


def run_matches(spec: RunSpec, folder: str, symmetry: Mapping[str, Any]) -> bool:
    """Whether ``folder`` holds a run of exactly ``spec``: its ``init.xyz``,
    ``input.xml`` and ``gmetad.yaml`` are byte for byte those
    :func:`write_run_directory` writes for it (then :func:`sample` continues or,
    when it had finished, only collects that run)."""
    import filecmp
    import tempfile

    names = ("init.xyz", "input.xml", "gmetad.yaml")
    if not all(os.path.isfile(os.path.join(folder, n)) for n in names):
        return False
    with tempfile.TemporaryDirectory() as fresh:
        write_run_directory(spec, fresh, symmetry)
        return all(filecmp.cmp(os.path.join(fresh, n), os.path.join(folder, n), shallow=False) for n in names)


def run_finished(spec: RunSpec, folder: str) -> bool:
    """Whether the run of ``spec`` in ``folder`` had done all its steps: the restart
    file i-PI writes when it stops holds step ``spec.steps``, and the frames and
    property files exist."""
    import xml.etree.ElementTree as ET

    variant = os.path.join(folder, "output", "gmetad")
    needed = [os.path.join(variant, n) for n in ("RESTART", "md.out", "frames.extxyz")]
    if not all(os.path.isfile(p) for p in needed):
        return False
    try:
        step = ET.parse(needed[0]).getroot().findtext(".//step")
        return step is not None and int(step) >= spec.steps
    except (ET.ParseError, ValueError):
        return False


@dataclass
class RunResult:
    """Where a finished run's files are: frames (extxyz, every reference evaluation),
    i-PI's property file, hills file (G-metaD), and the wall time in s."""

    name: str
    frames: str
    md_out: str
    hills: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sample(spec: RunSpec, folder: str, symmetry: Mapping[str, Any], stream: TextIO = sys.stderr) -> RunResult:
    """Run ``spec`` in ``folder`` with ``gmetad run`` (i-PI + server + driver, a
    process of its own so that runs can go on side by side); continue it from
    i-PI's newest checkpoint when an earlier attempt was interrupted. Its messages
    go to ``folder/run.log``. Raises RuntimeError naming the run when it fails."""
    import subprocess

    output = os.path.join(folder, "output")
    variant = os.path.join(output, "gmetad")
    resume = os.path.exists(os.path.join(variant, "gmetad.yaml"))
    if resume and run_finished(spec, folder):
        print(f"  run {spec.name}: had finished ({spec.steps} steps) in {folder}: collected", file=stream, flush=True)
        return RunResult(spec.name, os.path.join(variant, "frames.extxyz"), os.path.join(variant, "md.out"),
                         os.path.join(variant, "HILLS") if spec.bias is not None else None, 0.0)
    if not resume:
        if os.path.isdir(output):
            shutil.rmtree(output)      # a start that never got going
        write_run_directory(spec, folder, symmetry)
    argv = [sys.executable, "-m", "biasserver.cli", "run", folder, "--output", output] + (["--resume"] if resume else [])
    t0 = time.monotonic()
    print(f"  run {spec.name}: {'resumed' if resume else 'started'} ({spec.steps} steps, {spec.ensemble}, "
          f"{spec.temperature:g} K, {'G-metaD' if spec.bias is not None else 'plain MD'}); log {folder}/run.log",
          file=stream, flush=True)
    with open(os.path.join(folder, "run.log"), "a") as log:
        code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"sampling run {spec.name} failed (exit code {code}); see {folder}/run.log "
                           f"and the logs in {variant}")
    seconds = time.monotonic() - t0
    print(f"  run {spec.name}: finished in {seconds:.0f} s", file=stream, flush=True)
    return RunResult(spec.name, os.path.join(variant, "frames.extxyz"), os.path.join(variant, "md.out"),
                     os.path.join(variant, "HILLS") if spec.bias is not None else None, seconds)


# ------------------------------------------------------------------ run diagnostics


#: the RunResult fields that are files (stored relative to the work folder by :func:`sampling_stage`)
RUN_FILES = ("frames", "md_out", "hills")


def sample_all(specs: Sequence[RunSpec], folder: str, symmetry: Mapping[str, Any], jobs: int,
               stream: TextIO = sys.stderr) -> dict[str, dict]:
    """Run every spec with :func:`sample` in ``folder/<name>``, up to ``jobs`` at once
    (threads: each run is its own i-PI, server and driver processes); returns the
    RunResult dicts by run name."""
    from concurrent.futures import ThreadPoolExecutor

    def one(spec: RunSpec) -> dict[str, Any]:
        return sample(spec, os.path.join(folder, spec.name), symmetry, stream=stream).to_dict()

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, specs))
    return {r["name"]: r for r in results}


def sampling_stage(p: Pipeline, specs: Sequence[RunSpec], symmetry: Mapping[str, Any],
                   jobs: int) -> Callable[[str, bool], dict[str, dict]]:
    """The work of a sampling stage for :meth:`Pipeline.stage`: :func:`sample_all` on
    ``specs``, the runs' files stored relative to the work folder."""
    def fn(folder: str, resume: bool) -> dict[str, dict]:
        out = sample_all(specs, folder, symmetry, jobs, p.stream)
        return {name: {k: (p.relative(v) if k in RUN_FILES and v else v) for k, v in r.items()}
                for name, r in out.items()}
    return fn


def md_log(path: str) -> dict[str, np.ndarray]:
    """i-PI's property file as columns: step, time (ps), conserved (eV), temperature
    (K), potential (eV), pressure (GPa), volume (A^3)."""
    names = ["step", "time", "conserved", "temperature", "potential", "pressure", "volume"]
    data = np.loadtxt(path, comments="#", ndmin=2)
    if data.shape[1] != len(names):
        raise ValueError(f"{path}: expected {len(names)} columns ({', '.join(names)}), found {data.shape[1]}")
    return {n: data[:, k] for k, n in enumerate(names)}


def stability(log: Mapping[str, np.ndarray], temperature: float, temperature_tolerance: float = 0.25,
              volume_range: tuple[float, float] = (0.75, 1.5)) -> dict[str, Any]:
    """Whether a run stayed physical, by criteria fixed in advance:

    - the thermostat held the temperature: the mean temperature over the second
      half is within ``temperature_tolerance`` (relative) of the target;
    - no blow-up: every recorded volume stays within ``volume_range`` times the
      initial volume, and every logged number is finite.
    Returns the measured values and ``stable`` (bool)."""
    t = np.asarray(log["temperature"])
    v = np.asarray(log["volume"])
    half = t[len(t) // 2:]
    finite = bool(np.all(np.isfinite(t)) and np.all(np.isfinite(v)) and np.all(np.isfinite(log["potential"])))
    t_mean = float(half.mean()) if len(half) else float("nan")
    v_ratio = (float(v.min() / v[0]), float(v.max() / v[0])) if len(v) else (float("nan"),) * 2
    held = finite and abs(t_mean - temperature) <= temperature_tolerance * temperature
    bounded = finite and volume_range[0] <= v_ratio[0] and v_ratio[1] <= volume_range[1]
    return {"stable": bool(held and bounded), "temperature_held": bool(held), "volume_bounded": bool(bounded),
            "temperature_mean_second_half": t_mean, "temperature_max": float(t.max()) if len(t) else float("nan"),
            "volume_ratio_min": v_ratio[0], "volume_ratio_max": v_ratio[1],
            "criteria": {"temperature_tolerance": temperature_tolerance, "volume_range": list(volume_range)}}


def read_frames(path: str, stride: int = 1) -> list[Atoms]:
    """Every ``stride``-th frame of an extxyz file (with its reference results)."""
    return read(path, f"::{int(stride)}", format="extxyz")


def coverage_curves(runs: Mapping[str, Sequence[str]], reference_frames: Sequence[Atoms], symmetry_functions,
                    stride: int, timestep: float, radius: float = 1.0) -> dict[str, dict[str, list]]:
    """Coverage (number of covering centres) against simulated time of each set.

    runs: set name -> frame files in the order they are sampled (a set of several
    runs is covered as one sequence, its time the sum of the runs' times, since the
    budget is the total number of reference evaluations); reference_frames: the
    standardising set (the low-temperature run); every ``stride``-th frame is
    covered; timestep in fs. Returns {set: {"time_ps": [...], "centres": [...]}}."""
    from biasserver.coverage import Coverage, coverage_curve, environments

    reference = Coverage.from_reference(environments(reference_frames, symmetry_functions), radius)
    out = {}
    for name, paths in runs.items():
        frames: list[Atoms] = []
        for path in paths:
            frames += read_frames(path, stride)
        counts = coverage_curve(frames, symmetry_functions, reference)
        out[name] = {"time_ps": (np.arange(len(frames)) * stride * timestep / 1000.0).tolist(),
                     "centres": counts.tolist()}
    return out


# ------------------------------------------------------------------ selection


def fps_frames(frames: Sequence[Atoms], symmetry_functions, n: int, first: int = 0) -> list[int]:
    """The rule of ``gmetad select --fps`` (:func:`biasserver.select.environment_fps`):
    farthest-point sampling of frames by their least-covered atom, in G space scaled
    per function by its standard deviation over all atoms of the element, starting
    from frame ``first``; computed with dot products so that pools of thousands of
    frames fit in memory and time. Returns the chosen indices in order of choice."""
    if n <= 0 or not frames:
        return []
    n = min(n, len(frames))
    stacks: dict[str, list[np.ndarray]] = {e: [] for e in symmetry_functions.elements}
    owners: dict[str, list[np.ndarray]] = {e: [] for e in symmetry_functions.elements}
    for k, atoms in enumerate(frames):
        for element, values in symmetry_functions.values(atoms).items():
            stacks[element].append(values)
            owners[element].append(np.full(len(values), k))
    envs = {}
    for e in symmetry_functions.elements:
        if sum(len(v) for v in stacks[e]) == 0:
            continue
        g = np.concatenate(stacks[e])
        scale = g.std(axis=0)
        scale[scale == 0] = 1.0
        g = g / scale
        owner = np.concatenate(owners[e])          # frame of each atom, non-decreasing
        bounds = np.searchsorted(owner, np.arange(len(frames) + 1))
        envs[e] = (g, (g * g).sum(axis=1), owner, bounds)
    nearest = {e: np.full(len(v[0]), np.inf) for e, v in envs.items()}
    chosen = [first]
    while len(chosen) < n:
        latest = chosen[-1]
        novelty = np.zeros(len(frames))
        for e, (g, norms, owner, bounds) in envs.items():
            a, b = bounds[latest], bounds[latest + 1]
            if b > a:
                new = g[a:b]
                d2 = norms[:, None] + norms[a:b][None, :] - 2.0 * (g @ new.T)
                d2 = d2.min(axis=1)
                d2[d2 < 1e-12 * (1.0 + norms)] = 0.0     # round-off of the dot-product form
                np.minimum(nearest[e], d2, out=nearest[e])
            np.maximum.at(novelty, owner, nearest[e])
        novelty[chosen] = -1.0
        best = int(np.argmax(novelty))
        if novelty[best] <= 0:
            break
        chosen.append(best)
    return chosen


def select_equal_budget(sets: Mapping[str, Sequence[str]], n_train: int, n_test: int, pool: int,
                        symmetry_functions, folder: str) -> dict[str, dict[str, Any]]:
    """The same number of frames from every set by the same rule.

    For each set (name -> frame files, concatenated in order): a pool of ``pool``
    frames evenly spaced over all its frames; ``n_train`` of them by
    farthest-point sampling of atomic environments (:func:`fps_frames`, the rule
    of ``gmetad select --fps``, from the first pool frame); then
    ``n_test`` test frames evenly spaced among the pool frames not selected.
    Writes ``folder/<set>.train.extxyz`` and ``<set>.test.extxyz``; returns per
    set the paths, the number of frames the set had, and the chosen indices."""
    out = {}
    for name, paths in sets.items():
        frames: list[Atoms] = []
        for path in paths:
            frames += read(path, ":", format="extxyz")
        if len(frames) < pool:
            raise ValueError(f"set {name}: {len(frames)} frames, fewer than the pool of {pool}")
        picks = np.unique(np.linspace(0, len(frames) - 1, pool).round().astype(int))
        candidates = [frames[k] for k in picks]
        chosen = sorted(fps_frames(candidates, symmetry_functions, n_train))
        if len(chosen) < n_train:
            raise ValueError(f"set {name}: only {len(chosen)} distinct frames for {n_train}")
        rest = [k for k in range(len(picks)) if k not in set(chosen)]
        tests = [rest[k] for k in np.unique(np.linspace(0, len(rest) - 1, n_test).round().astype(int))]
        train_path = os.path.join(folder, f"{name}.train.extxyz")
        test_path = os.path.join(folder, f"{name}.test.extxyz")
        write(train_path, [candidates[k] for k in chosen], format="extxyz")
        write(test_path, [candidates[k] for k in tests], format="extxyz")
        out[name] = {"train": train_path, "test": test_path, "frames_in_set": len(frames),
                     "train_frames": len(chosen), "test_frames": len(tests),
                     "train_indices": [int(picks[k]) for k in chosen],
                     "test_indices": [int(picks[k]) for k in tests]}
    return out


def environment_gaps(train_sets: Mapping[str, str], probes: Mapping[str, Atoms], symmetry_functions,
                     radius: float = 1.0) -> dict[str, Any]:
    """How far the atoms of test structures lie from every training set's environments.

    train_sets: set name -> extxyz of its training frames; probes: label -> a
    structure (e.g. an unrelaxed surface slab or defect cell). G is standardised
    per element with the mean and std of all training sets together (one scale
    for every set); for each probe and set: the largest and the median distance of
    the probe's atoms to their nearest training environment, and the fraction of
    its atoms farther than ``radius`` (dimensionless). Returns {"probes": {label:
    {set: {...}}}, "radius": radius, "scale": "pooled std of the training sets"}."""
    envs = {name: {e: [] for e in symmetry_functions.elements} for name in train_sets}
    for name, path in train_sets.items():
        for atoms in read(path, ":", format="extxyz"):
            for e, g in symmetry_functions.values(atoms).items():
                envs[name][e].append(g)
    stacked = {name: {e: np.concatenate(v) for e, v in per.items() if v} for name, per in envs.items()}
    pooled = {e: np.concatenate([stacked[n][e] for n in stacked if e in stacked[n]])
              for e in symmetry_functions.elements}
    mean = {e: g.mean(axis=0) for e, g in pooled.items()}
    std = {e: np.where(g.std(axis=0) > 0, g.std(axis=0), 1.0) for e, g in pooled.items()}
    out: dict[str, Any] = {}
    for label, atoms in probes.items():
        values = symmetry_functions.values(atoms)
        out[label] = {}
        for name, per in stacked.items():
            d_all = []
            for e, g in values.items():
                if e not in per or not len(g):
                    continue
                x = (g - mean[e]) / std[e]
                t = (per[e] - mean[e]) / std[e]
                d2 = (x * x).sum(1)[:, None] + (t * t).sum(1)[None, :] - 2.0 * x @ t.T
                d_all.append(np.sqrt(np.maximum(d2.min(axis=1), 0.0)))
            d = np.concatenate(d_all)
            out[label][name] = {"max": float(d.max()), "median": float(np.median(d)),
                                "far_fraction": float((d > radius).mean()), "atoms": int(len(d))}
    return {"probes": out, "radius": radius, "scale": "pooled std of the training sets"}


# ------------------------------------------------------------------ training and tests


def train_committee(train_path: str, output: str, settings: Mapping[str, Any],
                    stream: TextIO = sys.stderr) -> dict[str, Any]:
    """Train a committee NNP on ``train_path`` with the TrainConfig keys of
    ``settings`` (the same for every set); resumes from the training's checkpoint.
    Returns the model path and its members' validation errors."""
    from nnp.config import load_config
    from nnp.train import train

    config = load_config(None, **settings)
    model = train([train_path], output, config, stream=stream, plot=True)
    return {"model": output, "describe": model.describe(), "members": model.provenance.get("members", [])}


def cross_table(models: Mapping[str, str], test_sets: Mapping[str, str]) -> dict[str, dict[str, dict]]:
    """Errors of every model on every set's test frames: {model: {set: {energy_rmse
    (eV/atom), force_rmse (eV/A), force_mae, frames}}}."""
    from nnp.evaluate import evaluate

    table: dict[str, dict[str, dict]] = {}
    for mname, model in models.items():
        table[mname] = {}
        for sname, path in test_sets.items():
            summary, _ = evaluate(model, [path])
            table[mname][sname] = {"energy_rmse": summary["energy_per_atom"]["rmse"],
                                   "force_rmse": summary["forces"]["rmse"],
                                   "force_mae": summary["forces"]["mae"], "frames": summary["frames"]}
    return table


def parallel(fn: Callable, args: list[tuple], jobs: int, say: Callable[[str], None],
             labels: Sequence[str]) -> list:
    """[fn(*a) for a in args], ``jobs`` processes at once (``fn`` a top-level function;
    1 job: in this process), reporting each label as it finishes."""
    if jobs <= 1 or len(args) == 1:
        out = []
        for a, label in zip(args, labels):
            say(f"  {label} ...")
            out.append(fn(*a))
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    single_threaded()   # inherited by the workers before they import numpy
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *a) for a in args]
        out = []
        for future, label in zip(futures, labels):
            out.append(future.result())
            say(f"  {label}: done")
        return out


def single_threaded() -> None:
    """One thread for OpenMP and BLAS in this process's future children (and in this
    process when numpy is not loaded yet), unless the user chose otherwise: the
    study runs its own processes side by side, and idle BLAS threads spinning on a
    shared machine cost more than they give."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def train_task(train_path: str, model_path: str, training: dict, log_path: str) -> dict:
    """:func:`train_committee` with its progress in ``log_path`` (for :func:`parallel`)."""
    with open(log_path, "a") as log:
        return train_committee(train_path, model_path, training, stream=log)


def load_overrides(path: str | None) -> dict[str, Any]:
    """A study's settings overrides: the YAML mapping in ``path`` (None: none); errors
    name the file."""
    if path is None:
        return {}
    from biasserver.config import read_yaml_mapping
    return read_yaml_mapping(path, ValueError)


def member_calculator(model_path: str | None, member: Any):
    """Committee member ``member`` (0-based) of the NNP ``model_path`` as an ASE
    calculator or, when ``model_path`` is None, the truth
    ``drivers.calculators.make_calculator(member)``."""
    if model_path is None:
        from drivers.calculators import make_calculator
        return make_calculator(member)
    from nnp.calculator import NNPCalculator, member_model
    return NNPCalculator(member_model(model_path, member))


def property_task(compute: Callable[[Any], tuple[dict, dict]], model_path: str | None, member: Any,
                  out_path: str) -> dict:
    """One property evaluation, kept in ``out_path`` (a resumed stage reuses it):
    ``compute(calculator) -> (values, failures)`` with committee member ``member``
    (0-based) of ``model_path`` as the calculator, or, when ``model_path`` is None,
    the truth ``drivers.calculators.make_calculator(member)``. Returns
    {values, failures, seconds}."""
    if os.path.exists(out_path):
        with open(out_path) as handle:
            return json.load(handle)
    calc = member_calculator(model_path, member)
    t0 = time.monotonic()
    values, failures = compute(calc)
    write_json(out_path, {"values": values, "failures": failures, "seconds": time.monotonic() - t0})
    with open(out_path) as handle:
        return json.load(handle)


def summarise_members(members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and spread over members of each property (NaN / null values left out)."""
    keys = list(members[0]["values"])
    out: dict[str, Any] = {}
    for key in keys:
        values = [m["values"][key] for m in members]
        ok = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
        out[key] = {"members": values,
                    "mean": float(ok.mean()) if len(ok) else None,
                    "std": float(ok.std()) if len(ok) else None,
                    "n_ok": int(len(ok)),
                    "failures": [m["failures"].get(key) for m in members if key in m["failures"]]}
    return out
