"""After gmetad run: what each walker recorded and what they found together.

Runs in the output folder. For each walker: frames, steps, the H height above
the top Pt layer (min / max, A); then the distinct H environments (greedy
covering at radius 1 of the H symmetry functions, standardised by walker 0's
frames, biasserver.coverage) found by each walker alone and by all together.
Writes walkers.txt.
"""
import glob
import os

import numpy as np
from ase.io import read

from biasserver import hillsfile
from biasserver.coverage import Coverage, environments
from biasserver.symmetry import SymmetryFunctions

TOP_LAYER = list(range(27, 36))   # the top Pt layer of init.xyz
H = 36

folders = sorted(glob.glob(os.path.join("gmetad", "walker-*")), key=lambda p: int(p.rsplit("-", 1)[1]))
sf = SymmetryFunctions.default(["Pt", "H"], 6.0)
runs = [read(os.path.join(f, "frames.extxyz"), ":") for f in folders]
envs = [environments(frames, sf) for frames in runs]
reference = Coverage.from_reference({"H": envs[0]["H"]})
lines = []
together = Coverage(reference.mean, reference.scale, reference.radius)
for r, (frames, env) in enumerate(zip(runs, envs)):
    height = np.array([a.positions[H, 2] - a.positions[TOP_LAYER, 2].mean() for a in frames])
    alone = Coverage(reference.mean, reference.scale, reference.radius)
    alone.add({"H": env["H"]})
    together.add({"H": env["H"]})
    steps = [a.info["step"] for a in frames]
    lines.append(f"walker {r}: {len(frames)} frames (steps {min(steps)}..{max(steps)}), H height "
                 f"{height.min():.2f}..{height.max():.2f} A, {alone.count('H')} distinct H environments")
hills = hillsfile.read(os.path.join("gmetad", "HILLS")).records
lines.append(f"all walkers: {together.count('H')} distinct H environments, {len(hills)} hills in the shared bias")
text = "\n".join(lines) + "\n"
print(text, end="")
with open("walkers.txt", "w") as handle:
    handle.write(text)
