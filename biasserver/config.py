"""Run configuration: one YAML file per run, validated on load.

Example (all lengths in angstrom, energies in eV; relative paths are relative
to the YAML file)::

    structure: init.xyz            # the file i-PI starts from: gives the elements
    symmetry:
      default: {elements: [Pt, H], cutoff: 6.0}
      # or: params: {Pt: params_Pt, H: params_H}
      # or: potential_saved: potential_saved
    bias:
      height: 0.001                # eV
      width: 1.0                   # A (adaptive) or G units (isotropic)
      stride: 20
      species: {H: 1.0, Pt: 0.0}
      covariance: adaptive         # or isotropic
      regularization: 1.0e-4
      jacobian: folded             # or images: periodic images as separate columns of J,
                                   # as the original LAMMPS code (cells < 2 cutoffs)
      well_tempered: null          # bias temperature in K
      compression: null            # Mahalanobis merge threshold (near-identical hills
                                   # merge); long runs: 0.3 with max_hills 1000 (below)
      max_hills: null              # cap per element: beyond it every new hill merges into
                                   # its nearest (merged height: the two hills' value at
                                   # the merged centre), so the cost per step stops growing.
                                   # Long runs: 1000 with compression 0.3. Measured on Si64
                                   # SW, 500 K, 50 000 steps: cost flat from the cap on;
                                   # coverage within 2.3 % of the exact run's (13 000 steps)
                                   # and within 0.7 % of compression alone at 50 000; what it
                                   # costs: the bias energy is above the exact sum by 20-90 %
                                   # (it grows with the run; compression 0.3 alone: 4-9 %,
                                   # but 13 000 hills and growing). 300 explores as much, with
                                   # errors of the same size (up to 97 %), at 0.75-0.8x the cost.
                                   # Bias of 64 atoms per MD step, median over a run: 6.2 ms
                                   # at 1000 hills and 4.9 at 300 on 2 OpenMP threads, 9.0
                                   # and 6.8 on one (guide: "The bias's cost in long runs")
      walls: []                    # [{kind: height, ...}, {kind: distance, ...}]
      hills_file: HILLS
      restart: true                # continue from hills_file when it exists
      reuse_hills: false           # true: continue from a hills file written by another
                                   # run (other bias parameters or system); refused otherwise.
                                   # Its hills stay, new ones are appended, and step labels
                                   # go on after its last hill
      enabled: true                # false: no hills (walls stay): plain MD
      runaway_energy: null         # eV: a walker (or bead) whose bias energy is above it at a
                                   # deposition step deposits no hills there (logged)
      runaway_force: null          # eV/A: the same for its largest bias force on an atom
    server:
      mode: proxy                  # proxy or bias
      ipi: unix:gmetad             # i-PI's socket (as <ffsocket> <address>); {walker} in
                                   # addresses and paths becomes the walker's index
      listen: unix:gmetad-ref      # proxy: where force clients connect
      allow_remote: false          # true to listen on a non-loopback address
      timeout: null                # s to wait for a reference result (null: forever,
                                   # as i-PI; a dead client is noticed at once anyway)
      ipi_restart: null            # the i-PI checkpoint (or RESTART) i-PI restarts from:
                                   # frames and hills from its <step> on are set aside
                                   # (frames.after-<step>.extxyz, HILLS.after-<step>)
                                   # and the run continues there (needs restart: true)
    recorder:
      path: frames.extxyz          # null: no recording; with walkers and no {walker}:
                                   # frames.walker-<r>.extxyz
      fsync: true
    walkers: null                  # N walkers sharing one bias (mpirun -n N gmetad serve;
                                   # gmetad run starts N i-PI runs and drivers)
    run:                           # only for gmetad run DIR
      ipi_input: input.xml
      driver: gmetad driver emt --structure {structure} --address {address}
      steps: 4000
      checkpoint_stride: 50        # i-PI checkpoint every N steps for --resume (if
                                   # input.xml has none; null: none)
      plain: true                  # also run the same MD with the bias off
      analysis: python {dir}/analyse.py

Errors name the file and the key at fault.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import yaml
from ase import Atoms

from .bias import COVARIANCES, JACOBIANS, GMetaDBias
from .symmetry import SymmetryFunctions


class ConfigError(ValueError):
    """The run configuration is invalid; the message names the file and key."""


@dataclass
class BiasSettings:
    height: float = 0.001
    width: float = 1.0
    stride: int = 20
    species: dict = field(default_factory=dict)
    covariance: str = "adaptive"
    regularization: float = 1e-4
    jacobian: str = "folded"
    well_tempered: float | None = None
    compression: float | None = None
    max_hills: int | None = None
    walls: list = field(default_factory=list)
    prune_tolerance: float = 1e-12
    hills_file: str | None = "HILLS"
    restart: bool = True
    reuse_hills: bool = False
    enabled: bool = True
    runaway_energy: float | None = None
    runaway_force: float | None = None


@dataclass
class ServerSettings:
    mode: str = "proxy"
    ipi: str = "unix:gmetad"
    listen: str = "unix:gmetad-ref"
    allow_remote: bool = False
    timeout: float | None = None
    ipi_restart: str | None = None


@dataclass
class RecorderSettings:
    path: str | None = "frames.extxyz"
    fsync: bool = True


@dataclass
class RunSettings:
    """How ``gmetad run DIR`` starts an example (ignored by ``gmetad serve``).

    driver: the force client's command line; ``{address}`` becomes the proxy's
    address (``unix:NAME``), ``{socket}`` its bare name (for DFT codes that add
    i-PI's /tmp/ipi_ prefix themselves), ``{structure}`` the structure file,
    ``{dir}`` the example folder. It runs in the output folder.
    analysis: a command run in the output folder after the runs.
    checkpoint_stride: steps between the i-PI checkpoints ``gmetad run --resume``
    restarts from, added to the private i-PI input unless it has a ``<checkpoint>``.
    """

    ipi_input: str = "input.xml"
    driver: str | None = None
    steps: int | None = None
    plain: bool = False
    analysis: str | None = None
    checkpoint_stride: int | None = 50


@dataclass
class RunConfig:
    """A validated run configuration (paths resolved against the YAML's folder)."""

    path: str
    structure: str
    symmetry: dict
    bias: BiasSettings
    server: ServerSettings
    recorder: RecorderSettings
    run: RunSettings = field(default_factory=RunSettings)
    #: walkers sharing the bias over MPI (None: not said; see biasserver.walkers)
    walkers: int | None = None

    def symmetry_functions(self) -> SymmetryFunctions:
        """The symmetry functions the ``symmetry`` section describes."""
        spec = self.symmetry
        if "default" in spec:
            return SymmetryFunctions.default(spec["default"]["elements"], spec["default"].get("cutoff", 6.0))
        if "params" in spec:
            return SymmetryFunctions.read(spec["params"])
        return SymmetryFunctions.read_potential_saved(spec["potential_saved"])

    def make_bias(self, enabled: bool = True) -> GMetaDBias:
        """The bias, continued from the hills file when ``restart`` is set and it exists.

        enabled=False gives the same walls with every coefficient 0: no hills, no
        hills file; the plain-MD reference run of a comparison.
        """
        if not enabled:
            kwargs = self._bias_kwargs()
            kwargs["species"] = {}
            return GMetaDBias(self.symmetry_functions(), **kwargs)
        hills = self.bias.hills_file
        bias = GMetaDBias(self.symmetry_functions(), **self._bias_kwargs())
        bias.system = system_of(read_structure(self.structure, self.path))
        if hills and os.path.exists(hills) and os.path.getsize(hills) > 0:
            if self.bias.restart:
                bias.load_hills(hills)
            else:
                keep_aside(hills)
        if hills:
            bias.record_hills(hills)
        return bias

    def _bias_kwargs(self) -> dict:
        b = self.bias
        return dict(height=b.height, width=b.width, stride=b.stride, species=b.species,
                    covariance=b.covariance, regularization=b.regularization, jacobian=b.jacobian,
                    well_tempered=b.well_tempered, compression=b.compression,
                    max_hills=b.max_hills, walls=b.walls,
                    prune_tolerance=b.prune_tolerance)


def read_structure(structure: str, where: str) -> Atoms:
    """The structure file ``structure`` as Atoms; a ConfigError naming it (and the
    configuration ``where`` that refers to it) when it is not a structure."""
    from ase.io import read
    try:
        atoms = read(structure)
    except Exception as err:   # ASE raises many kinds for files it cannot parse
        raise ConfigError(f"{where}: 'structure': {structure} is not a structure file ASE can read "
                          f"({type(err).__name__}: {err})") from None
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise ConfigError(f"{where}: 'structure': {structure} holds no atoms")
    return atoms


def system_of(atoms: Atoms) -> dict:
    """What identifies the system a bias acts on: formula and periodicity."""
    return {"formula": atoms.get_chemical_formula(), "pbc": [bool(p) for p in atoms.pbc]}


def _check_structure(config: "RunConfig", atoms: Atoms, bias: GMetaDBias) -> None:
    """Errors the server would meet only at step 0: elements without symmetry
    functions, walls that select atoms or elements the structure lacks."""
    sf = bias.symmetry_functions
    missing = sorted(set(atoms.get_chemical_symbols()) - set(sf.elements))
    if missing:
        raise ConfigError(f"{config.path}: 'symmetry': element {', '.join(missing)} of {config.structure} "
                          f"has no symmetry functions (they are defined for {', '.join(sf.elements)})")
    for k, wall in enumerate(bias.walls):
        try:
            wall.check(atoms)
        except ValueError as err:
            raise ConfigError(f"{config.path}: 'bias.walls[{k}]' ({wall.kind}): {err} "
                              f"({config.structure}: {atoms.get_chemical_formula()}, "
                              f"atoms 0..{len(atoms) - 1})") from None


def _check_hills_file(config: "RunConfig", atoms: Atoms, bias: GMetaDBias) -> None:
    """Refuse a hills file to be continued that another run wrote: other bias
    parameters, symmetry functions or system (unless ``bias.reuse_hills``)."""
    from .hillsfile import HillsFileError, read
    path = config.bias.hills_file
    if not (config.bias.enabled and config.bias.restart and path and os.path.exists(path)
            and os.path.getsize(path) > 0):
        return
    try:
        content = read(path, header_only=True)
    except (HillsFileError, UnicodeDecodeError) as err:
        raise ConfigError(f"{config.path}: 'bias.hills_file': {err}") from None
    differences = []
    if content.symmetry != json.loads(json.dumps(bias._symmetry_dict())):
        differences.append("the symmetry functions")
    ours = json.loads(json.dumps(bias.parameters()))
    theirs = {"jacobian": "folded", **content.bias}   # files from before the option: folded
    for key, value in ours.items():
        # walls and the pruning tolerance shape no hill: a restart may change them
        if key not in ("walls", "prune_tolerance") and key in theirs and theirs[key] != value:
            differences.append(f"bias.{key} is {theirs[key]!r} there, {value!r} here")
    if content.system is not None and content.system != system_of(atoms):
        differences.append(f"it was deposited on {content.system['formula']}, this run is "
                           f"{system_of(atoms)['formula']}")
    if differences and not config.bias.reuse_hills:
        raise ConfigError(f"{config.path}: 'bias.hills_file' {path} was written by another run: "
                          f"{'; '.join(differences)}. Move it away, set 'bias.restart: false' to keep it "
                          f"aside and start afresh, or 'bias.reuse_hills: true' to continue from it anyway")


def keep_aside(path: str) -> str:
    """Rename an existing output file to ``path.N`` (first free N) instead of
    overwriting it: nothing recorded is ever lost. Returns the new name."""
    n = 1
    while os.path.exists(f"{path}.{n}"):
        n += 1
    os.replace(path, f"{path}.{n}")
    return f"{path}.{n}"


def _section(raw: dict, key: str, cls, where: str):
    values = raw.get(key) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: '{key}' must be a mapping")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{key}.{unknown[0]}' (known: {', '.join(sorted(known))})")
    obj = cls(**values)
    for name, f in cls.__dataclass_fields__.items():
        value = getattr(obj, name)
        expected = f.type if isinstance(f.type, str) else f.type.__name__
        if value is None:
            if "None" not in expected:
                raise ConfigError(f"{where}: '{key}.{name}' may not be null")
            continue
        if expected.startswith("float") and not isinstance(value, (int, float)) or \
           expected.startswith("int") and not isinstance(value, int) or \
           expected.startswith("bool") and not isinstance(value, bool) or \
           expected.startswith("str") and not isinstance(value, str) or \
           expected.startswith("dict") and not isinstance(value, dict) or \
           expected.startswith("list") and not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}.{name}' must be {expected.split(' ')[0]}, got {value!r}")
        if isinstance(value, bool) and not expected.startswith("bool"):
            raise ConfigError(f"{where}: '{key}.{name}' must be a number, got {value!r}")
    return obj


