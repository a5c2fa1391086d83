"""The hills kernel (gm_gaussian_sum) and its pruning blocks: against a plain numpy
sum, bit-identical run to run and for any threads or query grouping, the AVX2 and
baseline code paths (of the symmetry functions too), the incremental blocks against
blocks rebuilt from scratch, the nearest hill, and a bias capped by max_hills saved
and loaded exactly."""
import os
import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk
from threadpoolctl import threadpool_limits

from biasserver import kernels
from biasserver.bias import GMetaDBias
from biasserver.hills import BLOCK_SIZE, HillSet
from biasserver.symmetry import SymmetryFunctions

DIM = 12


def spread_hills(adaptive: bool, n: int = 700, prune_tolerance: float = 1e-12, seed: int = 0) -> HillSet:
    """Hills in two clusters far apart in the metric (so that pruning skips some),
    with anisotropic metrics; the centres of later hills drift (as in a run)."""
    rng = np.random.default_rng(seed)
    hills = HillSet(DIM, adaptive, prune_tolerance)
    for s in range(n):
        centre = rng.normal(scale=0.3, size=DIM) + (8.0 if s % 3 == 0 else 0.0) + 0.002 * s
        if adaptive:
            b = rng.normal(size=(DIM, DIM))
            metric = b @ b.T / DIM + 0.3 * np.eye(DIM)
        else:
            metric = rng.uniform(1.0, 4.0)
        hills.add(centre, rng.uniform(0.5e-3, 2e-3), metric, s)
    return hills


def queries(seed: int = 1, n: int = 70) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(scale=0.4, size=(n, DIM))
    q[::4] += 8.0
    q[1::7] += 30.0          # far from every hill: everything pruned
    return q


def numpy_sum(hills: HillSet, g: np.ndarray):
    d = g[:, None, :] - hills.centres[None, :, :]
    if hills.adaptive:
        y = np.einsum("sde,ise->isd", hills.metrics, d)
    else:
        y = hills.metrics[None, :, None] * d
    q = np.einsum("isd,isd->is", y, d)
    w = hills.heights[None, :] * np.exp(-0.5 * q)
    return w.sum(axis=1), -np.einsum("is,isd->id", w, y), q


