"""Training configuration: an optional YAML file, validated on load.

Every key is optional; the defaults are those below: SIMPLE-NN's loss weights,
validation fraction and L2, but a learning rate decaying from 3e-3 to SIMPLE-NN's
1e-4, and no stress term (``stress_weight: 0``, as in SIMPLE-NN v1; SIMPLE-NN
v2 trains on stress by default with 1e-6 per kbar^2, i.e. 1e-4 per GPa^2, the
value to start from: docs/guide.md). Measured on 36 Stillinger-Weber Si64 frames
(1500 K MD): a constant 1e-4 reaches a validation force RMSE of 0.14 eV/A after
200 epochs, the defaults 0.09 eV/A after 60 and 0.05 eV/A after 200. Relative
paths are relative to the YAML file::

    symmetry:                      # as in the run configuration (gmetad serve)
      default: {cutoff: 6.0}       # elements: those of the training frames
      # or: params: {Si: params_Si}
      # or: potential_saved: potential_saved
    energy_key: energy             # extxyz keys of the reference energy (eV) and
    forces_key: forces             # forces (eV/A): info/arrays or ASE's calculator
    stress_key: null               # null: ASE's stress (eV/A^3) where a frame has one; a key
                                   # named here (eV/A^3, ASE's sign) is required in every
                                   # frame periodic in 3D
    virial_key: null               # or: a virial (eV, -stress x volume), required likewise
    hidden: [30, 30]               # hidden-layer sizes
    activation: tanh               # tanh, sigmoid, silu or softplus
    energy_weight: 1.0             # loss = w_E mean((dE/N)^2) + w_F mean(dF^2)
    force_weight: 0.1              #        + w_S mean(dS^2) + l2 sum(W^2)
    stress_weight: 0.0             # w_S per GPa^2 (dS: the 6 stress components in GPa of
                                   # frames with a stress); 0: no stress term
    l2: 1.0e-6
    validation_fraction: 0.1       # frames held out (at least one when > 0)
    epochs: 200                    # maximum number of epochs
    batch_size: 8                  # frames per optimiser step
    learning_rate: 3.0e-3          # Adam, decaying exponentially ...
    learning_rate_final: 1.0e-4    # ... to this value at the last epoch
    patience: 40                   # early stopping: epochs without a better validation loss
    seed: 0                        # split, initial weights and frame order
    committee: 1                   # networks (seeds seed, seed+1, ...) in one model file
    bootstrap: false               # each member trains on a bootstrap sample of the frames
    precision: float32             # training arithmetic (inference is always float64)
    threads: 1                     # torch threads (null: torch's default); the networks are
                                   # small, a second thread does not pay (benchmarks/README.md)
    cache_dir: null                # descriptor cache (null: .nnp-cache beside the model)

Errors name the file and the key at fault.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any


from biasserver.config import read_yaml_mapping
from biasserver.symmetry import SymmetryFunctions

from .model import ACTIVATIONS


class TrainConfigError(ValueError):
    """A training configuration is invalid; the message names the file and key."""


@dataclass
class TrainConfig:
    """Validated training settings (see the module docstring for meanings and units)."""

    symmetry: dict = field(default_factory=lambda: {"default": {}})
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: Any = None
    virial_key: Any = None
    hidden: list = field(default_factory=lambda: [30, 30])
    activation: str = "tanh"
    energy_weight: float = 1.0
    force_weight: float = 0.1
    stress_weight: float = 0.0
    l2: float = 1.0e-6
    validation_fraction: float = 0.1
    epochs: int = 200
    batch_size: int = 8
    learning_rate: float = 3.0e-3
    learning_rate_final: float = 1.0e-4
    patience: int = 40
    seed: int = 0
    committee: int = 1
    bootstrap: bool = False
    precision: str = "float32"
    threads: Any = 1
    cache_dir: Any = None
    path: str = "(defaults)"

    #: keys that do not change the result of a training (may differ on resume)
    RUNTIME_KEYS = ("threads", "cache_dir", "path")

    def validate(self) -> "TrainConfig":
        where = self.path
        def fail(key, msg):
            raise TrainConfigError(f"{where}: '{key}' {msg}")
        for key in ("energy_weight", "force_weight", "stress_weight", "l2"):
            if not _number(getattr(self, key)) or getattr(self, key) < 0:
                fail(key, f"must be a number >= 0, got {getattr(self, key)!r}")
        if self.energy_weight == 0 and self.force_weight == 0 and self.stress_weight == 0:
            fail("energy_weight", "'force_weight' and 'stress_weight' cannot all be 0")
        for key in ("learning_rate", "learning_rate_final"):
            if not _number(getattr(self, key)) or getattr(self, key) <= 0:
                fail(key, f"must be a number > 0, got {getattr(self, key)!r}")
        if not _number(self.validation_fraction) or not 0 <= self.validation_fraction < 1:
            fail("validation_fraction", f"must be in [0, 1), got {self.validation_fraction!r}")
        for key in ("epochs", "batch_size", "patience", "committee"):
            if not isinstance(getattr(self, key), int) or isinstance(getattr(self, key), bool) \
                    or getattr(self, key) < 1:
                fail(key, f"must be an integer >= 1, got {getattr(self, key)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            fail("seed", f"must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.hidden, (list, tuple)) or not self.hidden or \
                not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden):
            fail("hidden", f"must be a list of positive layer sizes, got {self.hidden!r}")
        self.hidden = [int(h) for h in self.hidden]
        if self.activation not in ACTIVATIONS:
            fail("activation", f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.precision not in ("float32", "float64"):
            fail("precision", f"must be float32 or float64, got {self.precision!r}")
        if not isinstance(self.bootstrap, bool):
            fail("bootstrap", f"must be true or false, got {self.bootstrap!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            fail("threads", f"must be null or an integer >= 1, got {self.threads!r}")
        for key in ("energy_key", "forces_key"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                fail(key, "must be a non-empty string")
        for key in ("stress_key", "virial_key"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                fail(key, f"must be null or a non-empty string, got {value!r}")
        if self.stress_key is not None and self.virial_key is not None:
            fail("stress_key", "and 'virial_key' cannot both be set (one reference stress per frame)")
        spec = self.symmetry
        if not isinstance(spec, dict) or len(spec) != 1 or \
                next(iter(spec)) not in ("default", "params", "potential_saved"):
            fail("symmetry", "needs exactly one of 'default', 'params', 'potential_saved'")
        if "default" in spec:
            spec["default"] = dict(spec["default"] or {})
            unknown = set(spec["default"]) - {"elements", "cutoff"}
            if unknown:
                fail("symmetry.default", f"has unknown key {sorted(unknown)[0]!r} (known: cutoff, elements)")
        elif "params" in spec and not isinstance(spec["params"], dict):
            fail("symmetry.params", "must map elements to params_XX files")
        return self

    def symmetry_functions(self, data_elements: list[str]) -> SymmetryFunctions:
        """The symmetry functions the ``symmetry`` section describes; the default set
        takes the elements of the data unless the section names them."""
        spec = self.symmetry
        try:
            if "default" in spec:
                opts = spec["default"]
                return SymmetryFunctions.default(opts.get("elements") or data_elements, opts.get("cutoff", 6.0))
            if "params" in spec:
                return SymmetryFunctions.read(spec["params"])
            return SymmetryFunctions.read_potential_saved(spec["potential_saved"])
        except (ValueError, OSError) as err:
            raise TrainConfigError(f"{self.path}: 'symmetry': {err}") from None

    def training_settings(self) -> dict[str, Any]:
        """The settings that determine the trained model (for provenance and resume checks)."""
        return {k: v for k, v in asdict(self).items() if k not in self.RUNTIME_KEYS}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load_config(path: str | os.PathLike | None, **overrides) -> TrainConfig:
    """Read a training YAML (None: defaults), apply ``overrides`` (keys of
    TrainConfig whose value is not None), validate."""
    raw: dict = {}
    where = "(defaults)"
    base = os.getcwd()
    if path is not None:
        where = os.fspath(path)
        raw = read_yaml_mapping(where, TrainConfigError)
        base = os.path.dirname(os.path.abspath(where))
    known = [f.name for f in fields(TrainConfig) if f.name != "path"]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise TrainConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(known)})")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig(**raw, path=where)
    resolve = lambda p: p if p is None or os.path.isabs(p) else os.path.join(base, p)
    if isinstance(config.symmetry, dict):
        if isinstance(config.symmetry.get("params"), dict):
            config.symmetry["params"] = {e: resolve(p) for e, p in config.symmetry["params"].items()}
        if isinstance(config.symmetry.get("potential_saved"), str):
            config.symmetry["potential_saved"] = resolve(config.symmetry["potential_saved"])
    if isinstance(config.cache_dir, str):
        config.cache_dir = resolve(config.cache_dir)
    for key in ("learning_rate", "learning_rate_final", "l2", "energy_weight", "force_weight",
                "stress_weight", "validation_fraction"):
        value = getattr(config, key)
        if isinstance(value, str):       # YAML reads 1e-4 (no dot) as a string
            try:
                setattr(config, key, float(value))
            except ValueError:
                raise TrainConfigError(f"{where}: '{key}' must be a number, got {value!r}") from None
    return config.validate()
