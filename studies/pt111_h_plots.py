"""Figures of the H on Pt(111) study (PNG, matplotlib's Agg backend).

- :func:`fig1_sites`: the H site over time, one panel per run (the paper's Fig. 1 a-c);
- :func:`fig1_pca`: the H environments of each run on the first two principal
  axes of H's symmetry functions, with the truth's relaxed sites marked (Fig. 1 e);
- :func:`fig2_paths`: the path fcc -> hcp -> top -> fcc -> oct of the truth and of
  every committee member, the whole path and the surface part enlarged, and each
  committee's error on the truth's images (Fig. 2).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .adsorption_sites import SITES
from .plots import COLOURS, _pyplot

LABELS = {"L": "MD 600 K (L)", "H": "MD 1700 K (H)", "G": "G-metaD 600 K (G)"}


def fig1_sites(series: Mapping[str, tuple[Sequence[float], Sequence[str]]], path: str) -> str:
    """series: run -> (time in ps, site per frame). Returns ``path``."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 1.9 * len(series) + 0.4), sharex=True, squeeze=False)
    for ax, (name, (time_ps, sites)), letter in zip(axes[:, 0], series.items(), "abc"):
        ax.plot(time_ps, [SITES.index(s) for s in sites], ".", ms=1.5, color=COLOURS.get(name))
        ax.set_yticks(range(len(SITES)))
        ax.set_yticklabels(SITES, fontsize=8)
        ax.set_ylim(-0.5, len(SITES) - 0.5)
        ax.set_title(f"({letter}) {LABELS.get(name, name)}", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("time (ps)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def fig1_pca(pca: Mapping[str, Any], path: str) -> str:
    """pca: the output of :func:`studies.pt111_h.h_principal_axes`. Returns ``path``."""
    plt = _pyplot()
    names = list(pca["sets"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), sharex=True, sharey=True, squeeze=False)
    ratio = pca["explained_variance_ratio"]
    for ax, name in zip(axes[0], names):
        xy = np.asarray(pca["sets"][name])
        ax.plot(xy[:, 0], xy[:, 1], ".", ms=2, alpha=0.4, color=COLOURS.get(name))
        for k, (label, (x, y)) in enumerate(pca["markers"].items()):
            ax.plot(x, y, "k*", ms=8)
            # fcc and hcp environments nearly coincide: labels alternate above and below
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4 if k % 2 == 0 else -10), fontsize=8)
        ax.set_title(LABELS.get(name, name), fontsize=9)
        ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    axes[0, 0].set_ylabel(f"PC2 ({ratio[1]:.0%})")
    fig.suptitle("(e) H environment on principal axes (stars: the truth's relaxed sites)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _along(segments: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """x (segment k spans [k, k+1], by path length within it) and energies of a path."""
    xs, es = [], []
    for k, seg in enumerate(segments):
        s = np.asarray(seg["s"])
        x = k + (s / s[-1] if s[-1] > 0 else np.linspace(0, 1, len(s)))
        xs.append(x if k == 0 else x[1:])
        es.append(np.asarray(seg["energies"]) if k == 0 else np.asarray(seg["energies"])[1:])
    return np.concatenate(xs), np.concatenate(es)


def fig2_paths(paths_out: Mapping[str, Any], path: str) -> str:
    """The truth's path (black) and every committee member's (thin, the committee's
    colour) along fcc -> hcp -> top -> fcc -> oct; middle: the surface part (meV);
    right: member minus truth on the truth's images. Returns ``path``."""
    plt = _pyplot()
    truth = paths_out["truth"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ticks = [0, 1, 2, 3, 4]
    ticklabels = [truth["segments"][0]["from"]] + [seg["to"] for seg in truth["segments"]]
    x_truth, e_truth = _along(truth["segments"])
    for name, members in paths_out["members"].items():
        colour = COLOURS.get(name[-1])
        for j, m in enumerate(members):
            if m.get("failure"):
                continue
            x, e = _along(m["segments"])
            label = name if j == 0 else None
            axes[0].plot(x, e, "-", lw=0.9, color=colour, alpha=0.8, label=label)
            surface = x <= 3
            axes[1].plot(x[surface], 1000 * e[surface], "-", lw=0.9, color=colour, alpha=0.8, label=label)
    axes[0].plot(x_truth, e_truth, "ko-", ms=3, lw=1.6, label="truth")
    surface = x_truth <= 3
    axes[1].plot(x_truth[surface], 1000 * e_truth[surface], "ko-", ms=3, lw=1.6, label="truth")
    axes[0].set_ylabel("energy relative to fcc (eV)")
    axes[1].set_ylabel("energy relative to fcc (meV)")
    axes[0].set_title("fcc -> hcp -> top -> fcc -> oct (each potential's own path)", fontsize=9)
    axes[1].set_title("surface part", fontsize=9)
    for ax in axes[:2]:
        ax.set_xticks(ticks[: 4 if ax is axes[1] else 5])
        ax.set_xticklabels(ticklabels[: 4 if ax is axes[1] else 5])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if truth["segments"]:
        n_truth = len(x_truth)
        idx = np.arange(n_truth)
        for name, c in paths_out["comparison"].items():
            err = c["error_on_truth_images"]
            axes[2].errorbar(idx, err["mean"], yerr=err["std"], fmt="o-", ms=3, lw=1, capsize=2,
                             color=COLOURS.get(name[-1]), label=name)
        ends = [0] + list(np.cumsum([len(seg["s"]) - 1 for seg in truth["segments"]]))
        axes[2].set_xticks(ends)
        axes[2].set_xticklabels(ticklabels)
        axes[2].axhspan(-0.05, 0.05, color="0.9", zorder=0)
        axes[2].axhline(0, color="k", lw=0.8)
        axes[2].set_ylabel("NNP - truth on the truth's images (eV)")
        axes[2].set_title("committee mean +- spread (band: 0.05 eV)", fontsize=9)
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
