"""The C hill merge (gm_merge_hills through kernels.merge_hills and HillSet.merge_into)
against the moment-matching formulas in numpy: dimensions 1 to 70, with and without
the covariances given, ill-conditioned metrics, equal centres, very different
heights; exactly symmetric and bit-identical on repeat; a metric that is not
positive definite falls back to the numpy (LU) path."""
import numpy as np
import pytest

from biasserver import kernels
from biasserver.hills import HillSet

EPS = np.finfo(float).eps


def reference_merge(h0, mu0, a0, h1, mu1, a1):
    """(centre, height, metric, covariance) of the merged hill, from the formulas."""
    w0, w1 = h0 / (h0 + h1), h1 / (h0 + h1)
    d = mu0 - mu1
    mu = w0 * mu0 + w1 * mu1
    cov = w0 * np.linalg.inv(a0) + w1 * np.linalg.inv(a1) + w0 * w1 * np.outer(d, d)
    q0 = (mu - mu0) @ a0 @ (mu - mu0)
    q1 = (mu - mu1) @ a1 @ (mu - mu1)
    return mu, h0 * np.exp(-q0 / 2) + h1 * np.exp(-q1 / 2), np.linalg.inv(cov), cov


def random_metric(rng, dim, condition):
    """A symmetric positive-definite metric with eigenvalues from 1 to ``condition``."""
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    a = (q * np.geomspace(1.0, condition, dim)) @ q.T
    return 0.5 * (a + a.T)


def assert_close(actual, expected, tolerance):
    """Equal to ``tolerance`` times the largest entry of ``expected``."""
    assert np.abs(np.asarray(actual) - expected).max() <= tolerance * np.abs(expected).max()


def merge_case(rng, dim, condition, heights=(0.002, 0.001), same_centre=False, offset=0.5):
    """Two hills whose centres are ``offset`` apart per coordinate (the new one's
    q is then of order dim offset^2 times the metric's eigenvalues)."""
    mu0 = rng.normal(size=dim)
    mu1 = mu0.copy() if same_centre else mu0 + rng.normal(scale=offset, size=dim)
    return (heights[0], mu0, random_metric(rng, dim, condition),
            heights[1], mu1, random_metric(rng, dim, condition))


@pytest.mark.parametrize("dim", [1, 3, 26, 70])
@pytest.mark.parametrize("given", ["none", "new", "both"])
def test_merge_equals_the_formulas(dim, given):
    rng = np.random.default_rng(dim)
    condition = 1e2
    h0, mu0, a0, h1, mu1, a1 = merge_case(rng, dim, condition)
    s0 = np.linalg.inv(a0) if given == "both" else None
    s1 = np.linalg.inv(a1) if given != "none" else None
    mu, height, metric, cov = kernels.merge_hills(h0, mu0, a0, s0, h1, mu1, a1, s1)
    ref = reference_merge(h0, mu0, a0, h1, mu1, a1)
    assert_close(mu, ref[0], 1e-14)
    assert height == pytest.approx(ref[1], rel=1e-13, abs=0)
    # inverses agree to eps times the condition number (here about 1e-12)
    assert_close(metric, ref[2], 50 * EPS * condition)
    assert_close(cov, ref[3], 50 * EPS * condition)
    assert np.array_equal(metric, metric.T) and np.array_equal(cov, cov.T)


@pytest.mark.parametrize("dim", [3, 26])
def test_ill_conditioned_metrics(dim):
    """Condition 1e8: the inverses agree with numpy's to eps times the condition number
    (both are that accurate), the centre and height to round-off."""
    rng = np.random.default_rng(10 + dim)
    condition = 1e8
    h0, mu0, a0, h1, mu1, a1 = merge_case(rng, dim, condition, offset=3e-5)
    mu, height, metric, cov = kernels.merge_hills(h0, mu0, a0, None, h1, mu1, a1, None)
    ref = reference_merge(h0, mu0, a0, h1, mu1, a1)
    assert_close(mu, ref[0], 1e-14)
    assert 0.1 * (h0 + h1) < height < h0 + h1
    assert height == pytest.approx(ref[1], rel=1e-12, abs=0)
    assert_close(cov, ref[3], 50 * EPS * condition)
    assert_close(metric, ref[2], 50 * EPS * condition)
    assert np.array_equal(metric, metric.T)


