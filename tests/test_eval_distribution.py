"""FD / KID / PRDC against closed forms and brute-force definitions (`reference/evaluation.md` §3, §4, §8.3)."""

import numpy as np
import pytest

from microt2i.eval import distribution
from microt2i.eval.distribution import GaussianStats, frechet_distance, kid, knn_radii, prdc


def test_fd_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    got = frechet_distance(GaussianStats(mu1, np.diag(v1), 10), GaussianStats(mu2, np.diag(v2), 10))
    assert got == pytest.approx(expected, rel=1e-10)
    # and from samples: the estimate converges to the same number
    a = mu1 + np.sqrt(v1) * rng.normal(size=(40_000, 6))
    b = mu2 + np.sqrt(v2) * rng.normal(size=(40_000, 6))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_fd_of_a_set_with_itself_is_zero_even_when_the_covariance_is_singular():
    x = np.random.default_rng(1).normal(size=(50, 200))  # N < D: rank-deficient covariance
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x, x + 1.0) == pytest.approx(200.0, abs=1e-4)  # only the means differ


def test_fd_small_n_shortcut_equals_the_full_computation():
    rng = np.random.default_rng(8)
    real = rng.normal(size=(400, 60)) @ rng.normal(size=(60, 60))
    fake = rng.normal(size=(25, 60)) @ rng.normal(size=(60, 60)) + 0.3  # N ≤ D: the n × n route
    full = frechet_distance(GaussianStats.of(real), GaussianStats.of(fake))  # both as statistics: d × d route
    assert frechet_distance(real, fake) == pytest.approx(full, rel=1e-6)
    assert frechet_distance(fake, real) == pytest.approx(full, rel=1e-6)
    assert frechet_distance(GaussianStats.of(real), fake) == pytest.approx(full, rel=1e-6)


def test_fd_with_full_covariances_matches_scipy_sqrtm():
    from scipy import linalg

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)), rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)


def _mmd2_unbiased(x, y):
    d = x.shape[1]
    k = lambda p, q: (p @ q / d + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_cubic_kernel_mmd():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 3)), rng.normal(0.5, 1, size=(12, 3))
    # one subset of all samples: the permutation does not change the estimate
    out = kid(x, y, subsets=1, subset_size=12)
    assert out["kid"] == pytest.approx(_mmd2_unbiased(x, y), rel=1e-10)
    assert out["subset_size"] == 12 and out["n_real"] == out["n_fake"] == 12


def test_kid_is_about_zero_for_equal_distributions_and_positive_for_different_ones():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same = kid(a, b, subsets=20, subset_size=500)
    shifted = kid(a, b + 0.5, subsets=20, subset_size=500)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert shifted["kid"] > 10 * max(abs(same["kid"]), same["kid_std"])
    assert kid(a, b, subsets=5, seed=1)["kid"] == kid(a, b, subsets=5, seed=1)["kid"]  # fixed-seed subsets


def _prdc_brute(real, fake, k):
    d = lambda p, q: np.linalg.norm(p[:, None] - q[None], axis=-1)  # noqa: E731
    rr = np.sort(d(real, real), 1)[:, k]
    rf = np.sort(d(fake, fake), 1)[:, k]
    dxy = d(real, fake)
    return {"precision": (dxy < rr[:, None]).any(0).mean(), "recall": (dxy < rf[None]).any(1).mean(),
            "density": (dxy < rr[:, None]).sum(0).mean() / k, "coverage": (dxy.min(1) < rr).mean()}


def test_prdc_matches_the_definition_and_chunking_changes_nothing(monkeypatch):
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(300, 4)), rng.normal(0.3, 1.2, size=(250, 4))
    whole = prdc(real, fake, k=5, splits=1)
    for key, value in _prdc_brute(real, fake, 5).items():
        assert whole[key] == pytest.approx(value, abs=1e-12), key
    monkeypatch.setattr(distribution, "_CHUNK_ELEMENTS", 1000)  # blocks of 3-4 rows
    chunked = prdc(real, fake, k=5, splits=1)
    assert chunked == whole
    assert whole["n_real"] == 300 and whole["n_fake"] == 250 and whole["k"] == 5


def test_prdc_on_identical_sets_and_identical_distributions():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(500, 3))
    same_set = prdc(x, x, k=5, splits=1)
    assert same_set["precision"] == same_set["recall"] == same_set["coverage"] == 1.0
    assert same_set["density"] == pytest.approx(1.0, abs=0.02)  # self + the k−1 strictly closer neighbours
    # independent samples: E[density] = 1 and E[coverage] = 1 − Π_{i≤k} (N−i)/(N+M−i) → 1 − 2^−k
    k, n = 5, 4000
    real, fake = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    out = prdc(real, fake, k=k, splits=1)
    expected_coverage = 1 - np.prod([(n - i) / (2 * n - i) for i in range(1, k + 1)])
    assert expected_coverage == pytest.approx(1 - 2.0**-k, abs=1e-3)
    assert out["density"] == pytest.approx(1.0, abs=0.05)
    assert out["coverage"] == pytest.approx(expected_coverage, abs=0.015)


def test_prdc_separates_disjoint_sets_and_supports_splits():
    rng = np.random.default_rng(7)
    real, far = rng.normal(size=(200, 3)), rng.normal(size=(200, 3)) + 100
    out = prdc(real, far, k=3, splits=1)
    assert out["precision"] == out["recall"] == out["density"] == out["coverage"] == 0.0
    split = prdc(real, real[::-1].copy())  # the authors' defaults: k = 3 over 5 splits
    assert split["k"] == 3 and split["splits"] == 5 and split["n_real"] == 200
    manual = [prdc(real[i * 40:(i + 1) * 40], real[::-1][i * 40:(i + 1) * 40], k=3, splits=1) for i in range(5)]
    assert split["density"] == pytest.approx(np.mean([m["density"] for m in manual]))


def test_knn_radii_excludes_the_point_itself():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]


@pytest.mark.parametrize("call, message", [
    (lambda: frechet_distance(np.ones(5), np.ones((5, 2))), "2-D array"),
    (lambda: frechet_distance(np.ones((5, 2)), np.ones((5, 3))), "dimension 2 but fake features 3"),
    (lambda: kid(np.full((4, 2), np.nan), np.ones((4, 2))), "NaN"),
    (lambda: prdc(np.ones((1, 2)), np.ones((4, 2))), "at least 2"),
    (lambda: prdc(np.random.rand(4, 2), np.random.rand(4, 2), k=5), "more than k samples"),
])
def test_bad_input_is_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
