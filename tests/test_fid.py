"""FID: the Fréchet distance against scipy/pytorch-fid, statistics files, the TF-Inception parity fixture, the
torchvision (StarGAN v2) and proxy backbones, and batched feature extraction."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy import linalg

from evaluators import fid, proxy
from evaluators.fid import FIDInceptionV3, build_backbone, extract_features, frechet_distance, statistics
from i2i.weights import REGISTRY, MissingWeightsError
from tests.fixture_weights import FIXTURES, filled, fixture
from tests.test_weights import isolated_weights, unverified  # noqa: F401  (pytest fixture)

KEYS = json.loads((FIXTURES / "fid_inception" / "keys.json").read_text())


def gain_sqrt2(state: dict) -> dict:
    """The fixture's input-sensitive weight regime: every >=2-D `*weight` times float32(sqrt 2)."""
    factor = torch.tensor(math.sqrt(2), dtype=torch.float32)
    return {k: v * factor if v.ndim >= 2 and k.endswith("weight") else v for k, v in state.items()}


def scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """Reference: the sqrtm formula, computed independently of the code under test."""
    root = linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def correlated(rng, n, d, shift=0.0):
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / math.sqrt(d) + shift


# ----------------------------------------------------------------------------------------------------------------------
# Fréchet distance


@pytest.mark.parametrize("n,d", [(300, 48), (40, 32)])
def test_frechet_distance_matches_scipy_sqrtm(n, d):
    rng = np.random.default_rng(n)
    a, b = correlated(rng, n, d), correlated(rng, n, d, shift=0.3)
    mu1, s1 = statistics(a)
    mu2, s2 = statistics(b)
    reference = scipy_frechet(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6)
    assert fid.fid_from_features(a, b) == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize("n,d", [(40, 32), (25, 64)])  # full rank, and fewer samples than dimensions
def test_matches_pytorch_fid(n, d):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(d)
    a, b = rng.standard_normal((n, d)), 1.3 * rng.standard_normal((n, d)) + 0.2
    reference = calculate_frechet_distance(*statistics(a), *statistics(b))
    assert frechet_distance(*statistics(a), *statistics(b)) == pytest.approx(reference, rel=1e-6)
    assert fid.fid_from_features(a, b) == pytest.approx(reference, rel=1e-6)


def test_low_rank_form_equals_full_form_when_samples_are_fewer_than_dimensions():
    rng = np.random.default_rng(3)
    a, b = correlated(rng, 30, 128), correlated(rng, 90, 128, shift=0.1)
    full = frechet_distance(*statistics(a), *statistics(b))
    assert fid.fid_from_features(a, b) == pytest.approx(full, rel=1e-6)
    assert fid.fid_from_features(b, a) == pytest.approx(full, rel=1e-6)


def test_zero_for_identical_sets_and_symmetric():
    rng = np.random.default_rng(1)
    a, b = correlated(rng, 200, 32), correlated(rng, 150, 32, shift=0.5)
    stats_a, stats_b = statistics(a), statistics(b)
    assert frechet_distance(*stats_a, *stats_a) == pytest.approx(0.0, abs=1e-9)
    assert fid.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(*stats_a, *stats_b) == pytest.approx(frechet_distance(*stats_b, *stats_a), rel=1e-9)
    assert frechet_distance(*stats_a, *stats_b) > 1.0


def test_equal_covariances_give_exactly_the_squared_mean_shift():
    rng = np.random.default_rng(2)
    sigma = np.cov(correlated(rng, 500, 16), rowvar=False)
    mu = rng.standard_normal(16)
    for scale in (0.0, 0.5, 1.0, 3.0):
        delta = scale * np.linspace(-1, 1, 16)
        assert frechet_distance(mu, sigma, mu + delta, sigma) == pytest.approx(delta @ delta, rel=1e-9, abs=1e-9)


