"""Training tensors: the cached descriptors loaded once into torch, and batches of frames.

Forces in training use the same contraction as :meth:`Descriptors.forces_virial`,
written with torch ops so that the force loss can be differentiated: for every
pair p (centre i, neighbour j) w_p = sum_f dE/dx_if * dx_if/dR_p, then
F_i += w_p and F_j -= w_p (index_add). The virial (eV, -stress x volume) is the
same contraction's W -= w_p (x) R_p over the pairs of a frame (R_p = r_j - r_i,
image included), and the stress -W / volume in eV/A^3 (ASE's sign). The
derivatives are stored already divided by the per-element std of G, so dE/dx
from the network contracts directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .dataset import FrameDescriptors


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


@dataclass
class Batch:
    """Frames stacked for one optimiser step.

    n_atoms (B,), energy (B,) target energy minus reference energies (eV),
    forces (sum N, 3) eV/A, stress (B, 3, 3) eV/A^3 (ASE's sign; zeros where
    has_stress (B,) is False), volume (B,) A^3; per element: x (n_e, F_e)
    standardised G, frame (n_e,) frame of each centre, deriv (P_e, F_e, 3) dx/dR,
    centre (P_e,) row of x, first/second (P_e,) atoms of the pair in the batch,
    vectors (P_e, 3) pair vectors in A, pair_frame (P_e,) frame of each pair.
    """

    n_atoms: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    x: dict[str, torch.Tensor]
    frame: dict[str, torch.Tensor]
    deriv: dict[str, torch.Tensor]
    centre: dict[str, torch.Tensor]
    first: dict[str, torch.Tensor]
    second: dict[str, torch.Tensor]
    stress: torch.Tensor | None = None
    has_stress: torch.Tensor | None = None
    volume: torch.Tensor | None = None
    vectors: dict[str, torch.Tensor] | None = None
    pair_frame: dict[str, torch.Tensor] | None = None


class TensorData:
    """All frames as torch tensors (``dtype``), with per-frame offsets for batching.

    mean, std: element -> (F_e,) scaling; e_ref: element -> eV (subtracted from
    the target energies).
    """

    def __init__(self, data: FrameDescriptors, mean: dict, std: dict, e_ref: dict,
                 dtype: torch.dtype = torch.float32):
        self.elements = data.elements
        self.dtype = dtype
        self.n_frames = data.n_frames
        self.n_atoms = torch.from_numpy(data.n_atoms.astype(np.int64))
        reference = data.composition() @ np.array([e_ref[e] for e in self.elements])
        self.energy = torch.from_numpy(data.energies - reference).to(dtype)
        self.forces = torch.from_numpy(data.forces).to(dtype)
        self.stress = torch.from_numpy(np.asarray(data.stress, dtype=np.float64)).to(dtype)
        self.has_stress = torch.from_numpy(np.asarray(data.has_stress, dtype=bool))
        self.volume = torch.from_numpy(np.asarray(data.volume, dtype=np.float64)).to(dtype)
        #: frame indices whose stress is a training target
        self.stress_frames = np.flatnonzero(data.has_stress)
        self.atom_offset = _offsets(data.n_atoms)
        self.counts = {e: data.counts[e] for e in self.elements}
        self.pairs = {e: data.pairs[e] for e in self.elements}
        self.centre_offset = {e: _offsets(data.counts[e]) for e in self.elements}
        self.pair_offset = {e: _offsets(data.pairs[e]) for e in self.elements}
        self.x, self.deriv, self.centre, self.first, self.second, self.vectors = {}, {}, {}, {}, {}, {}
        for e in self.elements:
            x = (data.values[e] - mean[e]) / std[e]
            self.x[e] = torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
            deriv = data.deriv[e] / std[e][None, :, None].astype(data.deriv[e].dtype)
            self.deriv[e] = torch.from_numpy(np.ascontiguousarray(deriv)).to(dtype)
            self.centre[e] = torch.from_numpy(data.centre[e].astype(np.int64))
            self.first[e] = torch.from_numpy(data.first[e].astype(np.int64))
            self.second[e] = torch.from_numpy(data.second[e].astype(np.int64))
            self.vectors[e] = torch.from_numpy(np.ascontiguousarray(data.vectors[e])).to(dtype)

    def batch(self, frames) -> Batch:
        """The frames (indices) as one Batch; indices are re-based to the batch."""
        frames = [int(f) for f in frames]
        index = torch.tensor(frames, dtype=torch.int64)
        n_atoms = self.n_atoms[index]
        atom_base = torch.from_numpy(_offsets(n_atoms.numpy())[:-1])
        a = self.atom_offset
        forces = torch.cat([self.forces[a[f]:a[f + 1]] for f in frames])
        x, frame, deriv, centre, first, second, vectors, pair_frame = {}, {}, {}, {}, {}, {}, {}, {}
        for e in self.elements:
            co, po = self.centre_offset[e], self.pair_offset[e]
            counts = torch.from_numpy(self.counts[e][frames])
            pairs = torch.from_numpy(self.pairs[e][frames])
            centre_base = torch.from_numpy(_offsets(counts.numpy())[:-1])
            x[e] = torch.cat([self.x[e][co[f]:co[f + 1]] for f in frames])
            frame[e] = torch.repeat_interleave(torch.arange(len(frames)), counts)
            deriv[e] = torch.cat([self.deriv[e][po[f]:po[f + 1]] for f in frames])
            centre[e] = torch.cat([self.centre[e][po[f]:po[f + 1]] for f in frames]) \
                + torch.repeat_interleave(centre_base, pairs)
            shift = torch.repeat_interleave(atom_base, pairs)
            first[e] = torch.cat([self.first[e][po[f]:po[f + 1]] for f in frames]) + shift
            second[e] = torch.cat([self.second[e][po[f]:po[f + 1]] for f in frames]) + shift
            vectors[e] = torch.cat([self.vectors[e][po[f]:po[f + 1]] for f in frames])
            pair_frame[e] = torch.repeat_interleave(torch.arange(len(frames)), pairs)
        return Batch(n_atoms, self.energy[index], forces, x, frame, deriv, centre, first, second,
                     self.stress[index], self.has_stress[index], self.volume[index], vectors, pair_frame)


def predict_batch(nets: dict, batch: Batch, create_graph: bool, virial: bool = False):
    """Energies (B,) eV (without reference energies) and forces (sum N, 3) eV/A;
    with ``virial`` also the virials (B, 3, 3) in eV (-stress x volume).

    ``create_graph``: keep the graph of dE/dx so the force (and stress) loss can
    be differentiated (training); False for validation.
    """
    n_frames = len(batch.n_atoms)
    dtype = batch.forces.dtype
    energy = torch.zeros(n_frames, dtype=dtype)
    forces = torch.zeros_like(batch.forces)
    virials = torch.zeros((n_frames, 3, 3), dtype=dtype) if virial else None
    for e, net in nets.items():
        x = batch.x[e]
        if len(x) == 0:
            continue
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            atomic = net(x).squeeze(-1)
            (grad,) = torch.autograd.grad(atomic.sum(), x, create_graph=create_graph)
        energy = energy.index_add(0, batch.frame[e], atomic if create_graph else atomic.detach())
        w = (grad[batch.centre[e]].unsqueeze(-1) * batch.deriv[e]).sum(dim=1)   # (P, 3) = dE/dR_p
        forces = forces.index_add(0, batch.first[e], w).index_add(0, batch.second[e], -w)
        if virial:
            outer = w.unsqueeze(2) * batch.vectors[e].unsqueeze(1)       # (P, 3, 3) w_p (x) R_p
            virials = virials.index_add(0, batch.pair_frame[e], -outer)
    return (energy, forces, virials) if virial else (energy, forces)


def batch_stress(virials: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Stress (B, 3, 3) in eV/A^3 (ASE's sign, symmetrised) from virials (B, 3, 3) in eV;
    frames without a volume (not periodic in 3D) get zeros."""
    volume = torch.where(batch.volume > 0, batch.volume, torch.ones_like(batch.volume))
    stress = -virials / volume[:, None, None]
    stress = 0.5 * (stress + stress.transpose(1, 2))
    return torch.where((batch.volume > 0)[:, None, None], stress, torch.zeros_like(stress))
