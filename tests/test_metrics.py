"""engine.metrics against independent computations: closed-form Fréchet distances,
torchmetrics' FID, brute-force / hand-counted precision and recall, the published
layout of the FID Inception-v3, and the ADM .npz formats."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from engine.metrics import (AdmFormatError, FIDInceptionV3, InceptionV3Features, InceptionWeightsError,
                            JudgeFeatures, class_accuracy, extract_features, frechet_distance,
                            frechet_distance_from_stats, gaussian_stats, iter_float_batches, knn_radii,
                            load_reference_batch, load_samples, precision_recall, precision_recall_with_baseline,
                            real_baseline, save_samples, split_halves, to_float_images, to_uint8_images)
from engine.metrics.inception import WEIGHTS_ENV, _tf_avg_pool
from engine.nets.plain import JudgeNet


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


# =========================================================================== Fréchet distance
def test_frechet_of_a_set_with_itself_is_zero():
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x.numpy(), x) == pytest.approx(0.0, abs=1e-9)


def test_gaussian_stats_match_numpy():
    x = np.random.default_rng(1).standard_normal((50, 6))
    mu, sigma = gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))
    assert mu.dtype == sigma.dtype == np.float64


def test_closed_form_for_diagonal_and_commuting_covariances():
    rng = np.random.default_rng(2)
    dim = 12
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance_from_stats(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)
    # a common rotation leaves the distance unchanged (the covariances still commute)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    rotated = frechet_distance_from_stats(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)


def test_closed_form_in_one_dimension_and_symmetry():
    # N(0, 4) vs N(3, 1): 9 + 4 + 1 - 2 * 2 = 10
    assert frechet_distance_from_stats([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(10.0)
    rng = np.random.default_rng(3)
    mu1, mu2, s1, s2 = rng.standard_normal(8), rng.standard_normal(8), _random_spd(rng, 8), _random_spd(rng, 8)
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance_from_stats(mu2, s2, mu1, s1), rel=1e-10)


def test_shift_adds_squared_norm_of_the_shift():
    x = torch.randn(300, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.randn(300, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 1.5
    v = torch.linspace(-1, 1, 10, dtype=torch.float64)
    base = frechet_distance(x, y)
    assert frechet_distance(x + v, y + v) == pytest.approx(base, rel=1e-9)
    # moving one set by v moves its mean only: ||mu_x + v - mu_y||^2 = ||mu_x - mu_y||^2 + 2 (mu_x - mu_y).v + ||v||^2
    gap = x.mean(0) - y.mean(0)
    assert frechet_distance(x + v, y) == pytest.approx(base + 2 * float(gap @ v) + float(v @ v), rel=1e-9)


def test_agrees_with_torchmetrics_compute_fid():
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(6)
    a = rng.standard_normal((200, 24)) @ rng.standard_normal((24, 24))
    b = rng.standard_normal((150, 24)) @ rng.standard_normal((24, 24)) + 0.5
    (mu1, s1), (mu2, s2) = gaussian_stats(a), gaussian_stats(b)
    reference = float(_compute_fid(*(torch.from_numpy(t) for t in (mu1, s1, mu2, s2))))
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-8)


def test_agrees_with_torchmetrics_fid_metric_with_custom_feature_module():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 16

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    gen = torch.Generator().manual_seed(7)
    real = torch.randn(256, 16, generator=gen, dtype=torch.float64)
    fake = torch.randn(192, 16, generator=gen, dtype=torch.float64) * 0.8 + 0.3
    metric = FrechetInceptionDistance(feature=Identity())
    metric.update(real[:100], real=True)
    metric.update(real[100:], real=True)
    metric.update(fake, real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(metric.compute()), rel=1e-7)


def test_rank_deficient_covariances_stay_finite_and_match_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((12, 40)), rng.standard_normal((15, 40)) + 0.2  # N < D: singular covariances
    got = frechet_distance(a, b)
    (mu1, s1), (mu2, s2) = gaussian_stats(a), gaussian_stats(b)
    reference = float(_compute_fid(*(torch.from_numpy(t) for t in (mu1, s1, mu2, s2))))
    assert np.isfinite(got) and got >= 0
    assert got == pytest.approx(reference, rel=1e-6)


def test_frechet_errors_are_clear():
    with pytest.raises(ValueError, match="different dimensions|feature spaces differ"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        gaussian_stats(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance_from_stats(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))


# =========================================================================== precision / recall
def _brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Independent O(N^2) reference: full distance matrices, sort, inclusive balls."""
    def radii(x: np.ndarray) -> np.ndarray:
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        return np.sort(d, axis=1)[:, k - 1]

    d = np.sqrt(((real[:, None, :] - fake[None, :, :]) ** 2).sum(-1))
    precision = (d <= radii(real)[:, None]).any(axis=0).mean()
    recall = (d <= radii(fake)[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def _col(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)[:, None]


def test_identical_sets_have_precision_and_recall_one():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(10))
    result = precision_recall(x, x.clone())
    assert result["precision"] == 1.0 and result["recall"] == 1.0
    assert result["k"] == 3 and result["num_real"] == result["num_fake"] == 200


def test_far_apart_clusters_have_precision_and_recall_zero():
    gen = torch.Generator().manual_seed(11)
    real = torch.randn(100, 4, generator=gen)
    fake = torch.randn(80, 4, generator=gen) + 100.0
    result = precision_recall(real, fake)
    assert result["precision"] == 0.0 and result["recall"] == 0.0


def test_hand_counted_one_dimensional_example_k3():
    # real {0,1,2,3,4}: 3rd-neighbour radii 3,2,2,2,3 -> balls [-3,3] [-1,3] [0,4] [1,5] [1,7]
    # fake -3 (on the edge of [-3,3]), 6 (inside [1,7]), 7 (on the edge of [1,7]), 8, 20 (outside)
    #   -> precision 3/5 (an exclusive comparison would give 1/5)
    # fake radii 11,9,10,11,14: the ball [-3,17] around 7 alone covers every real point -> recall 1
    real, fake = _col([0, 1, 2, 3, 4]), _col([-3, 6, 7, 8, 20])
    np.testing.assert_array_equal(knn_radii(real, k=3, dtype=torch.float64).numpy(), [3, 2, 2, 2, 3])
    result = precision_recall(real, fake, k=3, dtype=torch.float64)
    assert result["precision"] == pytest.approx(0.6) and result["recall"] == pytest.approx(1.0)
    swapped = precision_recall(fake, real, k=3, dtype=torch.float64)
    assert swapped["precision"] == pytest.approx(1.0) and swapped["recall"] == pytest.approx(0.6)


def test_hand_counted_one_dimensional_example_k1():
    # fake {0, 0.5, 3, 3.25}, nearest-neighbour radii 0.5, 0.5, 0.25, 0.25
    #   -> balls [-0.5,0.5] [0,1] [2.75,3.25] [3,3.5]; real 0 in, 1 on an edge, 2 out, 3 in, 4 out: recall 3/5
    # real {0..4} radii all 1 -> balls cover [-1, 5], every fake point: precision 1
    result = precision_recall(_col([0, 1, 2, 3, 4]), _col([0, 0.5, 3, 3.25]), k=1, dtype=torch.float64)
    assert result["precision"] == pytest.approx(1.0) and result["recall"] == pytest.approx(0.6)


def test_radii_exclude_self_but_count_duplicates():
    radii = knn_radii(_col([0, 0, 0, 0, 5]), k=3, dtype=torch.float64)
    np.testing.assert_array_equal(radii.numpy(), [0, 0, 0, 0, 5])


@pytest.mark.parametrize("batch_size", [2, 7, 64])
def test_batched_equals_unbatched_and_brute_force(batch_size):
    gen = torch.Generator().manual_seed(12)
    real = torch.randn(90, 5, generator=gen, dtype=torch.float64)
    fake = torch.randn(70, 5, generator=gen, dtype=torch.float64) * 1.3 + 0.4
    whole = precision_recall(real, fake, batch_size=100_000, dtype=torch.float64)
    chunked = precision_recall(real, fake, batch_size=batch_size, dtype=torch.float64)
    assert (chunked["precision"], chunked["recall"]) == (whole["precision"], whole["recall"])
    assert (whole["precision"], whole["recall"]) == pytest.approx(_brute_force_pr(real.numpy(), fake.numpy(), 3))
    torch.testing.assert_close(knn_radii(real, batch_size=batch_size, dtype=torch.float64),
                               knn_radii(real, batch_size=100_000, dtype=torch.float64))


def test_float32_and_precomputed_real_radii():
    gen = torch.Generator().manual_seed(13)
    real, fake = torch.randn(120, 6, generator=gen), torch.randn(90, 6, generator=gen) + 0.3
    reference = _brute_force_pr(real.double().numpy(), fake.double().numpy(), 3)
    assert (precision_recall(real, fake)["precision"], precision_recall(real, fake)["recall"]) == \
        pytest.approx(reference)
    radii = knn_radii(real, k=3)
    reused = precision_recall(real, fake, real_radii=radii)
    assert (reused["precision"], reused["recall"]) == pytest.approx(reference)
    with pytest.raises(ValueError, match="real_radii"):
        precision_recall(real, fake, real_radii=radii[:10])


def test_real_baseline_is_deterministic_and_below_one():
    real = torch.randn(400, 4, generator=torch.Generator().manual_seed(14))
    first, second = split_halves(400)
    assert len(set(first.tolist()) & set(second.tolist())) == 0 and len(first) == len(second) == 200
    base = real_baseline(real)
    assert base == real_baseline(real)
    assert 0.3 < base["precision"] < 1.0 and 0.3 < base["recall"] < 1.0 and base["num_real"] == 200
    expected = precision_recall(real[first], real[second])
    assert (base["precision"], base["recall"]) == (expected["precision"], expected["recall"])
    both = precision_recall_with_baseline(real, real[:100] + 0.1)
    assert both["baseline_precision"] == base["precision"] and both["baseline_recall"] == base["recall"]
    assert {"precision", "recall", "k", "num_real", "num_fake", "baseline_num"} <= set(both)


def test_precision_recall_errors_are_clear():
    with pytest.raises(ValueError, match="at least 4 points"):
        knn_radii(torch.zeros(3, 2), k=3)
    with pytest.raises(ValueError, match="different dimensions"):
        precision_recall(torch.zeros(10, 2), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="dtype"):
        precision_recall(torch.zeros(10, 2), torch.zeros(10, 2), dtype=torch.float16)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        precision_recall(torch.zeros(10), torch.zeros(10, 2))


# =========================================================================== Inception-v3
# Published layout (torchvision Inception3 naming, pytorch-fid FID variant): a stem of five
# BasicConv2d, then Mixed blocks of these types and branches; no aux head; fc has 1008 classes.
_BRANCHES = {
    "A": ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
          "branch_pool"],
    "B": ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
    "C": ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
          "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"],
    "D": ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"],
    "E": ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"],
}
_BLOCKS = {"Mixed_5b": "A", "Mixed_5c": "A", "Mixed_5d": "A", "Mixed_6a": "B", "Mixed_6b": "C", "Mixed_6c": "C",
           "Mixed_6d": "C", "Mixed_6e": "C", "Mixed_7a": "D", "Mixed_7b": "E", "Mixed_7c": "E"}
_STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
_EXPECTED_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_2b_3x3.bn.running_var": (64,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5c.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5d.branch_pool.conv.weight": (64, 288, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6c.branch7x7dbl_2.conv.weight": (160, 160, 7, 1),
    "Mixed_6e.branch7x7_3.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.bias": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def _expected_inception_keys() -> set[str]:
    convs = list(_STEM) + [f"{block}.{branch}" for block, kind in _BLOCKS.items() for branch in _BRANCHES[kind]]
    suffixes = ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    return {f"{conv}.{suffix}" for conv in convs for suffix in suffixes} | {"fc.weight", "fc.bias"}


@pytest.fixture(scope="module")
def inception() -> FIDInceptionV3:
    torch.manual_seed(20)
    return FIDInceptionV3().eval()


@pytest.fixture(scope="module")
def inception_file(inception, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(inception.state_dict(), path)
    return path


def test_inception_state_dict_has_the_published_layout(inception):
    state = inception.state_dict()
    assert set(state) == _expected_inception_keys()
    assert len(state) == 472
    for key, shape in _EXPECTED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    # 23,834,568 weights of torchvision's Inception3 without the aux head, + 8 more classes (8 * 2049)
    assert sum(p.numel() for p in inception.parameters()) == 23_850_960


def test_inception_forward_shapes_and_preprocessing(inception):
    extractor = InceptionV3Features(model=inception, batch_size=2)
    assert extractor.name == "inception-v3-fid" and extractor.dim == 2048
    seen: dict[str, tuple] = {}

    def recorder(name: str):
        def hook(_module, _inputs, output) -> None:
            seen.setdefault(name, tuple(output.shape))
        return hook

    hooks = [getattr(inception, name).register_forward_hook(recorder(name))
             for name in ("Mixed_5d", "Mixed_6e", "Mixed_7c")]
    try:
        grey = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(21)) * 2 - 1
        features = extractor(grey)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"Mixed_5d": (2, 288, 35, 35), "Mixed_6e": (2, 768, 17, 17), "Mixed_7c": (2, 2048, 8, 8)}
    assert features.shape == (3, 2048) and features.dtype == torch.float32
    torch.testing.assert_close(extractor(grey[:1].repeat(1, 3, 1, 1)), features[:1])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        extractor(torch.zeros(1, 2, 8, 8))
    with pytest.raises(TypeError, match="float"):
        extractor(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        extractor(torch.full((1, 3, 8, 8), 200.0))


def test_tensorflow_style_pools():
    ones = torch.ones(1, 2, 5, 5)
    torch.testing.assert_close(_tf_avg_pool(ones), ones)  # padding never counted

    with torch.device("meta"):
        net = FIDInceptionV3()
    assert (net.Mixed_7b.pool, net.Mixed_7c.pool) == ("avg", "max")


def test_inception_weights_round_trip(inception, inception_file, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(22)) * 2 - 1
    expected = InceptionV3Features(model=inception)(x)
    loaded = InceptionV3Features(inception_file, verify_hash=False)
    for key, value in inception.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    # through the environment variable; the random file is not the published one: a warning says so
    monkeypatch.setenv(WEIGHTS_ENV, str(inception_file))
    with pytest.warns(UserWarning, match="SHA-256"):
        InceptionV3Features()


def test_inception_file_with_bn_counters_loads(inception, tmp_path):
    state = dict(inception.state_dict())
    state.update({k.replace("running_var", "num_batches_tracked"): torch.tensor(0)
                  for k in list(state) if k.endswith("running_var")})
    path = tmp_path / "with_counters.pth"
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InceptionV3Features(path, verify_hash=False)


def test_missing_inception_weights_say_which_file_is_needed(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    for given in (None, tmp_path / "nope.pth"):
        with pytest.raises(InceptionWeightsError) as info:
            InceptionV3Features(given)
        message = str(info.value)
        for needed in ("pt_inception-2015-12-05-6726825d.pth", "github.com/mseitzer/pytorch-fid/releases",
                       "--inception-weights", "RCG_INCEPTION_WEIGHTS"):
            assert needed in message
    assert "nope.pth does not exist" in message


def test_wrong_inception_file_names_the_problem(tmp_path):
    path = tmp_path / "torchvision_like.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048), "AuxLogits.fc.bias": torch.zeros(1000)}, path)
    with pytest.raises(InceptionWeightsError) as info:
        InceptionV3Features(path)
    message = str(info.value)
    assert "missing keys" in message and "unexpected keys: AuxLogits.fc.bias" in message
    assert "fc.weight (1000, 2048) (expected (1008, 2048))" in message and "torchvision" in message
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InceptionWeightsError, match="cannot read"):
        InceptionV3Features(junk)


# =========================================================================== judge
@pytest.fixture(scope="module")
def judge() -> JudgeNet:
    torch.manual_seed(30)
    return JudgeNet(in_channels=1, num_classes=10, width=8)


def test_judge_features_are_the_penultimate_vector(judge):
    images = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(31)) * 2 - 1
    judge.train()
    extractor = JudgeFeatures(judge, batch_size=3)
    assert extractor.name == "judge" and extractor.dim == 32
    features = extractor(images)
    assert judge.training  # the caller's mode is restored
    with torch.no_grad():
        torch.testing.assert_close(features, judge.features(images))
    torch.testing.assert_close(extract_features(extractor, images.split(4)), features)
    with pytest.raises(ValueError, match="1-channel"):
        extractor(torch.zeros(2, 3, 28, 28))


