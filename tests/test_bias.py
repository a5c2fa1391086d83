"""GMetaDBias: forces and virial against finite differences, deposition semantics,
well-tempering, compression, pruning, walls and the hills file."""
import contextlib

import numpy as np
import pytest
from ase import Atom
from ase.build import bulk, fcc111

from biasserver.bias import GMetaDBias
from biasserver.hills import HillSet
from biasserver.hillsfile import HillsFileError
from biasserver.symmetry import SymmetryFunctions
from biasserver.units import KB
from biasserver.walls import DistanceWall, HeightWall


def pt_h_slab(seed=0):
    slab = fcc111("Pt", (2, 2, 3), vacuum=5.0)
    slab.append(Atom("H", slab.positions[-1] + (0.3, 0.9, 1.6)))
    slab.append(Atom("H", slab.positions[-3] + (0.8, -0.2, 1.5)))
    slab.rattle(0.05, seed=seed)
    return slab


def si_cell(seed=0):
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


def strained(atoms, eps):
    """Atoms with positions and cell mapped by r -> (I + eps) r."""
    out = atoms.copy()
    m = np.eye(3) + eps
    out.set_cell(atoms.cell.array @ m.T, scale_atoms=False)
    out.positions = atoms.positions @ m.T
    return out


def check_forces_virial(bias, atoms, n_components=12, h=1e-5, rtol=1e-5, atol=1e-8, seed=0):
    energy, forces, virial = bias.energy_forces(atoms)
    assert forces.shape == (len(atoms), 3) and virial.shape == (3, 3)
    rng = np.random.default_rng(seed)
    for flat in rng.choice(3 * len(atoms), size=n_components, replace=False):
        i, k = divmod(int(flat), 3)
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        fd = -(bias.energy_forces(plus)[0] - bias.energy_forces(minus)[0]) / (2 * h)
        assert fd == pytest.approx(forces[i, k], rel=rtol, abs=atol), (i, k)
    if atoms.pbc.all():
        for a in range(3):
            for b in range(3):
                eps = np.zeros((3, 3))
                eps[a, b] = h
                fd = -(bias.energy_forces(strained(atoms, eps))[0]
                       - bias.energy_forces(strained(atoms, -eps))[0]) / (2 * h)
                assert fd == pytest.approx(virial[a, b], rel=rtol, abs=atol), (a, b)
    return energy


@pytest.mark.parametrize("covariance,width", [("adaptive", 0.5), ("isotropic", 0.3)])
def test_forces_virial_single_element(covariance, width):
    atoms = si_cell()
    sf = SymmetryFunctions.default(["Si"], cutoff=4.0)
    bias = GMetaDBias(sf, height=0.01, width=width, stride=1, species={"Si": 1.0}, covariance=covariance)
    bias.deposit(atoms)
    bias.deposit(si_cell(seed=3))
    moved = si_cell(seed=5)
    assert check_forces_virial(bias, moved) > 0


@pytest.mark.parametrize("covariance,width", [("adaptive", 0.4), ("isotropic", 0.5)])
def test_forces_two_elements_and_zero_coefficient(covariance, width):
    atoms = pt_h_slab()
    sf = SymmetryFunctions.default(["Pt", "H"], cutoff=4.5)
    bias = GMetaDBias(sf, height=0.02, width=width, stride=1, species={"H": 1.5, "Pt": 0.0},
                      covariance=covariance)
    assert bias.deposit(atoms) == 2              # only the two H atoms deposit
    assert len(bias.hills["Pt"]) == 0
    moved = pt_h_slab(seed=1)
    energy = check_forces_virial(bias, moved, n_components=20)
    assert energy > 0
    # the bias acts through the H environments only, but moves the Pt atoms near them
    _, forces, _ = bias.energy_forces(moved)
    assert np.abs(forces[:-2]).max() > 0


def test_both_elements_biased_periodic_virial():
    atoms = bulk("SiC", "zincblende", 4.36, cubic=True)
    atoms.rattle(0.05, seed=2)
    sf = SymmetryFunctions.default(["Si", "C"], cutoff=3.5)
    bias = GMetaDBias(sf, height=0.01, width=0.5, stride=1, species={"Si": 1.0, "C": 0.5})
    bias.deposit(atoms)
    moved = atoms.copy()
    moved.rattle(0.05, seed=7)
    check_forces_virial(bias, moved)