@pytest.fixture(params=["avx2", "sse2"])
def isa(request):
    """Each test on each code path this CPU can run (on a CPU without AVX2 the
    'avx2' case checks that forcing it is refused and runs the baseline)."""
    if kernels.isa_available(request.param):
        kernels.set_isa(request.param)
    else:
        with pytest.raises(ValueError, match="cannot run"):
            kernels.set_isa(request.param)
        kernels.set_isa("sse2")
    yield kernels.isa()
    kernels.set_isa("auto")


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("pruned", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_equals_numpy_sum(isa, adaptive, pruned, threads):
    hills = spread_hills(adaptive, prune_tolerance=1e-12 if pruned else 0.0)
    g = queries()
    v_ref, dv_ref, q = numpy_sum(hills, g)
    with threadpool_limits(limits=threads, user_api="openmp"):
        v, dv, n_eval = hills.evaluate(g)
    # pruning drops only hills weighing < tolerance x their height
    slack = 1e-12 * hills.heights.sum() if pruned else 0.0
    assert np.abs(v - v_ref).max() <= 1e-12 * np.abs(v_ref).max() + slack
    assert np.abs(dv - dv_ref).max() <= 1e-12 * np.abs(dv_ref).max() + slack * np.abs(hills.metrics).max() * 40
    if pruned:
        assert n_eval < g.shape[0] * len(hills)                  # something was pruned
        assert n_eval >= int((q <= hills.q_cut).sum())           # never a needed pair
    else:
        assert n_eval == g.shape[0] * len(hills)


@pytest.mark.parametrize("pruned", [True, False])
def test_isotropic_narrow_hills_far_from_the_origin_equal_numpy(isa, pruned):
    """Isotropic gradients are summed as g sum f - sum f mu: with |g| ~ 10 and hills
    of sigma 0.02 (|g - mu| ~ 1e-2, the least favourable ratio of a symmetry-function
    run) they still equal the term-by-term numpy sum to 1e-12 of the largest."""
    rng = np.random.default_rng(3)
    hills = HillSet(DIM, False, 1e-12 if pruned else 0.0)
    offset = rng.uniform(2.0, 10.0, size=DIM)
    for s in range(300):
        hills.add(offset + rng.normal(scale=0.05, size=DIM), rng.uniform(0.5e-3, 2e-3), 1.0 / 0.02**2, s)
    g = offset + rng.normal(scale=0.05, size=(40, DIM))
    v_ref, dv_ref, q = numpy_sum(hills, g)
    v, dv, n_eval = hills.evaluate(g)
    slack = 1e-12 * hills.heights.sum() if pruned else 0.0
    assert np.abs(v - v_ref).max() <= 1e-12 * np.abs(v_ref).max() + slack
    assert np.abs(dv - dv_ref).max() <= 1e-12 * np.abs(dv_ref).max() + slack * hills.metrics.max() * 0.4
    assert n_eval >= int((q <= hills.q_cut).sum())


@pytest.mark.parametrize("adaptive", [True, False])
def test_kernel_bit_identical_run_to_run_threads_and_grouping(isa, adaptive):
    hills = spread_hills(adaptive)
    g = queries()
    with threadpool_limits(limits=1, user_api="openmp"):
        v1, dv1, n1 = hills.evaluate(g)
        again = hills.evaluate(g)
    with threadpool_limits(limits=2, user_api="openmp"):
        v2, dv2, n2 = hills.evaluate(g)
    assert np.array_equal(v1, again[0]) and np.array_equal(dv1, again[1])
    assert np.array_equal(v1, v2) and np.array_equal(dv1, dv2) and n1 == n2
    # each query alone, and in another order: the same bits
    for i in (0, 5, 33):
        v, dv, _ = hills.evaluate(g[i:i + 1])
        assert v[0] == v1[i] and np.array_equal(dv[0], dv1[i])
    perm = np.random.default_rng(3).permutation(len(g))
    v, dv, _ = hills.evaluate(g[perm])
    assert np.array_equal(v, v1[perm]) and np.array_equal(dv, dv1[perm])


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("pruned", [True, False])
def test_avx2_and_baseline_paths_agree(adaptive, pruned):
    hills = spread_hills(adaptive, prune_tolerance=1e-12 if pruned else 0.0)
    g = queries()
    results = {}
    for name in ("sse2", "avx2"):
        if not kernels.isa_available(name):
            with pytest.raises(ValueError, match="cannot run"):
                kernels.set_isa(name)
            continue
        assert kernels.set_isa(name) == name
        results[name] = hills.evaluate(g)
    kernels.set_isa("auto")
    v0, dv0, n0 = results["sse2"]
    for v, dv, n in results.values():
        assert n == n0
        assert np.abs(v - v0).max() <= 1e-12 * np.abs(v0).max()
        assert np.abs(dv - dv0).max() <= 1e-12 * np.abs(dv0).max()


def test_symmetry_functions_avx2_and_baseline_paths_agree():
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.1, seed=4)
    sf = SymmetryFunctions.default(["Si"])
    results = {}
    for name in ("sse2", "avx2"):
        if kernels.isa_available(name):
            kernels.set_isa(name)
            desc = sf.compute(atoms)
            results[name] = (desc.values["Si"], desc.derivatives["Si"])
    kernels.set_isa("auto")
    g0, d0 = results["sse2"]
    for g, d in results.values():
        assert np.abs(g - g0).max() <= 1e-12 * np.abs(g0).max()
        assert np.abs(d - d0).max() <= 1e-12 * np.abs(d0).max()


