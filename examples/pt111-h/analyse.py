"""Where did the H atom go? Site statistics and a plot for the G-metaD and plain runs.

Run by ``gmetad run examples/pt111-h`` in the output folder (or by hand:
``python analyse.py [OUTPUT]``). Reads ``<variant>/frames.extxyz``, writes
``sites.png`` (the H site over time, one panel per run) and ``sites.txt`` (the
fraction of time in each site), and prints the summary.
"""
from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
from ase.io import read

from studies.adsorption_sites import SITES, site_series

LABELS = {"gmetad": "G-metaD", "plain": "plain MD"}


def timestep_fs(run_dir: str) -> float:
    """MD time step (fs) of a run, from its i-PI input."""
    node = ET.parse(os.path.join(run_dir, "input.xml")).getroot().find(".//dynamics/timestep")
    value = float(node.text)
    return value if node.get("units", "atomic_unit") == "femtosecond" else value * 2.4188843e-2


def main(output: str = ".") -> int:
    runs = [v for v in ("gmetad", "plain") if os.path.exists(os.path.join(output, v, "frames.extxyz"))]
    if not runs:
        print(f"no frames found under {os.path.abspath(output)}", file=sys.stderr)
        return 1
    series, lines = {}, []
    for variant in runs:
        frames = read(os.path.join(output, variant, "frames.extxyz"), ":")
        steps = np.array([f.info["step"] for f in frames])
        sites = site_series(frames)
        series[variant] = (steps * timestep_fs(os.path.join(output, variant)) / 1000.0, sites)
        counts = {s: sites.count(s) for s in SITES}
        visited = [s for s in SITES if counts[s]]
        lines.append(f"{LABELS[variant]:9s}: {len(frames)} frames, visited {len(visited)} sites "
                     f"({', '.join(visited)}); time fractions: "
                     + ", ".join(f"{s} {counts[s] / len(sites):.2f}" for s in SITES))
    summary = "\n".join(lines)
    print(summary)
    with open(os.path.join(output, "sites.txt"), "w") as handle:
        handle.write(summary + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return 0
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 2.2 * len(runs)), sharex=True, squeeze=False)
    for ax, variant in zip(axes[:, 0], runs):
        time_ps, sites = series[variant]
        ax.plot(time_ps, [SITES.index(s) for s in sites], ".", markersize=2)
        ax.set_yticks(range(len(SITES)), SITES)
        ax.set_ylim(-0.5, len(SITES) - 0.5)
        ax.set_title(f"H on Pt(111), 600 K: {LABELS[variant]}", fontsize=10)
    axes[-1, 0].set_xlabel("time (ps)")
    fig.tight_layout()
    fig.savefig(os.path.join(output, "sites.png"), dpi=120)
    print(f"wrote {os.path.join(output, 'sites.png')} and sites.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