def read_yaml_mapping(path: str, error: type[Exception] = ConfigError) -> dict:
    """The top-level mapping of the YAML file ``path`` (an empty file gives {});
    ``error`` is raised with the file name for unreadable files, bad YAML or another
    top-level type."""
    try:
        with open(path) as handle:
            raw = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None
    except OSError as err:
        raise error(f"{path}: cannot read: {err.strerror}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping at the top level")
    return raw


def load(path: str | os.PathLike) -> RunConfig:
    """Read and validate a run configuration."""
    path = os.fspath(path)
    raw = read_yaml_mapping(path)
    top = {"structure", "symmetry", "bias", "server", "recorder", "run", "walkers"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(top))})")
    base = os.path.dirname(os.path.abspath(path))
    resolve = lambda p: p if p is None or os.path.isabs(p) else os.path.join(base, p)

    if "structure" not in raw or not isinstance(raw["structure"], str):
        raise ConfigError(f"{path}: 'structure' (the file i-PI starts from) is required")
    structure = resolve(raw["structure"])
    if not os.path.exists(structure):
        raise ConfigError(f"{path}: 'structure': file {structure} not found")
    atoms = read_structure(structure, path)

    symmetry = raw.get("symmetry") or {"default": {}}
    if not isinstance(symmetry, dict) or len(symmetry) != 1 or \
            next(iter(symmetry)) not in ("default", "params", "potential_saved"):
        raise ConfigError(f"{path}: 'symmetry' needs exactly one of 'default', 'params', 'potential_saved'")
    if "params" in symmetry:
        if not isinstance(symmetry["params"], dict):
            raise ConfigError(f"{path}: 'symmetry.params' must map elements to params_XX files")
        symmetry = {"params": {e: resolve(p) for e, p in symmetry["params"].items()}}
    elif "potential_saved" in symmetry:
        symmetry = {"potential_saved": resolve(symmetry["potential_saved"])}

    bias = _section(raw, "bias", BiasSettings, path)
    server = _section(raw, "server", ServerSettings, path)
    recorder = _section(raw, "recorder", RecorderSettings, path)
    run = _section(raw, "run", RunSettings, path)
    run.ipi_input = resolve(run.ipi_input)
    if server.mode not in ("proxy", "bias"):
        raise ConfigError(f"{path}: 'server.mode' must be 'proxy' or 'bias', got {server.mode!r}")
    if bias.covariance not in COVARIANCES:
        raise ConfigError(f"{path}: 'bias.covariance' must be one of {COVARIANCES}, got {bias.covariance!r}")
    if bias.jacobian not in JACOBIANS:
        raise ConfigError(f"{path}: 'bias.jacobian' must be one of {JACOBIANS}, got {bias.jacobian!r}")
    bias.hills_file = resolve(bias.hills_file)
    recorder.path = resolve(recorder.path)
    server.ipi_restart = resolve(server.ipi_restart)
    walkers = raw.get("walkers")
    if walkers is not None and (isinstance(walkers, bool) or not isinstance(walkers, int) or walkers < 1):
        raise ConfigError(f"{path}: 'walkers' must be a positive number of walkers, got {walkers!r}")
    for key in ("runaway_energy", "runaway_force"):
        if getattr(bias, key) is not None and not getattr(bias, key) > 0:
            raise ConfigError(f"{path}: 'bias.{key}' must be > 0 (or null), got {getattr(bias, key)!r}")
    if server.ipi_restart is not None:
        # with {walker} in the name each walker's file is checked when its server starts
        if "{walker}" not in server.ipi_restart and not os.path.exists(server.ipi_restart):
            raise ConfigError(f"{path}: 'server.ipi_restart': file {server.ipi_restart} not found")
        if not bias.restart:
            raise ConfigError(f"{path}: 'server.ipi_restart' continues a run: it needs 'bias.restart: true'")
    if run.checkpoint_stride is not None and run.checkpoint_stride < 1:
        raise ConfigError(f"{path}: 'run.checkpoint_stride' must be a positive number of steps, "
                          f"got {run.checkpoint_stride}")

    if "default" in symmetry:
        spec = dict(symmetry["default"] or {})
        if "elements" not in spec:
            spec["elements"] = sorted(set(atoms.get_chemical_symbols()))
        symmetry = {"default": spec}
    config = RunConfig(path, structure, symmetry, bias, server, recorder, run, walkers)
    try:
        sf = config.symmetry_functions()
        checked = GMetaDBias(sf, **config._bias_kwargs())
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise ConfigError(f"{path}: {err}") from None
    _check_structure(config, atoms, checked)
    _check_hills_file(config, atoms, checked)
    return config


def as_dict(config: RunConfig) -> dict[str, Any]:
    """The configuration as plain data (for logs)."""
    from dataclasses import asdict
    return {"structure": config.structure, "symmetry": config.symmetry, "bias": asdict(config.bias),
            "server": asdict(config.server), "recorder": asdict(config.recorder),
            "run": asdict(config.run), "walkers": config.walkers}