def test_isa_environment_variable_and_bad_values():
    code = "from biasserver import kernels; print(kernels.isa())"
    env = dict(os.environ, GMETAD_KERNEL_ISA="sse2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "sse2", out.stderr
    env["GMETAD_KERNEL_ISA"] = "avx9"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "GMETAD_KERNEL_ISA='avx9'" in out.stderr
    with pytest.raises(ValueError, match="one of auto, sse2, avx2"):
        kernels.set_isa("neon")
    assert kernels.isa() in ("sse2", "avx2")


def block_lists(blocks):
    order, first, count = blocks[:3]
    return [order[f:f + c] for f, c in zip(first, count)]


@pytest.mark.parametrize("adaptive", [True, False])
def test_incremental_blocks_equal_rebuilt_blocks(adaptive):
    hills = spread_hills(adaptive, n=900)
    rng = np.random.default_rng(5)
    for index in rng.choice(len(hills), size=60, replace=False):   # merges move hills
        hills.merge_into(int(index), hills.centres[index] + rng.normal(scale=0.5, size=DIM),
                         1e-3, hills.metrics[index], 1000)
    incremental, rebuilt = hills.blocks(), hills.rebuilt_blocks()
    # every hill in exactly one block; rigorous radius and eigenvalue bounds
    members = block_lists(incremental)
    assert sorted(np.concatenate(members).tolist()) == list(range(len(hills)))
    assert max(len(m) for m in members) <= BLOCK_SIZE
    _, _, _, centre, radius, min_eig = incremental
    for b, m in enumerate(members):
        assert np.sqrt(((hills.centres[m] - centre[b]) ** 2).sum(axis=1)).max() <= radius[b]
        assert min_eig[b] <= hills._min_eig[m].min()
    # the same hills survive pruning, and the same sums up to round-off
    g = queries()
    args = hills._kernel_arguments()
    v1, dv1, n1, (near1, q1) = kernels.gaussian_sum(g, **args, nearest=True)
    args["blocks"] = rebuilt
    v2, dv2, n2, (near2, q2) = kernels.gaussian_sum(g, **args, nearest=True)
    assert n1 == n2
    assert np.array_equal(near1, near2)
    assert np.abs(v1 - v2).max() <= 1e-12 * np.abs(v1).max()
    assert np.abs(dv1 - dv2).max() <= 1e-12 * np.abs(dv1).max()
    # a set built from the same calls has the same blocks, bit for bit
    again = spread_hills(adaptive, n=900)
    rng = np.random.default_rng(5)
    for index in rng.choice(len(again), size=60, replace=False):
        again.merge_into(int(index), again.centres[index] + rng.normal(scale=0.5, size=DIM),
                         1e-3, again.metrics[index], 1000)
    for a, b in zip(incremental, again.blocks()):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("adaptive", [True, False])
def test_nearest_hill_is_smallest_q(isa, adaptive):
    hills = spread_hills(adaptive, prune_tolerance=0.0)
    g = queries()
    _, index, q = hills.nearest(g)
    _, _, q_ref = numpy_sum(hills, g)
    assert np.array_equal(index, np.argmin(q_ref, axis=1))
    assert np.allclose(q, q_ref.min(axis=1), rtol=1e-12, atol=1e-12 * q_ref.max())
    pruned = spread_hills(adaptive)
    _, index, q = pruned.nearest(g)
    far = q_ref.min(axis=1) > pruned.q_cut
    assert np.all(index[far] == -1) and np.all(np.isinf(q[far]))
    assert np.array_equal(index[~far], np.argmin(q_ref, axis=1)[~far])


def si_frame(seed):
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.15, seed=seed)
    return atoms