def test_deposition_stride_semantics():
    atoms = pt_h_slab()
    sf = SymmetryFunctions.default(["Pt", "H"], cutoff=4.5)
    bias = GMetaDBias(sf, height=0.01, width=0.5, stride=3, species={"H": 1.0})
    counts = []
    for step in range(10):
        before = bias.energy_forces(atoms)
        result = bias.step(atoms)
        # the forces returned by step are those before its deposition
        assert result[0] == before[0]
        np.testing.assert_array_equal(result[1], before[1])
        counts.append(bias.n_hills)
    # deposits after steps 3, 6 and 9 (never at step 0), two H atoms each
    assert counts == [0, 0, 0, 2, 2, 2, 4, 4, 4, 6]
    assert list(bias.hills["H"].steps) == [3, 3, 6, 6, 9, 9]
    assert bias.step_count == 10


def test_height_at_centre_is_h_and_well_tempered_height():
    atoms = si_cell()
    sf = SymmetryFunctions.default(["Si"], cutoff=4.0)
    h0, dT = 0.05, 300.0
    bias = GMetaDBias(sf, height=h0, width=0.5, stride=1, species={"Si": 2.0}, well_tempered=dT)
    bias.deposit(atoms)
    assert np.all(bias.hills["Si"].heights == h0)
    felt = bias.atom_energies(atoms)        # c * V(G_i) before the second deposition
    bias.deposit(atoms)
    expected = h0 * np.exp(-felt / (KB * dT))
    np.testing.assert_allclose(bias.hills["Si"].heights[8:], expected, rtol=1e-12)
    assert np.all(expected < h0)


def test_save_load_bit_identical(tmp_path):
    atoms = pt_h_slab()
    sf = SymmetryFunctions.default(["Pt", "H"], cutoff=4.5)
    walls = [HeightWall("H", height=3.0, k=5.0, reference=[8, 9, 10, 11]), DistanceWall(0.8, 10.0)]
    bias = GMetaDBias(sf, height=0.01, width=0.5, stride=2, species={"H": 1.0},
                      well_tempered=1200.0, walls=walls)
    for seed in range(7):
        bias.step(pt_h_slab(seed=seed))
    path = tmp_path / "hills"
    bias.save(path)
    loaded = GMetaDBias.load(path)
    assert loaded.n_hills == bias.n_hills == 6
    assert loaded.parameters() == bias.parameters()
    probe = pt_h_slab(seed=11)
    e1, f1, v1 = bias.energy_forces(probe)
    e2, f2, v2 = loaded.energy_forces(probe)
    assert e1 == e2
    assert np.array_equal(f1, f2) and np.array_equal(v1, v2)


def test_appended_hills_file_restarts_exactly(tmp_path):
    atoms = si_cell()
    sf = SymmetryFunctions.default(["Si"], cutoff=4.0)
    path = tmp_path / "HILLS"
    live = GMetaDBias(sf, height=0.01, width=0.4, stride=1, species={"Si": 1.0},
                      compression=0.5, hills_file=path)
    for seed in range(4):
        live.step(si_cell(seed=seed % 2))   # revisits: some hills are merged
    live.close()
    restarted = GMetaDBias.load(path, append=True)
    assert restarted.n_hills == live.n_hills
    probe = si_cell(seed=9)
    assert restarted.energy_forces(probe)[0] == live.energy_forces(probe)[0]
    # a crash mid-write leaves a partial line: it is ignored, then cut on the next append
    with open(path, "a") as handle:
        handle.write("123 4 Si 0.01 1.0 2.")
    with pytest.warns(UserWarning, match="incomplete last line"):
        again = GMetaDBias.load(path, append=True)
    assert again.n_hills == live.n_hills
    again.deposit(probe)
    again.close()
    assert GMetaDBias.load(path).n_hills == again.n_hills


