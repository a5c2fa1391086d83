"""Figures of a training and of a test (PNG, matplotlib's Agg backend, no display needed)."""
from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(history: list[dict], path: str) -> None:
    """Training and validation RMSEs (energy meV/atom, force eV/A) per epoch, one line per member."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    members = sorted({int(r["member"]) for r in history})
    for m in members:
        rows = [r for r in history if int(r["member"]) == m]
        epoch = [r["epoch"] for r in rows]
        tag = f" (member {m + 1})" if len(members) > 1 else ""
        for ax, key, scale in ((axes[0], "energy_rmse", 1000.0), (axes[1], "force_rmse", 1.0)):
            line, = ax.plot(epoch, [scale * r[key] for r in rows], lw=1, label="train" + tag)
            val = [scale * r["val_" + key] for r in rows]
            if np.isfinite(val).any():
                ax.plot(epoch, val, lw=1, ls="--", color=line.get_color(), label="validation" + tag)
    axes[0].set_ylabel("energy RMSE (meV/atom)")
    axes[1].set_ylabel("force RMSE (eV/Å)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parity(energy_true, energy_pred, forces_true: dict, forces_pred: dict, path: str) -> None:
    """Predicted against reference: energy per atom (eV/atom) and force components per element (eV/A)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    axes[0].plot(energy_true, energy_pred, ".", ms=3)
    for e in forces_true:
        axes[1].plot(forces_true[e].ravel(), forces_pred[e].ravel(), ".", ms=2, alpha=0.5, label=e)
    for ax, label in ((axes[0], "energy (eV/atom)"), (axes[1], "force component (eV/Å)")):
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.5)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel("reference " + label)
        ax.set_ylabel("model " + label)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def uncertainty(bins: dict[str, dict], path: str) -> None:
    """Committee spread against the RMS true error in bins of the spread (energy, forces)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(bins), figsize=(4.5 * len(bins), 4), squeeze=False)
    for ax, (name, b) in zip(axes[0], bins.items()):
        ax.loglog(b["std"], b["rms_error"], "o-", ms=4, label="RMS error per bin")
        lims = [min(min(b["std"]), min(b["rms_error"])), max(max(b["std"]), max(b["rms_error"]))]
        ax.plot(lims, lims, "k--", lw=0.5, label="error = spread")
        ax.set_xlabel(f"committee std ({b['unit']})")
        ax.set_ylabel(f"RMS true error ({b['unit']})")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