def test_max_hills_caps_the_set_and_restarts_exactly(tmp_path):
    sf = SymmetryFunctions.default(["Si"], cutoff=4.0)
    path = tmp_path / "HILLS"
    live = GMetaDBias(sf, height=0.01, width=0.4, stride=1, species={"Si": 1.0}, max_hills=12,
                      hills_file=path)
    for seed in range(6):
        live.step(si_frame(seed))
    live.close()
    hills = live.hills["Si"]
    assert len(hills) == 12                                   # 5 depositions x 8 atoms, capped
    # merged heights are the merged hills' value at the merged centre: at most the deposited
    assert 0 < hills.heights.sum() <= 5 * 8 * 0.01 * (1 + 1e-12)
    loaded = GMetaDBias.load(path)
    assert loaded.max_hills == 12 and loaded.parameters() == live.parameters()
    for a, b in ((loaded.hills["Si"].centres, hills.centres), (loaded.hills["Si"].metrics, hills.metrics),
                 (loaded.hills["Si"].heights, hills.heights)):
        assert np.array_equal(a, b)
    probe = si_frame(20)
    e1, f1, v1 = live.energy_forces(probe)
    e2, f2, v2 = loaded.energy_forces(probe)
    assert e1 == e2 and np.array_equal(f1, f2) and np.array_equal(v1, v2)
    # continuing the restarted run deposits as the live one would
    restarted = GMetaDBias.load(path, append=True)
    live.step(si_frame(7))
    restarted.step(si_frame(7))
    restarted.close()
    assert np.array_equal(restarted.hills["Si"].centres, live.hills["Si"].centres)
    assert restarted.energy_forces(probe)[0] == live.energy_forces(probe)[0]


def test_max_hills_rejects_bad_values():
    sf = SymmetryFunctions.default(["Si"], cutoff=4.0)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="max_hills must be a positive integer"):
            GMetaDBias(sf, height=0.01, width=0.4, stride=1, species={"Si": 1.0}, max_hills=bad)


def test_batched_eigenvalue_bounds_are_each_matrix_own_bit_for_bit():
    """A hill's pruning bound must not depend on which other hills share its batch
    (a deposition's, or a whole hills file's when loading): restarts stay exact."""
    from biasserver.hills import metric_lower_bound, metric_lower_bounds
    rng = np.random.default_rng(11)
    a = rng.normal(size=(40, DIM, DIM))
    metrics = a @ a.transpose(0, 2, 1) + 1e-3 * np.eye(DIM)
    together = metric_lower_bounds(metrics)
    for k in (0, 7, 39):
        assert together[k] == metric_lower_bound(metrics[k])
        assert together[k] == metric_lower_bounds(metrics[k: k + 5])[0]
    assert np.all(together >= 0) and np.all(together <= np.linalg.eigvalsh(metrics)[:, 0])


def test_restart_between_depositions_with_repeated_merges_is_bit_identical(tmp_path):
    """Within a deposition a hill merged into again starts from the covariance its
    previous merge formed (HillSet.deposition), which is not in the hills file; a run
    restarted from the file between depositions must still continue bit for bit."""
    sf = SymmetryFunctions.default(["Si"], cutoff=4.0)
    path = tmp_path / "HILLS"
    live = GMetaDBias(sf, height=0.01, width=0.4, stride=1, species={"Si": 1.0}, compression=0.3,
                      max_hills=10, hills_file=path)
    for seed in range(4):
        live.step(si_frame(seed))
    live.close()
    restarted = GMetaDBias.load(path, append=True)
    remerged = 0
    for seed in range(4, 8):
        records = [bias.apply_candidates(bias._candidates(bias._descriptors(si_frame(seed))))[1]
                   for bias in (live, restarted)]
        for bias in (live, restarted):
            bias.step_count += 1
        ids = [r.id for r in records[0]]
        assert ids == [r.id for r in records[1]]
        remerged += len(ids) - len(set(ids))
    restarted.close()
    assert remerged > 0
    a, b = live.hills["Si"], restarted.hills["Si"]
    for x, y in ((a.centres, b.centres), (a.heights, b.heights), (a.metrics, b.metrics), (a.steps, b.steps)):
        assert np.array_equal(x, y)
    probe = si_frame(20)
    e1, f1, v1 = live.energy_forces(probe)
    e2, f2, v2 = restarted.energy_forces(probe)
    assert e1 == e2 and np.array_equal(f1, f2) and np.array_equal(v1, v2)
    reloaded = GMetaDBias.load(path)
    assert np.array_equal(reloaded.hills["Si"].metrics, a.metrics)