def test_compression_keeps_energy_surface():
    """Merging hills closer than d (Mahalanobis) changes V by at most ~d^2/8 of the merged height."""
    rng = np.random.default_rng(0)
    dim, threshold = 6, 0.2
    full = HillSet(dim, adaptive=True, prune_tolerance=0)
    merged = HillSet(dim, adaptive=True, prune_tolerance=0)
    base = np.diag(rng.uniform(1, 4, dim))
    n_merges = 0
    for k in range(40):
        centre = rng.normal(size=dim) * 0.03 + (k % 4)      # four tight clusters
        full.add(centre, 0.01, base, k)
        q = merged.mahalanobis2(centre) if len(merged) else np.array([np.inf])
        if q.min() < threshold**2:
            merged.merge_into(int(np.argmin(q)), centre, 0.01, base, k)
            n_merges += 1
        else:
            merged.add(centre, 0.01, base, k)
    assert n_merges > 20 and len(merged) < 20
    queries = np.concatenate([full.centres, full.centres + rng.normal(size=(40, dim)) * 0.5])
    v_full = full.evaluate(queries)[0]
    v_merged = merged.evaluate(queries)[0]
    assert np.abs(v_full - v_merged).max() <= threshold**2 / 8 * 1.5 * full.heights.sum()
    # merged heights are the merged hills' sum at the merged centre: h0 + h1 within q/2
    assert merged.heights.sum() <= full.heights.sum()
    assert merged.heights.sum() == pytest.approx(full.heights.sum(), rel=threshold**2 / 2)


@pytest.mark.parametrize("adaptive", [True, False])
def test_merged_height_is_the_two_hills_value_at_the_merged_centre(adaptive):
    rng = np.random.default_rng(2)
    dim = 5
    hills = HillSet(dim, adaptive=adaptive, prune_tolerance=0)
    a = rng.normal(size=(dim, dim))
    metric0 = a @ a.T + np.eye(dim) if adaptive else 2.5
    metric1 = np.diag(rng.uniform(0.5, 3.0, dim)) if adaptive else 0.7
    mu0, mu1, h0, h1 = rng.normal(size=dim), rng.normal(size=dim), 0.004, 0.001
    hills.add(mu0, h0, metric0, 0)
    pair = HillSet(dim, adaptive=adaptive, prune_tolerance=0)
    pair.add(mu0, h0, metric0, 0)
    pair.add(mu1, h1, metric1, 1)
    hills.merge_into(0, mu1, h1, metric1, 1)
    mu = (h0 * mu0 + h1 * mu1) / (h0 + h1)
    assert np.allclose(hills.centres[0], mu, rtol=0, atol=1e-15)
    value = pair.evaluate(mu[None, :], gradient=False)[0][0]
    assert hills.heights[0] == pytest.approx(value, rel=1e-13)
    assert hills.heights[0] < h0 + h1
    # identical hills: the heights add exactly and the shape stays
    same = HillSet(dim, adaptive=adaptive, prune_tolerance=0)
    same.add(mu0, h0, metric0, 0)
    same.merge_into(0, mu0, h1, metric0, 1)
    assert same.heights[0] == h0 + h1
    assert np.allclose(same.metrics[0], metric0, rtol=1e-12, atol=0)


def test_compression_in_bias_merges_repeated_environment():
    atoms = si_cell()
    sf = SymmetryFunctions.default(["Si"], cutoff=4.0)
    bias = GMetaDBias(sf, height=0.01, width=0.4, stride=1, species={"Si": 1.0}, compression=0.1)
    first = bias.deposit(atoms)
    assert 1 <= first <= 8              # near-identical atoms of one step may merge already
    assert bias.deposit(atoms) == 0     # identical environments merge
    assert bias.n_hills == first
    # merges within compression 0.1 keep the summed height to within q/2 <= 0.5 %
    assert bias.hills["Si"].heights.sum() == pytest.approx(2 * 8 * 0.01, rel=0.1**2 / 2)


@pytest.mark.parametrize("adaptive", [True, False])
def test_pruning_is_rigorous_and_skips_far_hills(adaptive):
    rng = np.random.default_rng(1)
    dim = 8
    pruned = HillSet(dim, adaptive)
    exact = HillSet(dim, adaptive, prune_tolerance=0)
    for k in range(2000):
        centre = rng.normal(size=dim) * 0.05 + rng.integers(0, 20) * 3.0
        a = rng.normal(size=(dim, dim))
        metric = a @ a.T + dim * np.eye(dim) if adaptive else 2.0
        pruned.add(centre, 0.01, metric, k)
        exact.add(centre, 0.01, metric, k)
    queries = pruned.centres[:50] + 0.01
    v1, g1, n1 = pruned.evaluate(queries)
    v2, g2, n2 = exact.evaluate(queries)
    np.testing.assert_allclose(v1, v2, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g1, g2, rtol=1e-8, atol=1e-12)
    assert n2 == 50 * 2000
    assert n1 < n2 / 5


