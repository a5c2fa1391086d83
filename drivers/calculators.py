"""ASE calculator factories, one per engine, named in one place.

In the style of i-PI's ``ipi/pes`` registry: every engine the drivers can run
is a small factory registered under a short name in :data:`CALCULATORS`;
:func:`make_calculator` is the single entry point::

    make_calculator("emt")                               # ase EMT
    make_calculator("sw")                                # matscipy Stillinger-Weber, Si (PRB 31, 5262)
    make_calculator("tersoff")                           # matscipy Tersoff, Si (PRB 39, 5566)
    make_calculator("eam", potential="Cu.eam.alloy")     # matscipy EAM from a file
    make_calculator("nnp", model="model.pt")             # a potential of 'gmetad train'
    make_calculator("chgnet")                            # CHGNet 0.3.0, weights in the wheel
    make_calculator("ase.calculators.lj:LennardJones", sigma=2.3, epsilon=0.1)

Every calculator works in ASE units (angstrom, eV). The ``module:Class`` form
imports ``module`` and calls ``Class(**kwargs)`` (any callable returning an ASE
calculator works, e.g. a factory function).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict

__all__ = ["CALCULATORS", "register", "make_calculator", "known_calculators"]

#: name -> factory(**kwargs) returning an ASE calculator
CALCULATORS: Dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a calculator factory under ``name``."""

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in CALCULATORS:
            raise ValueError(f"calculator {name!r} registered twice")
        CALCULATORS[name] = factory
        return factory

    return deco


def known_calculators() -> list:
    """Sorted names of the registered calculators."""
    return sorted(CALCULATORS)


@register("emt")
def _emt(**kwargs: Any):
    """ASE's effective-medium theory (Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O)."""
    from ase.calculators.emt import EMT

    return EMT(**kwargs)


@register("sw")
def _stillinger_weber(parameters: str = "Stillinger_Weber_PRB_31_5262_Si"):
    """matscipy Stillinger-Weber; default: the original Si parameters
    (Stillinger and Weber, PRB 31, 5262 (1985)). ``parameters`` names another
    set of matscipy's ``explicit_forms.stillinger_weber`` module."""
    from matscipy.calculators.manybody import Manybody
    from matscipy.calculators.manybody.explicit_forms import StillingerWeber
    from matscipy.calculators.manybody.explicit_forms import stillinger_weber as sw

    return Manybody(**StillingerWeber(_parameter_set(sw, parameters)))


@register("tersoff")
def _tersoff(parameters: str = "Tersoff_PRB_39_5566_Si_C"):
    """matscipy Tersoff; default: Tersoff's parameters of PRB 39, 5566 (1989)
    (Si-Si from the Si-C set, i.e. Tersoff's Si). ``parameters`` names another
    set of matscipy's ``explicit_forms.tersoff_brenner`` module (e.g.
    ``Erhart_PRB_71_035211_Si``)."""
    from matscipy.calculators.manybody import Manybody
    from matscipy.calculators.manybody.explicit_forms import TersoffBrenner
    from matscipy.calculators.manybody.explicit_forms import tersoff_brenner as tb

    return Manybody(**TersoffBrenner(_parameter_set(tb, parameters)))


@register("eam")
def _eam(potential: str, kind: str | None = None):
    """matscipy EAM from a LAMMPS-style tabulated ``potential`` file.

    ``kind`` is ``'eam'`` (funcfl), ``'eam/alloy'`` (setfl) or ``'eam/fs'``;
    by default it is inferred from the file name (``*.fs`` -> eam/fs,
    ``*.alloy``/``*.setfl`` -> eam/alloy, ``*.eam`` -> eam; else eam/alloy).
    """
    from matscipy.calculators.eam import EAM

    if kind is None:
        low = str(potential).lower()
        if low.endswith(".fs"):
            kind = "eam/fs"
        elif low.endswith((".alloy", ".setfl")):
            kind = "eam/alloy"
        elif low.endswith(".eam"):
            kind = "eam"
        else:
            kind = "eam/alloy"
    return EAM(str(potential), kind=kind)


@register("nnp")
def _nnp(model: str | None = None):
    """A Behler-Parrinello potential (or committee) written by ``gmetad train``;
    the committee spread goes to the i-PI extras (see nnp/calculator.py)."""
    if not model:
        raise ValueError("the nnp calculator needs a model file: --model model.pt")
    from nnp.calculator import NNPCalculator

    return NNPCalculator(model)


@register("chgnet")
def _chgnet(model: str = "0.3.0", device: str = "cpu", threads: int | None = 1):
    """CHGNet, a universal machine-learning potential (Deng et al., Nat. Mach.
    Intell. 5, 1031 (2023)), with energy, forces and stress (eV, eV/A, eV/A^3).

    ``model``: a pretrained version shipped inside the ``chgnet`` wheel
    (``"0.3.0"``, default, or ``"0.2.0"``; ``chgnet==0.3.8`` carries both, so
    nothing is downloaded) or the path of a CHGNet checkpoint file.
    ``device``: torch device (``"cpu"``). ``threads``: torch threads of this
    process (None keeps torch's default; one thread leaves the other cores to
    i-PI and the bias server). The model computes in float32: energies carry
    about 1e-7 relative round-off. Installed by ``pip install "gmetad[chgnet]"``.
    """
    try:
        import torch
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator
    except ImportError as exc:
        raise ValueError(
            f"the chgnet calculator needs the chgnet package ({exc}): "
            "pip install 'gmetad[chgnet]' (scripts/setup.sh installs it)"
        ) from exc
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"chgnet: threads must be None or an integer >= 1, got {threads!r}")
        torch.set_num_threads(threads)
    model = str(model)
    if model in ("0.3.0", "0.2.0"):
        network = CHGNet.load(model_name=model, use_device=device, check_cuda_mem=False, verbose=False)
    else:
        import os

        if not os.path.isfile(model):
            raise ValueError(f"chgnet: model {model!r} is neither a shipped version (0.3.0, 0.2.0) "
                             "nor an existing checkpoint file")
        network = CHGNet.from_file(model)
    return CHGNetCalculator(network, use_device=device, check_cuda_mem=False)


def _parameter_set(module: Any, name: str) -> dict:
    params = getattr(module, name, None)
    if not isinstance(params, dict):
        sets = sorted(k for k, v in vars(module).items() if isinstance(v, dict) and "__ref__" in v)
        raise ValueError(
            f"unknown parameter set {name!r} in {module.__name__}; available: {', '.join(sets)}"
        )
    return params


def _import_spec(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"calculator spec {spec!r} must look like 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for calculator {spec!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    return obj


def make_calculator(name: str, **kwargs: Any):
    """Build an ASE calculator (angstrom/eV) by registry name or ``module:Class``.

    ``kwargs`` go to the factory (or to the class for ``module:Class``).
    Unknown names raise ValueError listing the known ones.
    """
    if ":" in name:
        return _import_spec(name)(**kwargs)
    try:
        factory = CALCULATORS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown calculator {name!r}; known: {', '.join(known_calculators())}, "
            "or 'package.module:ClassName' for any ASE calculator"
        ) from None
    return factory(**kwargs)
