"""The Behler-Parrinello model: per-element networks on standardised symmetry functions.

    E = sum_i ( E_ref[e_i] + NN_{e_i}(x_i) ),   x_i = (G_i - mean_e) / std_e

One feed-forward network per element e (hidden layers and a smooth activation,
a linear output giving the atomic energy in eV); E_ref are per-element reference
energies (eV) fitted by least squares on the training set. A committee holds K
such sets of networks sharing symmetry functions, scaling and reference
energies; its prediction is the member mean, its uncertainty the member
standard deviation (ddof = 0).

Inference is float64 numpy: dE/dG per atom comes from the analytic backward pass
of the small networks, forces and virial from :meth:`Descriptors.forces_virial`
(the C kernels' analytic dG/dR), the same contraction the bias uses. Units:
angstrom, eV, eV/A; virial = -stress x volume in eV.

A model file (``torch.save`` of plain data, loaded with ``weights_only=True``)
is self-describing: symmetry-function tables and fingerprint, scaling, reference
energies, architecture, element order, weights of every member, and provenance
(training files and their hashes, configuration, date, versions).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from ase import Atoms

from biasserver.symmetry import Descriptors, SymmetryFunctions

FORMAT = "gmetad-nnp"
FORMAT_VERSION = 1

#: Layer weights of one element's network: [(W (n_in, n_out), b (n_out,)), ...], float64.
Layers = list[tuple[np.ndarray, np.ndarray]]


class ModelError(ValueError):
    """A model file or a structure does not fit; the message names file or element."""


def _tanh(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.tanh(z)
    return a, 1.0 - a * a


def _sigmoid(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = 0.5 * (1.0 + np.tanh(0.5 * z))   # overflow-free logistic function
    return a, a * (1.0 - a)


def _silu(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = 0.5 * (1.0 + np.tanh(0.5 * z))
    return z * s, s * (1.0 + z * (1.0 - s))


def _softplus(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.logaddexp(0.0, z), 0.5 * (1.0 + np.tanh(0.5 * z))


#: activation name -> numpy function returning (value, derivative)
ACTIVATIONS = {"tanh": _tanh, "sigmoid": _sigmoid, "silu": _silu, "softplus": _softplus}


def network_energy_gradient(layers: Layers, activation: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atomic energies (n,) in eV and their gradients dE/dx (n, F) of one network."""
    act = ACTIVATIONS[activation]
    slopes = []
    h = x
    for w, b in layers[:-1]:
        h, slope = act(h @ w + b)
        slopes.append(slope)
    w_out, b_out = layers[-1]
    energy = (h @ w_out + b_out)[:, 0]
    grad = np.broadcast_to(w_out[:, 0], h.shape)
    for (w, _), slope in zip(reversed(layers[:-1]), reversed(slopes)):
        grad = (grad * slope) @ w.T
    return energy, np.ascontiguousarray(grad)


@dataclass
class Prediction:
    """A model's prediction for one structure.

    energy (eV), forces (N, 3) eV/A and virial (3, 3) eV (-stress x volume) are
    committee means; *_std their standard deviations over the members (zeros for
    a single network); members: per-member energies (K,) in eV.
    """

    energy: float
    forces: np.ndarray
    virial: np.ndarray
    energy_std: float
    forces_std: np.ndarray
    virial_std: np.ndarray
    members: np.ndarray