def test_walls_forces_virial():
    atoms = pt_h_slab()
    atoms.positions[-1, 2] += 2.0            # H above the height wall
    atoms.positions[-2] = atoms.positions[-3] + (0.0, 0.3, 0.5)   # H too close to Pt
    sf = SymmetryFunctions.default(["Pt", "H"], cutoff=4.5)
    walls = [HeightWall([12, 13], height=2.0, k=3.0, reference=[8, 9, 10, 11]),
             DistanceWall(1.2, 20.0, elements=["Pt", "H"])]
    bias = GMetaDBias(sf, height=0.01, width=0.5, stride=1, species={"H": 1.0}, walls=walls)
    energy = check_forces_virial(bias, atoms, n_components=40)
    assert bias.last_terms["walls"] > 0 and bias.last_terms["hills"] == 0
    assert energy == bias.last_terms["walls"]
    bulk_atoms = si_cell()
    bulk_atoms.positions[1] = bulk_atoms.positions[0] + (0.5, 0.6, 0.0)
    dwall = GMetaDBias(SymmetryFunctions.default(["Si"], cutoff=4.0), 0.01, 0.5, 1, {"Si": 1.0},
                       walls=[{"kind": "distance", "min_distance": 1.8, "k": 5.0}])
    assert check_forces_virial(dwall, bulk_atoms, n_components=24) > 0


def test_bad_arguments_raise_clear_errors(tmp_path):
    sf = SymmetryFunctions.default(["Si"], cutoff=4.0)
    with pytest.raises(ValueError, match="height"):
        GMetaDBias(sf, 0.0, 1.0, 1, {"Si": 1.0})
    with pytest.raises(ValueError, match="stride"):
        GMetaDBias(sf, 0.01, 1.0, 0, {"Si": 1.0})
    with pytest.raises(ValueError, match="covariance"):
        GMetaDBias(sf, 0.01, 1.0, 1, {"Si": 1.0}, covariance="diagonal")
    with pytest.raises(ValueError, match="'Ge'"):
        GMetaDBias(sf, 0.01, 1.0, 1, {"Ge": 1.0})
    with pytest.raises(ValueError, match="wall kind"):
        GMetaDBias(sf, 0.01, 1.0, 1, {"Si": 1.0}, walls=[{"kind": "ceiling"}])
    bias = GMetaDBias(sf, 0.01, 1.0, 1, {"Si": 1.0})
    atoms = si_cell()
    atoms.positions[2, 0] = np.nan
    with pytest.raises(ValueError, match="atom 2"):
        bias.energy_forces(atoms)


def test_mismatched_hills_file(tmp_path):
    atoms = si_cell()
    sf = SymmetryFunctions.default(["Si"], cutoff=4.0)
    bias = GMetaDBias(sf, 0.01, 0.5, 1, {"Si": 1.0})
    bias.deposit(atoms)
    path = tmp_path / "hills.si"
    bias.save(path)
    other = GMetaDBias(SymmetryFunctions.default(["Si"], cutoff=5.0), 0.01, 0.5, 1, {"Si": 1.0})
    with pytest.raises(HillsFileError, match="hills.si.*symmetry functions differ"):
        other.load_hills(path)
    iso = GMetaDBias(sf, 0.01, 0.5, 1, {"Si": 1.0}, covariance="isotropic")
    with pytest.raises(HillsFileError, match="adaptive hills cannot be loaded"):
        iso.load_hills(path)
    lines = path.read_text().splitlines()
    lines[-1] = " ".join(lines[-1].split()[:-3])     # a record with too few columns
    bad = tmp_path / "truncated"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(HillsFileError, match=rf"truncated, line {len(lines)}: expected"):
        GMetaDBias.load(bad)
    notes = tmp_path / "notes.txt"
    notes.write_text("just some text\n")
    with pytest.raises(HillsFileError, match="notes.txt"):
        GMetaDBias.load(notes)


def test_isolated_atom_gets_no_adaptive_hill(caplog):
    atoms = pt_h_slab()
    atoms.positions[-1, 2] += 20.0                   # one H far above everything
    sf = SymmetryFunctions.default(["Pt", "H"], cutoff=4.5)
    bias = GMetaDBias(sf, height=0.01, width=0.5, stride=1, species={"H": 1.0})
    with caplog.at_level("WARNING", logger="gmetad.bias"):
        assert bias.deposit(atoms) == 1                 # the other H still deposits
    assert "H atom 13 has no neighbour within the cutoff" in caplog.text


