"""Figures of a study (PNG, matplotlib's Agg backend, no display needed).

- :func:`fig4`: the paper's Fig. 4 style: NNP/truth ratio of every property for
  the three NNPs, error bars the committee spread (std over members / |truth|).
- :func:`coverage_plot`: coverage (covering centres) against simulated time of
  each training set.
- :func:`cross_table_plot`: force RMSE of each NNP on each set's test frames.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

#: colours of the three sets, the same in every figure
COLOURS = {"L": "tab:blue", "H": "tab:red", "G": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig4(results: Mapping[str, Any], path: str) -> str:
    """NNP/truth per property (rows), one marker per NNP, error bars = committee
    spread relative to the truth; failed recipes are marked with an x at the right
    edge. Returns ``path``."""
    plt = _pyplot()
    ratios = results["ratios"]
    keys = [k for k in results["properties"]["truth"]]
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(keys) + 1.6))
    y = np.arange(len(keys))[::-1]
    names = [n for n in ("NNP-L", "NNP-H", "NNP-G") if n in ratios]
    lo, hi = 0.0, 2.0
    for j, name in enumerate(names):
        offset = (j - (len(names) - 1) / 2) * 0.22
        colour = COLOURS.get(name[-1], None)
        xs, es, ys, fails = [], [], [], []
        for k, key in enumerate(keys):
            r = ratios[name][key]
            if r["ratio"] is None:
                fails.append(y[k] + offset)
                continue
            xs.append(r["ratio"]), es.append(r["spread"]), ys.append(y[k] + offset)
        clipped = np.clip(xs, lo, hi)
        ax.errorbar(clipped, ys, xerr=es, fmt="o", ms=4, color=colour, capsize=2, lw=1, label=name)
        out = [(c, yy) for c, x, yy in zip(clipped, xs, ys) if c != x]
        for c, yy in out:
            ax.annotate("", xy=(c, yy), xytext=(c - 0.08 * np.sign(c - 1), yy),
                        arrowprops={"arrowstyle": "->", "color": colour})
        if fails:
            ax.plot([hi] * len(fails), fails, "x", color=colour, ms=6)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvspan(0.9, 1.1, color="0.9", zorder=0)
    ax.set_yticks(y)
    ax.set_yticklabels(keys, fontsize=8)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("NNP / truth (committee mean; bars: spread over members)")
    ax.set_title(f"Si properties, truth: {results.get('truth', 'sw')} (x: recipe failed; arrows: off scale)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def coverage_plot(coverage: Mapping[str, Mapping[str, list]], path: str) -> str:
    """Covering centres against simulated time (ps) of each set. Returns ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, curve in coverage.items():
        ax.plot(curve["time_ps"], curve["centres"], label=name, color=COLOURS.get(name))
    ax.set_xlabel("simulated time of the set (ps; runs of a set one after another)")
    ax.set_ylabel("environments covered (centres)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def cross_table_plot(table: Mapping[str, Mapping[str, Mapping[str, float]]], path: str) -> str:
    """Heat map of force RMSE (eV/A): rows NNPs, columns test sets. Returns ``path``."""
    plt = _pyplot()
    models = list(table)
    sets = list(table[models[0]])
    values = np.array([[table[m][s]["force_rmse"] for s in sets] for m in models])
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    im = ax.imshow(values, cmap="viridis")
    for i in range(len(models)):
        for j in range(len(sets)):
            ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center",
                    color="w" if values[i, j] < values.max() * 0.6 else "k", fontsize=9)
    ax.set_xticks(range(len(sets)))
    ax.set_xticklabels([f"{s} frames" for s in sets])
    ax.set_yticks(range(len(models)))
    ax.set_yticklabels(models)
    fig.colorbar(im, ax=ax, label="force RMSE (eV/A)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
