"""KernelPLS against a fully converged sklearn PLSRegression, the Gram path it shares, its sklearn API."""
import warnings

import numpy as np
import pytest
from sklearn.cross_decomposition import PLSRegression
from threadpoolctl import threadpool_limits

from pipeline.gram import gram
from pipeline.pls import KernelPLS, center_gram, fit_predict_gram


def _planted(n, p, q, m, seed):
    """Low-rank features with an offset (like ReLU activations) and targets driven by them."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n + m, 20))
    X = latent @ rng.normal(size=(20, p)) + 0.5 * rng.normal(size=(n + m, p)) + 3.0
    Y = np.maximum(latent, 0) @ rng.normal(size=(20, q)) + rng.normal(size=(n + m, q))
    return X[:n], Y[:n], X[n:], Y[n:]


def _random(n, p, q, m, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, p)), rng.normal(size=(n, q)), rng.normal(size=(m, p)), None


def _relative(pred, ref, y_train):
    return np.abs(pred - ref).max() / np.abs(ref - y_train.mean(axis=0)).max()


def _converged_sklearn(X, Y, Xt, n_components=25):
    # one BLAS thread: sklearn's power iterations are matrix-vector products, which slow down
    # tenfold when threads contend on a busy 2-core machine
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        return PLSRegression(n_components, scale=False, max_iter=100000, tol=1e-14).fit(X, Y).predict(Xt)


@pytest.mark.parametrize("make, shape", [(_random, (120, 300, 7, 50)),
                                         (_planted, (384, 2000, 64, 128))],
                         ids=["random-small", "real-shaped"])
def test_predictions_equal_converged_sklearn(make, shape):
    X, Y, Xt, _ = make(*shape, seed=1)
    ref = _converged_sklearn(X, Y, Xt)
    for solver in ("kernel", "primal"):
        assert _relative(KernelPLS(25, solver=solver).fit(X, Y).predict(Xt), ref, Y) < 1e-5, solver
    ours = KernelPLS(25).fit_gram(X @ X.T, Y).predict_gram(Xt @ X.T)
    assert ours.shape == ref.shape
    assert _relative(ours, ref, Y) < 1e-5
    # sklearn's default tol stops early; we must be much closer to the converged answer.
    with threadpool_limits(1):
        default = PLSRegression(25, scale=False).fit(X, Y).predict(Xt)
    default_gap = _relative(default, ref, Y)
    print(f"{make.__name__}: ours vs converged {_relative(ours, ref, Y):.2e}, "
          f"default tol vs converged {default_gap:.2e}")
    assert default_gap > 10 * _relative(ours, ref, Y)


def test_gram_path_equals_feature_paths():
    X, Y, Xt, _ = _planted(200, 500, 9, 60, seed=2)
    kernel = KernelPLS(25, solver="kernel").fit(X, Y).predict(Xt)
    primal = KernelPLS(25, solver="primal").fit(X, Y).predict(Xt)
    gram = KernelPLS(25).fit_gram(X @ X.T, Y).predict_gram(Xt @ X.T)
    np.testing.assert_allclose(primal, kernel, rtol=0, atol=1e-9 * np.abs(kernel).max())
    np.testing.assert_allclose(gram, kernel, rtol=0, atol=1e-9 * np.abs(kernel).max())


def test_primal_path_when_fewer_features_than_samples_matches_sklearn():
    X, Y, Xt, _ = _planted(300, 40, 5, 30, seed=3)
    ref = _converged_sklearn(X, Y, Xt)
    assert _relative(KernelPLS(25).fit(X, Y).predict(Xt), ref, Y) < 1e-5


def test_one_dimensional_target_like_sklearn():
    X, Y, Xt, _ = _planted(100, 80, 1, 20, seed=4)
    ref = _converged_sklearn(X, Y[:, 0], Xt, n_components=10)
    ours = KernelPLS(10).fit(X, Y[:, 0]).predict(Xt)
    assert ours.shape == ref.shape == (20,)
    assert _relative(ours[:, None], ref[:, None], Y) < 1e-5


def test_centring_is_invariant_to_a_global_shift():
    X, _, Xt, _ = _planted(50, 30, 1, 10, seed=5)
    shift = np.linspace(-5, 5, 30)
    a = center_gram(X @ X.T, Xt @ X.T)
    b = center_gram((X - shift) @ (X - shift).T, (Xt - shift) @ (X - shift).T)
    np.testing.assert_allclose(a[0], b[0], atol=1e-8)
    np.testing.assert_allclose(a[1], b[1], atol=1e-8)
    mu = X.mean(axis=0)
    np.testing.assert_allclose(a[1], (Xt - mu) @ (X - mu).T, atol=1e-8)


def test_gram_from_h5py_dask_and_torch_match_full_fit(tmp_path):
    h5py = pytest.importorskip("h5py")
    import dask.array as da
    import torch

    X, Y, Xt, _ = _planted(90, 700, 6, 30, seed=6)
    full = np.vstack([X, Xt])
    train, test = np.arange(90), np.arange(90, 120)
    with h5py.File(tmp_path / "acts.h5", "w") as f:
        f.create_dataset("layer", data=full.astype(np.float32), chunks=(120, 100))
        f.create_dataset("train", data=X, chunks=(90, 100))
    with h5py.File(tmp_path / "acts.h5", "r") as f:
        K_h5 = gram(f["layer"], device="cpu", panel_bytes=120 * 4 * 256)  # several chunk-aligned panels
        stored = f["layer"][()].astype(np.float64)
        from_h5 = KernelPLS(25).fit(f["train"], Y).predict(f["layer"][90:].astype(np.float64))
    np.testing.assert_allclose(K_h5, stored @ stored.T, rtol=1e-12)
    K_dask = gram(da.from_array(full, chunks=(60, 100)), panel_bytes=120 * 8 * 300)
    K_torch = gram(torch.from_numpy(full), panel_bytes=120 * 8 * 50)
    expected = KernelPLS(25).fit(X, Y).predict(Xt)
    assert _relative(from_h5, expected, Y) < 1e-6  # the h5 copy of the test rows is float32
    for K in (K_dask, K_torch):
        np.testing.assert_allclose(K, full @ full.T, rtol=1e-12)
        pred = KernelPLS(25).fit_gram(K[np.ix_(train, train)], Y).predict_gram(K[np.ix_(test, train)])
        assert _relative(pred, expected, Y) < 1e-9
    np.testing.assert_allclose(fit_predict_gram(gram(full), np.vstack([Y, Y[:30]]), train, test),
                               expected, atol=1e-8 * np.abs(expected).max())


def test_gram_centring_and_bad_features():
    X, _, _, _ = _planted(40, 300, 1, 0, seed=9)
    mean = X.mean(axis=0)
    np.testing.assert_allclose(gram(X, center=mean, panel_bytes=40 * 8 * 7), (X - mean) @ (X - mean).T,
                               atol=1e-9)
    bad = X.copy()
    bad[3, 17] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        gram(bad)
    with pytest.raises(ValueError, match="2-d"):
        gram(X[0])


def test_kernel_pls_is_a_sklearn_estimator():
    from sklearn.base import clone
    from sklearn.metrics import r2_score

    X, Y, Xt, Yt = _planted(150, 60, 4, 40, seed=10)
    pls = KernelPLS(5, solver="kernel")
    assert pls.get_params() == {"n_components": 5, "solver": "kernel"}
    copy = clone(pls).set_params(n_components=7)
    assert copy.n_components == 7 and pls.n_components == 5
    fitted = pls.fit(X, Y)
    assert fitted is pls
    assert pls.score(Xt, Yt) == pytest.approx(r2_score(Yt, pls.predict(Xt)))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gram_on_gpu_matches_cpu_for_the_store_path(tmp_path):
    """The pipeline's one Gram path (pipeline.gram.gram, used by the store and the extraction) on CUDA."""
    import h5py

    X, Y, Xt, _ = _planted(200, 3000, 8, 50, seed=7)
    full = np.vstack([X, Xt]).astype(np.float32)
    with h5py.File(tmp_path / "acts.h5", "w") as f:
        f.create_dataset("layer", data=full, chunks=(250, 500))
    with h5py.File(tmp_path / "acts.h5", "r") as f:
        cpu = gram(f["layer"], device="cpu")
        gpu = gram(f["layer"], device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-12)
    a = KernelPLS(25).fit_gram(cpu[:200, :200], Y).predict_gram(cpu[200:, :200])
    b = KernelPLS(25).fit_gram(gpu[:200, :200], Y).predict_gram(gpu[200:, :200])
    assert _relative(b, a, Y) < 1e-9


def test_bad_inputs_raise_clear_errors():
    X, Y, _, _ = _planted(20, 10, 2, 0, seed=8)
    with pytest.raises(ValueError, match="n_components"):
        KernelPLS(25).fit(X, Y)
    Y_nan = Y.copy()
    Y_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KernelPLS(5).fit(X, Y_nan)
    with pytest.raises(ValueError, match="rows"):
        KernelPLS(5).fit(X, Y[:10])
    with pytest.raises(ValueError, match="fit_gram"):
        KernelPLS(5).predict_gram(X @ X.T)