def test_adaptive_metrics_equal_their_eigendecomposition():
    """S = V (max(lambda, 0) + floor) V^T and A = S^-1 from sigma^2 J J^T = V lambda V^T,
    floor = reg * lambda_max (the definition), against the batched eigvalsh and
    inversion the bias uses. A inverts a matrix of condition number up to 1/reg, so
    two inversions agree to about eps / reg of its largest entry."""
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(2)
    atoms.rattle(0.15, seed=3)
    sf = SymmetryFunctions.default(["Si"])
    bias = GMetaDBias(sf, height=0.01, width=0.7, stride=1, species={"Si": 1.0})
    desc = bias._descriptors(atoms)
    metrics, covariances = bias._metrics(desc, "Si")
    cov = 0.7**2 * desc.jacobian_products("Si")
    eigval, eigvec = np.linalg.eigh(0.5 * (cov + cov.transpose(0, 2, 1)))
    eigval = np.maximum(eigval, 0.0) + bias.regularization * eigval[:, -1:]
    s_ref = (eigvec * eigval[:, None, :]) @ eigvec.transpose(0, 2, 1)
    a_ref = (eigvec / eigval[:, None, :]) @ eigvec.transpose(0, 2, 1)
    tolerance = 10 * np.finfo(float).eps / bias.regularization
    for c in range(len(atoms)):
        assert np.array_equal(metrics[c], metrics[c].T)
        assert np.abs(covariances[c] - s_ref[c]).max() <= 1e-13 * np.abs(s_ref[c]).max()
        assert np.abs(metrics[c] - a_ref[c]).max() <= tolerance * np.abs(a_ref[c]).max()


def moment_matched(h0, mu0, a0, h1, mu1, a1):
    """Reference merge (HillSet.merge_into's definition, with numpy's LU inverses)."""
    h = h0 + h1
    mu = (h0 * mu0 + h1 * mu1) / h
    s0, s1 = np.linalg.inv(a0), np.linalg.inv(a1)
    cov = (h0 * (s0 + np.outer(mu0, mu0)) + h1 * (s1 + np.outer(mu1, mu1))) / h - np.outer(mu, mu)
    height = h0 * np.exp(-0.5 * (mu - mu0) @ a0 @ (mu - mu0)) + h1 * np.exp(-0.5 * (mu - mu1) @ a1 @ (mu - mu1))
    return mu, height, np.linalg.inv(cov)


def random_metric(rng, dim, condition):
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (q * np.geomspace(1.0, condition, dim)) @ q.T


def test_merges_equal_moment_matching_and_remember_covariances_within_a_deposition():
    """Chains of merges into one hill, inside HillSet.deposition() (each merge starts
    from the covariance the previous one formed) and outside it (each inverts the
    stored metric), against the definition with numpy's inverses: equal to eps times
    the condition number (1e3 here) of the largest entry; and the remembered
    covariances are forgotten after the block."""
    rng = np.random.default_rng(4)
    dim, condition = 8, 1e3
    start = (rng.normal(size=dim), 0.002, random_metric(rng, dim, condition))
    new = [(rng.normal(scale=0.3, size=dim), 0.001, random_metric(rng, dim, condition)) for _ in range(6)]
    mu, h, a = start[0], start[1], start[2]
    for centre, height, metric in new:
        mu, h, a = moment_matched(h, mu, a, height, centre, metric)
    tolerance = 50 * np.finfo(float).eps * condition
    for inside in (True, False):
        hills = HillSet(dim, adaptive=True, prune_tolerance=0)
        hills.add(start[0], start[1], start[2], 0)
        with hills.deposition() if inside else contextlib.nullcontext():
            for step, (centre, height, metric) in enumerate(new, 1):
                hills.merge_into(0, centre, height, metric, step, np.linalg.inv(metric))
            assert (len(hills._covariances) == 1) if inside else hills._covariances is None
        assert hills._covariances is None
        assert np.abs(hills.centres[0] - mu).max() <= 1e-15 * np.abs(mu).max()
        assert hills.heights[0] == pytest.approx(h, rel=1e-14)
        assert np.array_equal(hills.metrics[0], hills.metrics[0].T)
        assert np.abs(hills.metrics[0] - a).max() <= tolerance * np.abs(a).max()