class _SignJudge(torch.nn.Module):
    """Predicts class 1 when the top-left pixel is positive, else class 0."""

    in_channels = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positive = (x[:, 0, 0, 0] > 0).float()
        return torch.stack([1 - positive, positive], dim=1)


def test_class_accuracy_counts_matches():
    images = torch.zeros(4, 1, 4, 4)
    images[[1, 3], 0, 0, 0] = 1.0  # predicted classes 0, 1, 0, 1
    assert class_accuracy(_SignJudge(), images, [0, 1, 1, 1], batch_size=3) == pytest.approx(0.75)
    assert class_accuracy(_SignJudge(), images, np.array([1, 0, 1, 0])) == 0.0
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        class_accuracy(_SignJudge(), images, [0, 1, 1])
    with pytest.raises(TypeError, match="integers"):
        class_accuracy(_SignJudge(), images, torch.zeros(4))


def test_class_accuracy_of_a_judge_net(judge):
    images = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(32)) * 2 - 1
    labels = torch.arange(12) % 10
    with torch.no_grad():
        judge.eval()
        expected = float((judge(images).argmax(1) == labels).double().mean())
    assert class_accuracy(judge, images, labels, batch_size=5) == pytest.approx(expected)


# =========================================================================== ADM formats
def _uint8_images(n: int = 5, h: int = 4, w: int = 6, c: int = 3) -> np.ndarray:
    return np.random.default_rng(40).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def test_sample_npz_round_trip_and_conversion(tmp_path):
    images, labels = _uint8_images(), np.array([3, 1, 4, 1, 5])
    path = save_samples(tmp_path / "samples.npz", images, labels)
    with np.load(path) as raw:
        assert sorted(raw.files) == ["arr_0", "arr_1"]
    batch = load_samples(path)
    np.testing.assert_array_equal(batch.images, images)
    np.testing.assert_array_equal(batch.labels, labels)
    assert len(batch) == 5 and batch.labels.dtype == np.int64
    floats = batch.float_images()
    assert floats.shape == (5, 3, 4, 6) and floats.dtype == torch.float32
    assert float(floats[2, 1, 3, 5]) == pytest.approx(images[2, 3, 5, 1] / 127.5 - 1)
    torch.testing.assert_close(torch.cat(list(batch.batches(2))), floats)
    np.testing.assert_array_equal(to_uint8_images(floats), images)  # exact for uint8 inputs
    assert load_samples(save_samples(tmp_path / "nolabels.npz", images)).labels is None