def test_equal_centres_add_heights_and_average_covariances():
    rng = np.random.default_rng(3)
    h0, mu0, a0, h1, mu1, a1 = merge_case(rng, 26, 1e2, same_centre=True)
    mu, height, metric, cov = kernels.merge_hills(h0, mu0, a0, None, h1, mu1, a1, None)
    assert np.array_equal(mu, mu0)
    assert height == h0 + h1
    w0, w1 = h0 / (h0 + h1), h1 / (h0 + h1)
    assert_close(cov, w0 * np.linalg.inv(a0) + w1 * np.linalg.inv(a1), 50 * EPS * 1e2)


@pytest.mark.parametrize("heights", [(1.0, 1e-9), (1e-9, 1.0)])
def test_very_different_heights(heights):
    """The merged hill is the heavier one to within the lighter one's weight."""
    rng = np.random.default_rng(5)
    h0, mu0, a0, h1, mu1, a1 = merge_case(rng, 26, 1e2, heights=heights)
    mu, height, metric, cov = kernels.merge_hills(h0, mu0, a0, None, h1, mu1, a1, None)
    ref = reference_merge(h0, mu0, a0, h1, mu1, a1)
    assert_close(mu, ref[0], 1e-14)
    assert height == pytest.approx(ref[1], rel=1e-13, abs=0)
    assert_close(metric, ref[2], 50 * EPS * 1e2)
    heavy = (mu0, a0) if h0 > h1 else (mu1, a1)
    assert_close(mu, heavy[0], 1e-8)
    assert_close(metric, heavy[1], 1e-7)


def test_bit_identical_on_repeat():
    rng = np.random.default_rng(6)
    case = merge_case(rng, 26, 1e4)
    h0, mu0, a0, h1, mu1, a1 = case
    first = kernels.merge_hills(h0, mu0, a0, None, h1, mu1, a1, None)
    for _ in range(3):
        again = kernels.merge_hills(h0, mu0, a0, None, h1, mu1, a1, None)
        assert again[1] == first[1]
        assert all(np.array_equal(again[k], first[k]) for k in (0, 2, 3))


def test_not_positive_definite_falls_back_to_the_numpy_path():
    """A metric with a negative eigenvalue: the kernel refuses it, HillSet.merge_into
    then merges as before (numpy, LU inverse), bit for bit."""
    rng = np.random.default_rng(7)
    dim = 5
    h0, mu0, a0, h1, mu1, a1 = merge_case(rng, dim, 10.0)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    a0 = (q * np.array([-0.5, 1.0, 2.0, 3.0, 4.0])) @ q.T
    a0 = 0.5 * (a0 + a0.T)
    with pytest.raises(kernels.NotPositiveDefinite):
        kernels.merge_hills(h0, mu0, a0, None, h1, mu1, a1, None)
    hills = HillSet(dim, adaptive=True, prune_tolerance=0)
    hills.add(mu0, h0, a0, 0)
    expected = hills._merged_numpy(0, None, mu1, h1, a1, None)
    hills.merge_into(0, mu1, h1, a1, 1)
    assert np.array_equal(hills.centres[0], expected[0])
    assert hills.heights[0] == expected[1]
    assert np.array_equal(hills.metrics[0], expected[2])
    ref = reference_merge(h0, mu0, a0, h1, mu1, a1)
    assert_close(hills.metrics[0], ref[2], 1e-12)


def test_merge_into_uses_the_kernel_and_remembers_the_covariance():
    """HillSet.merge_into stores the kernel's merge bit for bit and, inside a
    deposition, remembers the merged covariance for the next merge into that hill."""
    rng = np.random.default_rng(8)
    h0, mu0, a0, h1, mu1, a1 = merge_case(rng, 26, 1e3)
    hills = HillSet(26, adaptive=True)
    hills.add(mu0, h0, a0, 0)
    with hills.deposition():
        hills.merge_into(0, mu1, h1, a1, 1)
        mu, height, metric, cov = kernels.merge_hills(h0, mu0, a0, None, h1, mu1, a1, None)
        assert np.array_equal(hills.centres[0], mu) and hills.heights[0] == height
        assert np.array_equal(hills.metrics[0], metric)
        assert np.array_equal(hills._covariances[0], cov)
        assert hills.steps[0] == 1


def test_wrong_shapes_are_refused():
    rng = np.random.default_rng(9)
    h0, mu0, a0, h1, mu1, a1 = merge_case(rng, 4, 10.0)
    with pytest.raises(ValueError, match="shapes"):
        kernels.merge_hills(h0, mu0, a0, None, h1, mu1[:3], a1, None)
    with pytest.raises(ValueError, match="shapes"):
        kernels.merge_hills(h0, mu0, a0, np.eye(3), h1, mu1, a1, None)