def test_grows_with_the_mean_shift_of_the_features():
    rng = np.random.default_rng(4)
    base = correlated(rng, 200, 16)
    other = correlated(rng, 200, 16)
    values = [fid.fid_from_features(base, other + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[-1] > values[0] + 16 * 1.9 ** 2


def test_statistics_are_mean_and_unbiased_covariance_in_float64():
    features = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]])
    mu, sigma = statistics(features)
    assert mu.dtype == np.float64 and np.allclose(mu, [3.0, 4.0])
    assert np.allclose(sigma, [[4.0, 2.0], [2.0, 4.0]])  # sum of squared deviations / (N - 1), by hand


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"\(N >= 2, D\)"):
        statistics(np.zeros(5))
    with pytest.raises(ValueError, match=r"mean vector \(D,\), got shape \(3, 3\)"):
        frechet_distance(np.eye(3), np.eye(3), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="sigma2 has shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.nan]), np.eye(2))
    with pytest.raises(ValueError, match="differ in dimension"):
        fid.fid_from_features(np.zeros((4, 3)), np.zeros((4, 2)))


def test_statistics_files_round_trip_in_pytorch_fid_format(tmp_path):
    rng = np.random.default_rng(5)
    mu, sigma = statistics(rng.standard_normal((30, 8)))
    path = fid.save_statistics(tmp_path / "real.npz", mu, sigma, backbone="torchvision")
    with np.load(path) as data:  # what pytorch-fid reads: f["mu"], f["sigma"]
        assert np.array_equal(data["mu"], mu) and np.array_equal(data["sigma"], sigma)
    loaded_mu, loaded_sigma = fid.load_statistics(path, backbone="torchvision")
    assert np.array_equal(loaded_mu, mu) and np.array_equal(loaded_sigma, sigma)
    with pytest.raises(ValueError, match="'torchvision'.*'pytorch-fid'"):
        fid.load_statistics(path, backbone="pytorch-fid")
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(ValueError, match=r"missing \['mu', 'sigma'\]"):
        fid.load_statistics(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        fid.load_statistics(tmp_path / "nope.npz")


def test_dataset_statistics_are_cached(tmp_path):
    backbone = proxy.random_proxy(num_classes=2, image_size=16, width=4)
    images = torch.rand(12, 3, 16, 16) * 2 - 1
    cache = tmp_path / "stats.npz"
    mu, sigma = fid.dataset_statistics(backbone, images, cache_path=cache, progress=False)
    assert cache.is_file()
    # The cache answers without touching the data (an empty tensor could not be scored).
    cached_mu, cached_sigma = fid.dataset_statistics(backbone, torch.empty(0, 3, 16, 16), cache_path=cache)
    assert np.array_equal(cached_mu, mu) and np.array_equal(cached_sigma, sigma)


# ----------------------------------------------------------------------------------------------------------------------
# TF-Inception (pytorch-fid) parity


@pytest.fixture(scope="module")
def fid_inception():
    return FIDInceptionV3().eval()


def test_parameter_names_are_the_official_file_names(fid_inception):
    assert [(k, list(v.shape)) for k, v in fid_inception.state_dict().items()] == list(KEYS.items())


@pytest.mark.parametrize("regime", ["plain", "gain"])
def test_parity_with_pytorch_fid_fixture(fid_inception, regime):
    manifest, io = fixture("fid_inception")
    state = filled(KEYS) if regime == "plain" else gain_sqrt2(filled(KEYS))
    fid_inception.load_official_state_dict(state)
    suffix = "" if regime == "plain" else "_gain"
    with torch.no_grad():
        for input_name, output_name in (("x", "features"), ("x299", "features_x299")):  # x is 128 px: the resize runs
            ours = fid_inception(torch.from_numpy(io[input_name]))
            expected = torch.from_numpy(io[output_name + suffix]).flatten(1)
            assert (ours - expected).abs().max().item() <= manifest["atol"], output_name + suffix


def test_official_file_without_num_batches_tracked_loads(fid_inception):
    state = {k: v for k, v in filled(KEYS).items() if not k.endswith("num_batches_tracked")}
    fid_inception.load_official_state_dict(state)
    with pytest.raises(RuntimeError, match="Conv2d_1a_3x3.conv.weight"):
        fid_inception.load_official_state_dict({k: v for k, v in state.items() if k != "Conv2d_1a_3x3.conv.weight"})


def test_fid_inception_rejects_non_image_input(fid_inception):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(2, 1, 32, 32\)"):
        fid_inception(torch.rand(2, 1, 32, 32))


def test_pytorch_fid_backbone_from_a_weight_file(isolated_weights, monkeypatch, tmp_path):  # noqa: F811
    manifest, io = fixture("fid_inception")
    unverified(monkeypatch, "fid_inception")
    path = tmp_path / REGISTRY["fid_inception"].filename
    torch.save({k: v for k, v in gain_sqrt2(filled(KEYS)).items() if not k.endswith("num_batches_tracked")}, path)
    backbone = build_backbone("pytorch-fid", weights_path=path)
    assert backbone.name == "pytorch-fid" and backbone.calibrated and backbone.dim == 2048
    images = torch.from_numpy(io["x"]) * 2 - 1  # backbones take [-1, 1]
    features = extract_features(backbone, images, batch_size=1, progress=False)
    expected = torch.from_numpy(io["features_gain"]).flatten(1)
    assert (features - expected).abs().max().item() <= manifest["atol"]


@pytest.mark.slow
def test_end_to_end_fid_equals_pytorch_fid(monkeypatch):
    """20 + 20 images at 64 px through pytorch-fid's own InceptionV3 and ours, with the same deterministic weights."""
    import pytorch_fid.inception
    from pytorch_fid.fid_score import calculate_frechet_distance

    manifest, _ = fixture("fid_inception")
    state = gain_sqrt2(filled(KEYS))
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", lambda *args, **kwargs: state)
    theirs = pytorch_fid.inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    ours = fid.PytorchFIDBackbone(FIDInceptionV3(), calibrated=False)
    ours.net.load_official_state_dict(state)
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(20, 3, 64, 64, generator=generator)
    fake = (real + 0.3 * torch.rand(20, 3, 64, 64, generator=generator)).clamp(0, 1)
    with torch.no_grad():
        theirs_features = [theirs(x)[0].flatten(1).double().numpy() for x in (real, fake)]
    ours_features = [extract_features(ours, x * 2 - 1, batch_size=10, progress=False).double().numpy()
                     for x in (real, fake)]
    for a, b in zip(ours_features, theirs_features):
        assert np.abs(a - b).max() <= manifest["atol_cross_implementation"]
    reference = calculate_frechet_distance(*statistics(theirs_features[0]), *statistics(theirs_features[1]))
    assert fid.fid_from_features(*ours_features) == pytest.approx(reference, rel=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# torchvision (StarGAN v2 protocol) backbone


def test_missing_weights_raise_unless_random_is_allowed(isolated_weights):  # noqa: F811
    for name, entry in (("torchvision", "inception_v3_torchvision"), ("pytorch-fid", "fid_inception")):
        with pytest.raises(MissingWeightsError, match=REGISTRY[entry].filename):
            build_backbone(name)
    backbone = build_backbone("pytorch-fid", allow_random=True)
    assert not backbone.calibrated


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="'inception'.*torchvision"):
        build_backbone("inception")


def test_torchvision_backbone_loads_the_imagenet_file_and_follows_stargan_v2_preprocessing(
        isolated_weights, monkeypatch, tmp_path):  # noqa: F811
    unverified(monkeypatch, "inception_v3_torchvision")
    torch.manual_seed(0)
    official = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / REGISTRY["inception_v3_torchvision"].filename
    torch.save(official.state_dict(), path)  # the ImageNet file holds AuxLogits.* too
    backbone = build_backbone("torchvision", weights_path=path, image_size=48)
    assert backbone.name == "torchvision" and backbone.calibrated
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    features = backbone.features(images)

    # By hand: [-1, 1] -> [0, 1], resize to S=48, then 299 (antialiased bilinear), ImageNet mean/std, pooled trunk.
    x = (images + 1) / 2
    x = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    official.eval()
    with torch.no_grad():
        trunk = x
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
            trunk = getattr(official, name)(trunk)
    assert features.shape == (1, 2048)
    assert torch.allclose(features, trunk.flatten(1), atol=1e-5)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()  # a metric network never switches batch norm to batch statistics
    assert not backbone.training and not backbone.net.Mixed_7c.branch_pool.bn.training


# ----------------------------------------------------------------------------------------------------------------------
# Feature extraction and the proxy backbone


def test_extract_features_from_a_data_loader_equals_the_tensor_path():
    backbone = proxy.random_proxy(num_classes=3, image_size=16, width=4)
    images = torch.rand(10, 3, 20, 20) * 2 - 1
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(10, dtype=torch.long))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    from_loader = extract_features(backbone, loader, progress=False)
    from_tensor = extract_features(backbone, images, batch_size=4, progress=False)
    assert from_loader.shape == (10, backbone.dim)
    assert torch.allclose(from_loader, from_tensor, atol=1e-6)
    with pytest.raises(ValueError, match="image tensors"):
        extract_features(backbone, [{"image": images}], progress=False)
    with pytest.raises(ValueError, match="float images"):
        extract_features(backbone, torch.zeros(2, 3, 16, 16, dtype=torch.uint8), progress=False)


def two_domains(n_per_domain: int, size: int) -> tuple[torch.Tensor, list[int]]:
    """Noise images whose red (domain 0) or blue (domain 1) channel is bright: a trivially learnable split."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2 * n_per_domain, 3, size, size, generator=generator) * 1.2 - 1
    images[:n_per_domain, 0] += 0.8
    images[n_per_domain:, 2] += 0.8
    return images.clamp(-1, 1), [0] * n_per_domain + [1] * n_per_domain


def test_proxy_is_trained_cached_and_labelled(tmp_path, monkeypatch):
    images, labels = two_domains(16, 24)
    trained = proxy.train_proxy(images, labels, cache_dir=tmp_path, image_size=16, width=8, steps=15, batch_size=16,
                                lr=1e-2, progress=False)
    assert trained.name == "proxy" and not trained.calibrated and trained.trained
    assert trained.source.parent == tmp_path and trained.source.is_file()
    with torch.no_grad():
        logits = trained.net(F.interpolate(images, size=(16, 16), mode="bilinear", antialias=True))
    assert (logits.argmax(1) == torch.tensor(labels)).float().mean() >= 0.9

    def no_training(*args, **kwargs):
        raise AssertionError("the cached proxy must be reused")

    monkeypatch.setattr(proxy, "_train", no_training)
    cached = proxy.train_proxy(images, labels, cache_dir=tmp_path, image_size=16, width=8, steps=15, batch_size=16,
                               lr=1e-2)
    assert torch.equal(cached.features(images), trained.features(images))
    loaded = build_backbone("proxy", weights_path=trained.source)
    assert loaded.name == "proxy" and not loaded.calibrated
    # Features separate the domains: across-domain FID exceeds within-domain FID.
    features = extract_features(loaded, images, progress=False).double().numpy()
    within = fid.fid_from_features(features[:8], features[8:16])
    across = fid.fid_from_features(features[:8], features[16:24])
    assert across > within


def test_random_proxy_is_only_labelled_uncalibrated():
    backbone = build_backbone("proxy", allow_random=True)
    assert backbone.name == "proxy-random" and not backbone.calibrated and not backbone.trained
    with pytest.raises(ValueError, match="train_proxy"):
        build_backbone("proxy")


def test_proxy_reads_image_files_and_names_bad_ones(tmp_path):
    from PIL import Image

    paths = []
    for index, color in enumerate([(220, 20, 20)] * 3 + [(20, 20, 220)] * 3):
        path = tmp_path / f"img{index}.png"
        Image.new("RGB", (20, 20), color).save(path)
        paths.append(path)
    labels = [0, 0, 0, 1, 1, 1]
    trained = proxy.train_proxy(paths, labels, cache_dir=tmp_path / "cache", image_size=16, width=4, steps=5,
                                batch_size=4, progress=False)
    assert trained.source.is_file()
    assert proxy.dataset_key(paths, labels) == proxy.dataset_key(paths[::-1], labels[::-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        proxy.train_proxy(paths + [tmp_path / "broken.png"], labels + [1], cache_dir=tmp_path / "cache",
                          image_size=16, width=4, steps=5, progress=False)
    with pytest.raises(ValueError, match="7 training images but 6 labels"):
        proxy.train_proxy(paths + [paths[0]], labels, cache_dir=tmp_path / "cache", progress=False)


def test_backbone_dataclass_config_is_part_of_the_cache_key(tmp_path):
    images, labels = two_domains(4, 16)
    a = proxy.train_proxy(images, labels, cache_dir=tmp_path, image_size=16, width=4, steps=2, progress=False)
    b = proxy.train_proxy(images, labels, cache_dir=tmp_path, image_size=16, width=4, steps=3, progress=False)
    assert a.source != b.source
    assert dataclasses.asdict(b.config)["steps"] == 3
