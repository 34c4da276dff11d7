"""LPIPS-alex with registry AlexNet weights, and StarGAN v2's LPIPS diversity (mean over the K(K-1)/2 output pairs)."""
import itertools

import pytest
import torch
import torchvision

from evaluators.lpips import LPIPS, build_lpips, lpips_distance, lpips_diversity
from i2i.weights import REGISTRY, MissingWeightsError
from tests.test_weights import isolated_weights, unverified  # noqa: F401  (pytest fixture)


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(0)
    return torchvision.models.alexnet(weights=None).eval()


@pytest.fixture(scope="module")
def model(alexnet):
    """LPIPS with a known (seeded, not ImageNet) AlexNet trunk loaded through the registry's mapping."""
    return LPIPS(alexnet.state_dict())


def images(n: int, seed: int, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_alexnet_file_weights_drive_the_trunk(model, alexnet):
    """Each LPIPS layer is the ReLU output of torchvision AlexNet features 1, 4, 7, 9, 11 of the scaled input."""
    x = images(2, 0)
    scaled = model.model.scaling_layer(x)
    expected, h = [], scaled
    with torch.no_grad():
        for index, layer in enumerate(alexnet.features):
            h = layer(h)
            if index in (1, 4, 7, 9, 11):
                expected.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        ours = model.layer_features(x)
    assert len(ours) == 5
    for a, b in zip(ours, expected):
        assert torch.allclose(a, b, atol=1e-6)


def test_distance_equals_the_lpips_package_and_is_zero_only_for_identical_images(model):
    a, b = images(4, 1), images(4, 2)
    distance = lpips_distance(a, b, model)
    with torch.no_grad():
        reference = model.model(a, b).flatten()  # the package's own forward, same heads and trunk
    assert distance.shape == (4,)
    assert torch.allclose(distance, reference, atol=1e-6)
    assert torch.equal(lpips_distance(a, a, model), torch.zeros(4))
    assert (distance > 0).all()
    assert torch.allclose(lpips_distance(b, a, model), distance, atol=1e-6)
    slightly = (a + 0.05 * images(4, 3)).clamp(-1, 1)
    assert (lpips_distance(a, slightly, model) < distance).all()


def test_model_is_frozen_and_marked_calibrated_when_weights_are_given(model):
    assert model.calibrated
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_shape_errors_name_the_shapes(model):
    with pytest.raises(ValueError, match=r"\(2, 3, 64, 64\) and \(2, 3, 32, 32\)"):
        lpips_distance(images(2, 0), images(2, 0, size=32), model)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        lpips_distance(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32), model)
    with pytest.raises(ValueError, match=r"\(K >= 2, N, 3, H, W\).*\(1, 2, 3, 32, 32\)"):
        lpips_diversity(torch.rand(1, 2, 3, 32, 32), model)


def test_diversity_is_the_mean_over_all_45_pairs_of_10_outputs(model):
    outputs = torch.stack([images(3, seed, size=32) for seed in range(10)])  # (K=10, N=3, 3, 32, 32)
    pairs = list(itertools.combinations(range(10), 2))
    assert len(pairs) == 45
    first, second = (torch.cat([outputs[pair[side]] for pair in pairs]) for side in (0, 1))
    with torch.no_grad():  # all 45 x 3 pairs through the package's own forward in one batch
        expected = model.model(first, second).mean()
    assert lpips_diversity(outputs, model) == pytest.approx(expected.item(), rel=1e-5)
    assert lpips_diversity(outputs, model, batch_size=2) == pytest.approx(expected.item(), rel=1e-5)


def test_diversity_by_hand_with_repeated_outputs(model):
    a, b = images(2, 5, size=32), images(2, 6, size=32)
    d = lpips_distance(a, b, model).mean().item()
    # Pairs (a, a), (a, b), (a, b): two of three pairs differ by d.
    assert lpips_diversity(torch.stack([a, a, b]), model) == pytest.approx(2 * d / 3, rel=1e-5)
    assert lpips_diversity(torch.stack([a, a, a]), model) == 0.0


def test_missing_alexnet_names_file_url_and_folder(isolated_weights):  # noqa: F811
    env, _, _ = isolated_weights
    with pytest.raises(MissingWeightsError) as info:
        build_lpips()
    message = str(info.value)
    assert "alexnet-owt-7be5be79.pth" in message and REGISTRY["alexnet"].url in message and str(env) in message
    random_model = build_lpips(allow_random=True)
    assert not random_model.calibrated
    a = images(2, 0, size=32)
    assert torch.equal(lpips_distance(a, a, random_model), torch.zeros(2))


def test_build_from_the_registry_file(isolated_weights, monkeypatch, alexnet, model):  # noqa: F811
    env, _, _ = isolated_weights
    unverified(monkeypatch, "alexnet")
    env.mkdir(parents=True)
    torch.save(alexnet.state_dict(), env / REGISTRY["alexnet"].filename)  # includes the unused classifier.*
    built = build_lpips()
    assert built.calibrated
    a, b = images(2, 7, size=32), images(2, 8, size=32)
    assert torch.allclose(lpips_distance(a, b, built), lpips_distance(a, b, model), atol=1e-6)


def test_a_file_that_is_not_alexnet_is_rejected():
    with pytest.raises(ValueError, match="features.0.weight"):
        LPIPS({"conv1.weight": torch.zeros(1)})


def test_train_mode_cannot_make_the_metric_random(model):
    a, b = images(2, 9, size=32), images(2, 10, size=32)
    before = lpips_distance(a, b, model)
    model.train()
    assert not model.training and not model.model.lin0.training
    assert torch.equal(lpips_distance(a, b, model), before)