def test_float_to_uint8_rounds_and_clamps():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).reshape(1, 1, 1, 6)
    np.testing.assert_array_equal(to_uint8_images(x).reshape(-1), [0, 0, 128, 255, 255, 255])
    from engine.data import to_uint8  # the project's one conversion

    y = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(43)) * 2 - 1
    np.testing.assert_array_equal(to_uint8_images(y), to_uint8(y).permute(0, 2, 3, 1).numpy())
    extremes = to_float_images(np.array([0, 255], dtype=np.uint8).reshape(1, 1, 2, 1))
    assert extremes.flatten().tolist() == [-1.0, 1.0]


def test_sample_npz_errors(tmp_path):
    def write(name: str, **arrays) -> str:
        path = tmp_path / name
        np.savez(path, **arrays)
        return str(path)

    with pytest.raises(AdmFormatError, match="no arr_0.*keys: \\['images'\\]"):
        load_samples(write("a.npz", images=_uint8_images()))
    with pytest.raises(AdmFormatError, match="uint8.*float32"):
        load_samples(write("b.npz", arr_0=_uint8_images().astype(np.float32)))
    with pytest.raises(AdmFormatError, match="channels-first"):
        load_samples(write("c.npz", arr_0=_uint8_images().transpose(0, 3, 1, 2).copy()))
    with pytest.raises(AdmFormatError, match=r"arr\[\.\.\., None\]"):
        load_samples(write("d.npz", arr_0=_uint8_images()[..., 0]))
    with pytest.raises(AdmFormatError, match=r"shape \(5,\)"):
        load_samples(write("e.npz", arr_0=_uint8_images(), arr_1=np.arange(4)))
    with pytest.raises(AdmFormatError, match="integers"):
        load_samples(write("f.npz", arr_0=_uint8_images(), arr_1=np.zeros(5)))
    with pytest.raises(AdmFormatError, match="does not exist"):
        load_samples(tmp_path / "missing.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(AdmFormatError, match="cannot read"):
        load_samples(tmp_path / "broken.npz")
    np.savez(tmp_path / "objects.npz", arr_0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(AdmFormatError, match="object arrays are refused"):
        load_samples(tmp_path / "objects.npz")


def test_reference_batches_with_images_stats_or_both(tmp_path):
    rng = np.random.default_rng(41)
    mu, sigma = rng.standard_normal(8).astype(np.float32), _random_spd(rng, 8)
    images = _uint8_images()
    np.savez(tmp_path / "both.npz", arr_0=images, mu=mu, sigma=sigma, mu_s=mu[:4], sigma_s=sigma[:4, :4])
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    np.savez(tmp_path / "images.npz", arr_0=images)

    both = load_reference_batch(tmp_path / "both.npz")
    assert both.has_images and both.has_stats and both.mu.dtype == np.float64
    np.testing.assert_array_equal(both.mu_s, mu[:4])
    stats_only = load_reference_batch(tmp_path / "stats.npz")
    assert not stats_only.has_images and stats_only.mu_s is None
    np.testing.assert_allclose(stats_only.stats()[1], sigma)
    images_only = load_reference_batch(tmp_path / "images.npz")
    np.testing.assert_array_equal(images_only.images, images)
    with pytest.raises(AdmFormatError, match="no precomputed mu"):
        images_only.stats()
    torch.testing.assert_close(torch.cat(list(iter_float_batches(images_only.images, 2))), to_float_images(images))


def test_reference_batch_errors(tmp_path):
    np.savez(tmp_path / "empty.npz", other=np.zeros(3))
    with pytest.raises(AdmFormatError, match="neither arr_0"):
        load_reference_batch(tmp_path / "empty.npz")
    np.savez(tmp_path / "half.npz", mu=np.zeros(3))
    with pytest.raises(AdmFormatError, match="has mu but no sigma"):
        load_reference_batch(tmp_path / "half.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(AdmFormatError, match=r"\(D, D\)"):
        load_reference_batch(tmp_path / "shape.npz")
    np.savez(tmp_path / "ints.npz", mu=np.zeros(3, dtype=np.int64), sigma=np.eye(3, dtype=np.int64))
    with pytest.raises(AdmFormatError, match="floating point"):
        load_reference_batch(tmp_path / "ints.npz")


def test_judge_fid_and_precision_recall_from_npz_end_to_end(tmp_path, judge):
    """The path the evaluation takes: npz -> float batches -> judge features -> metrics."""
    rng = np.random.default_rng(42)
    real = rng.integers(0, 256, size=(40, 28, 28, 1), dtype=np.uint8)
    fake = np.clip(real.astype(np.int64) + rng.integers(-30, 30, size=real.shape), 0, 255).astype(np.uint8)
    save_samples(tmp_path / "real.npz", real)
    save_samples(tmp_path / "fake.npz", fake, labels=np.arange(40) % 10)
    extractor = JudgeFeatures(judge, batch_size=16)
    real_features = extract_features(extractor, iter_float_batches(load_reference_batch(tmp_path / "real.npz").images,
                                                                    16))
    fake_features = extract_features(extractor, load_samples(tmp_path / "fake.npz").batches(16))
    assert real_features.shape == fake_features.shape == (40, 32)
    assert frechet_distance(real_features, fake_features) > 0
    result = precision_recall_with_baseline(real_features, fake_features)
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