def deposit_one_at_a_time(bias, frame):
    """The deposition rule spelled out (the code before the q table and the remembered
    covariances): per candidate, GMetaDBias._merge_target over the kernel's nearest hill
    and every hill touched so far, then the reference merge. Returns the record ids."""
    hills = bias.hills["Si"]
    desc = bias._descriptors(frame)
    (candidates,) = bias._candidates(desc)
    _, near, near_q = hills.nearest(candidates.centres)
    touched, ids = [], []
    for c, centre in enumerate(candidates.centres):
        index = bias._merge_target(hills, centre, int(near[c]), float(near_q[c]), touched)
        if index is None:
            index = hills.add(centre, bias.height, candidates.metrics[c], bias.step_count)
        else:
            merged = moment_matched(hills.heights[index], hills.centres[index], hills.metrics[index],
                                    bias.height, centre, candidates.metrics[c])
            m = merged[2]
            hills.replace(index, merged[0], merged[1], 0.5 * (m + m.T), bias.step_count)
        if index not in touched:
            touched.append(index)
        ids.append(index)
    return ids


@pytest.mark.parametrize("compression, max_hills", [(0.3, 120), (None, 100), (0.5, None)])
def test_deposition_equals_the_rule_one_candidate_at_a_time(compression, max_hills):
    """GMetaDBias.apply_candidates (q table, Cholesky inversions, covariances remembered
    within a deposition) against the rule spelled out: the same merge targets and
    additions, hills equal to round-off (metrics to eps / reg of the largest entry,
    reg = 1e-4 bounding the hills' condition number)."""
    sf = SymmetryFunctions.default(["Si"])
    atoms = bulk("Si", "diamond", 5.431, cubic=True).repeat(2)
    rng = np.random.default_rng(6)
    frames = []
    for _ in range(5):
        frame = atoms.copy()
        frame.positions += rng.normal(0.0, 0.3, frame.positions.shape)
        frames.append(frame)
    biases = [GMetaDBias(sf, height=1e-3, width=1.0, stride=20, species={"Si": 1.0},
                         compression=compression, max_hills=max_hills) for _ in range(2)]
    fast, rule = biases
    remerged = 0
    for k, frame in enumerate(frames):
        for bias in biases:
            bias.step_count = 20 * (k + 1)
        _, records = fast.apply_candidates(fast._candidates(fast._descriptors(frame)))
        ids = deposit_one_at_a_time(rule, frame)
        assert [r.id for r in records] == ids
        remerged += len(ids) - len(set(ids))
    assert remerged > 20          # hills merged into again within a deposition
    a, b = fast.hills["Si"], rule.hills["Si"]
    assert len(a) == len(b) and np.array_equal(a.steps, b.steps)
    assert np.abs(a.centres - b.centres).max() <= 1e-13 * np.abs(b.centres).max()
    assert np.abs(a.heights - b.heights).max() <= 1e-13 * np.abs(b.heights).max()
    tolerance = 10 * np.finfo(float).eps / fast.regularization
    assert np.abs(a.metrics - b.metrics).max() <= tolerance * np.abs(b.metrics).max()


def test_isotropic_merge_equals_moment_matching_of_the_variance():
    """Isotropic hills: the merged 1/sigma^2 is the inverse of the mean variance per
    dimension of the moment-matched covariance; centre and height as for adaptive hills."""
    rng = np.random.default_rng(8)
    dim = 6
    hills = HillSet(dim, adaptive=False, prune_tolerance=0)
    mu0, mu1, h0, h1, m0, m1 = rng.normal(size=dim), rng.normal(size=dim), 0.003, 0.001, 2.0, 0.5
    hills.add(mu0, h0, m0, 0)
    hills.merge_into(0, mu1, h1, m1, 1)
    mu, height, metric = moment_matched(h0, mu0, m0 * np.eye(dim), h1, mu1, m1 * np.eye(dim))
    assert np.abs(hills.centres[0] - mu).max() <= 1e-15 * np.abs(mu).max()
    assert hills.heights[0] == pytest.approx(height, rel=1e-14)
    assert hills.metrics[0] == pytest.approx(dim / np.trace(np.linalg.inv(metric)), rel=1e-14)
