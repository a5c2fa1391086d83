"""The coverage measure: a greedy covering of standardised environments."""
import numpy as np
import pytest
from ase.build import bulk

from biasserver.coverage import Coverage, coverage_curve, environments
from biasserver.symmetry import SymmetryFunctions


def test_greedy_covering_properties():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(400, 5))
    cov = Coverage({"X": np.zeros(5)}, {"X": np.ones(5)}, radius=1.5)
    # in batches: the result is the greedy covering of the points in order
    for batch in np.array_split(points, 7):
        cov.add({"X": batch})
    centres = cov.centres["X"]
    d_points = np.sqrt(((points[:, None] - centres[None]) ** 2).sum(axis=2)).min(axis=1)
    assert d_points.max() <= 1.5                              # every point is covered
    d_centres = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(axis=2))
    assert d_centres[np.triu_indices(len(centres), 1)].min() > 1.5   # centres are r apart
    one = Coverage({"X": np.zeros(5)}, {"X": np.ones(5)}, radius=1.5)
    one.add({"X": points})
    np.testing.assert_array_equal(one.centres["X"], centres)    # batching changes nothing
    assert cov.count() == cov.count("X") == len(centres)


def test_standardisation_and_zero_spread():
    points = np.array([[0.0, 5.0], [0.5, 5.0], [3.0, 5.0]])
    cov = Coverage.from_reference({"X": points}, radius=1.0)
    assert cov.scale["X"][1] == 1.0                            # a constant function is scaled by 1
    fresh = Coverage(cov.mean, cov.scale, 1.0)
    assert fresh.add({"X": points}) == 2                       # 0.5 / std (1.33) < 1: one centre for two
    with pytest.raises(ValueError, match="radius"):
        Coverage(cov.mean, cov.scale, 0.0)


def test_larger_displacements_cover_more_environments():
    sf = SymmetryFunctions.default(["Si"], cutoff=4.0)
    crystal = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
    def frames(amplitude, n=4):
        out = []
        for k in range(n):
            atoms = crystal.copy()
            atoms.rattle(amplitude, seed=k)
            out.append(atoms)
        return out
    reference = Coverage.from_reference(environments(frames(0.05), sf), radius=2.0)
    cold = coverage_curve(frames(0.05), sf, reference)
    hot = coverage_curve(frames(0.25), sf, reference)
    assert np.all(np.diff(cold) >= 0) and np.all(np.diff(hot) >= 0)
    assert hot[-1] > 2 * cold[-1] > 0


def test_screened_distances_decide_as_the_direct_sum():
    """Coverage's matrix-product screening of distances decides every point as the
    direct sum of squared differences does, also for points exactly on the radius and
    within round-off of it, far from the origin and with more centres than one block."""
    from biasserver import coverage as cov

    rng = np.random.default_rng(7)
    dim = 26
    centres = rng.normal(0.0, 3.0, (700, dim)) + 40.0        # far from the origin: |c|^2 ~ 4e4
    direction = rng.normal(size=(300, dim))
    direction /= np.linalg.norm(direction, axis=1)[:, None]
    radius = rng.uniform(0.5, 1.5, 300)
    radius[:100] = 1.0                                          # exactly on the radius
    radius[100:200] = 1.0 + rng.choice([-1, 1], 100) * rng.uniform(0, 1e-13, 100)
    points = centres[rng.integers(0, len(centres), 300)] + radius[:, None] * direction
    points = np.vstack([points, rng.normal(0.0, 3.0, (200, dim)) + 40.0])
    direct = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).min(axis=1) > 1.0
    saved = cov._BLOCK
    try:
        for block in (saved, 64):                               # one block, and 11 blocks
            cov._BLOCK = block
            assert np.array_equal(cov._farther_than(points, centres, 1.0), direct)
    finally:
        cov._BLOCK = saved
    assert 0 < direct.sum() < len(direct)