@dataclass
class NNPModel:
    """A trained (or freshly initialised) Behler-Parrinello model or committee.

    symmetry: the symmetry functions (element order = model element order);
    hidden: hidden-layer sizes; activation: a key of :data:`ACTIVATIONS`;
    mean, std: element -> (F_e,) standardisation of G; e_ref: element -> eV;
    members: one {element: Layers} per committee member; provenance: free-form
    description of how the model was made (JSON-like data).
    """

    symmetry: SymmetryFunctions
    hidden: tuple[int, ...]
    activation: str
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    e_ref: dict[str, float]
    members: list[dict[str, Layers]]
    provenance: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ModelError(f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}")
        if not self.members:
            raise ModelError("a model needs at least one network")
        for e in self.elements:
            std = np.asarray(self.std[e], dtype=np.float64)
            if np.any(~np.isfinite(std)) or np.any(std <= 0):
                raise ModelError(f"scaling of {e}: std must be finite and > 0")

    @property
    def elements(self) -> tuple[str, ...]:
        """Element order of the model (that of its symmetry functions)."""
        return self.symmetry.elements

    @property
    def n_members(self) -> int:
        """Committee size (1 for a single network)."""
        return len(self.members)

    @property
    def name(self) -> str:
        """The file the model came from, or 'model' for one made in memory."""
        return self.path or "model"

    # -- checks -----------------------------------------------------------
    def check_atoms(self, atoms: Atoms) -> None:
        """Raise ModelError naming the first element of ``atoms`` the model does not know."""
        known = set(self.elements)
        for k, symbol in enumerate(atoms.get_chemical_symbols()):
            if symbol not in known:
                raise ModelError(f"{self.name} knows the elements {', '.join(self.elements)} only; "
                                 f"atom {k} is {symbol}")

    def check_symmetry(self, symmetry: SymmetryFunctions, where: str) -> None:
        """Raise ModelError if ``symmetry`` (from ``where``) differs from the model's."""
        if symmetry.fingerprint() != self.symmetry.fingerprint():
            raise ModelError(f"{where}: symmetry functions {symmetry!r} (fingerprint "
                             f"{symmetry.fingerprint()}) differ from those of {self.name} "
                             f"({self.symmetry!r}, fingerprint {self.symmetry.fingerprint()})")

    # -- evaluation -------------------------------------------------------
    def member_gradients(self, values: dict[str, np.ndarray]) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
        """Per-member total energies (K,) in eV and dE/dG (element -> (n_e, F_e)) of
        the descriptor values ``values`` (element -> (n_e, F_e))."""
        energies = np.zeros(self.n_members)
        grads: list[dict[str, np.ndarray]] = [{} for _ in self.members]
        for e in self.elements:
            g = values.get(e)
            if g is None or len(g) == 0:
                continue
            x = (g - self.mean[e]) / self.std[e]
            for k, member in enumerate(self.members):
                atomic, dx = network_energy_gradient(member[e], self.activation, x)
                energies[k] += atomic.sum() + len(g) * self.e_ref[e]
                grads[k][e] = dx / self.std[e]
        return energies, grads

    def predict_descriptors(self, descriptors: Descriptors) -> Prediction:
        """Energy, forces and virial (means and spreads) from computed descriptors."""
        energies, grads = self.member_gradients(descriptors.values)
        n = descriptors.n_atoms
        forces = np.zeros((self.n_members, n, 3))
        virials = np.zeros((self.n_members, 3, 3))
        for k, grad in enumerate(grads):
            forces[k], virials[k] = descriptors.forces_virial(grad)
        if self.n_members == 1:
            return Prediction(float(energies[0]), forces[0], virials[0], 0.0,
                              np.zeros((n, 3)), np.zeros((3, 3)), energies)
        return Prediction(float(energies.mean()), forces.mean(axis=0), virials.mean(axis=0),
                          float(energies.std()), forces.std(axis=0), virials.std(axis=0), energies)

    def predict(self, atoms: Atoms) -> Prediction:
        """Energy (eV), forces (eV/A), virial (eV) and their committee spreads for ``atoms``."""
        self.check_atoms(atoms)
        return self.predict_descriptors(self.symmetry.compute(atoms))

    def energy(self, atoms: Atoms) -> float:
        """Committee-mean energy of ``atoms`` in eV (no forces)."""
        self.check_atoms(atoms)
        energies, _ = self.member_gradients(self.symmetry.values(atoms))
        return float(energies.mean())

    # -- files ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (tensors, lists, strings) for ``torch.save``."""
        import torch

        t = lambda a: torch.from_numpy(np.array(a, dtype=np.float64))
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "elements": list(self.elements),
            "symmetry_tables": {e: t(self.symmetry.tables[e]) for e in self.elements},
            "symmetry_fingerprint": self.symmetry.fingerprint(),
            "hidden": list(self.hidden), "activation": self.activation,
            "mean": {e: t(self.mean[e]) for e in self.elements},
            "std": {e: t(self.std[e]) for e in self.elements},
            "e_ref": {e: float(self.e_ref[e]) for e in self.elements},
            "members": [{e: [[t(w), t(b)] for w, b in member[e]] for e in self.elements}
                        for member in self.members],
            "provenance": json.loads(json.dumps(self.provenance)),   # plain data only
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model") -> "NNPModel":
        """Inverse of :meth:`to_dict`; ``where`` names the source in errors."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelError(f"{where}: not a gmetad NNP model file")
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"{where}: model format version {data.get('format_version')} "
                             f"(this gmetad reads version {FORMAT_VERSION})")
        try:
            elements = list(data["elements"])
            arr = lambda x: x.numpy().astype(np.float64, copy=True)
            symmetry = SymmetryFunctions(elements, {e: arr(data["symmetry_tables"][e]) for e in elements})
            if symmetry.fingerprint() != data["symmetry_fingerprint"]:
                raise ModelError(f"{where}: symmetry-function tables do not match their fingerprint")
            members = [{e: [(arr(w), arr(b)) for w, b in member[e]] for e in elements}
                       for member in data["members"]]
            model = cls(symmetry, tuple(int(h) for h in data["hidden"]), str(data["activation"]),
                        {e: arr(data["mean"][e]) for e in elements},
                        {e: arr(data["std"][e]) for e in elements},
                        {e: float(data["e_ref"][e]) for e in elements},
                        members, dict(data.get("provenance") or {}), path=where)
        except (KeyError, TypeError, AttributeError) as err:
            raise ModelError(f"{where}: incomplete model file ({type(err).__name__}: {err})") from None
        for k, member in enumerate(model.members):
            for e in elements:
                sizes = [symmetry.size(e), *model.hidden, 1]
                shapes = [w.shape for w, _ in member[e]]
                if shapes != list(zip(sizes[:-1], sizes[1:])):
                    raise ModelError(f"{where}: member {k}, element {e}: layer shapes {shapes} "
                                     f"do not match {symmetry.size(e)} inputs and hidden {list(model.hidden)}")
        return model

    def save(self, path: str | os.PathLike) -> None:
        """Write the model file atomically (temporary file, then rename)."""
        import torch

        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(self.to_dict(), tmp)
        os.replace(tmp, path)
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NNPModel":
        """Read a model file written by :meth:`save`; needs no training data."""
        import pickle

        import torch

        path = os.fspath(path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ModelError(f"{path}: model file not found") from None
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
            raise ModelError(f"{path}: not a readable model file ({err.__class__.__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from None
        return cls.from_dict(data, where=path)

    def describe(self) -> str:
        """One line: elements, inputs, architecture, committee size."""
        sizes = ", ".join(f"{e}: {self.symmetry.size(e)}" for e in self.elements)
        return (f"NNP ({sizes} symmetry functions) -> {'-'.join(map(str, self.hidden))} "
                f"{self.activation} -> 1, committee of {self.n_members}")


#: a function whose std over the training atoms is below this fraction of the element's
#: largest |G| is (almost) constant there; its std is raised to that floor so that a new
#: structure cannot blow its standardised value up
STD_FLOOR = 1e-4


def standard_scaling(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (F,) of descriptor rows g (n, F), the std floored (see STD_FLOOR; 1 when
    every value is zero)."""
    mean = g.mean(axis=0)
    floor = STD_FLOOR * float(np.abs(g).max()) if g.size else 0.0
    std = np.maximum(g.std(axis=0), floor)
    return mean, np.where(std > 0, std, 1.0)


def initial_layers(n_in: int, hidden: Sequence[int], rng: np.random.Generator) -> Layers:
    """Random float64 layers (Xavier-uniform weights, zero biases), e.g. for tests."""
    sizes = [n_in, *hidden, 1]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        bound = np.sqrt(6.0 / (a + b))
        layers.append((rng.uniform(-bound, bound, (a, b)), np.zeros(b)))
    return layers


def load_model(model: "NNPModel | str | os.PathLike") -> NNPModel:
    """``model`` itself if it is an NNPModel, else the model read from that file."""
    return model if isinstance(model, NNPModel) else NNPModel.load(model)
