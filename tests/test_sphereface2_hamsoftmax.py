"""SphereFace2 and HAM-softmax against direct computations of their formulas, their margin schedule and options."""
import math

import numpy as np
import pytest
import torch

from loss.hamsoftmax import LossFunction as HAMSoftmax
from loss.hamsoftmax import poincare_distances
from loss.LossHelpers import RISE_FLOOR
from loss.sphereface2 import LossFunction as SphereFace2


def batch(classes: int = 5, dim: int = 8, size: int = 6, seed: int = 0, norm: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 1, dim, generator=generator, dtype=torch.float64) * norm
    return x, torch.randint(0, classes, (size,), generator=generator)


def sphereface2_direct(x, label, weight, bias, s, m, lam, t, margin_type) -> float:
    """The formula, one utterance and one class at a time in float64."""
    total = 0.0
    for row, y in zip(x.reshape(len(label), -1).numpy(), label.tolist()):
        for j, w in enumerate(weight.numpy()):
            c = float(row @ w / np.linalg.norm(row) / np.linalg.norm(w))
            theta = math.acos(max(-1.0, min(1.0, c)))
            if j == y:
                if margin_type == "C":
                    z = 2 * ((c + 1) / 2) ** t - 1 - m
                else:
                    shifted = math.cos(theta + m) if theta + m < math.pi else c - (1 - math.cos(m))
                    z = 2 * ((shifted + 1) / 2) ** t - 1
                total += lam * math.log1p(math.exp(-(s * z + bias)))
            else:
                z = 2 * ((c + 1) / 2) ** t - 1 + m if margin_type == "C" else 2 * ((math.cos(theta - m) + 1) / 2) ** t - 1
                total += (1 - lam) * math.log1p(math.exp(s * z + bias))
    return total / len(label)


@pytest.mark.parametrize("margin_type", ["C", "A"])
def test_sphereface2_matches_its_formula(margin_type):
    torch.manual_seed(0)
    loss = SphereFace2(nOut=8, nClasses=5, margin=0.2, scale=32, margin_start=0, margin_end=0,
                       sphereface2_lambda=0.7, sphereface2_t=3, sphereface2_margin_type=margin_type).double()
    with torch.no_grad():
        loss.bias.fill_(-1.5)
    x, label = batch()
    value, prec1 = loss(x, label)
    expected = sphereface2_direct(x, label, loss.weight.detach(), -1.5, 32, 0.2, 0.7, 3, margin_type)
    assert value.item() == pytest.approx(expected, rel=1e-9)
    cosine = torch.nn.functional.normalize(x.squeeze(1), dim=1) @ torch.nn.functional.normalize(loss.weight, dim=1).T
    with_margin = cosine - 0.2 * torch.nn.functional.one_hot(label, 5)
    assert prec1.item() == pytest.approx(100 * (with_margin.argmax(1) == label).double().mean().item())


def test_sphereface2_margin_follows_the_schedule():
    loss = SphereFace2(nOut=8, nClasses=5, margin=0.2, margin_start=2, margin_end=6)
    shares = []
    for epochs in (0, 1.9, 4, 6, 9):
        loss.set_epoch_progress(epochs)
        shares.append(loss.m / 0.2)
    assert shares == pytest.approx([0, 0, 1 - RISE_FLOOR ** 0.5, 1, 1])


def test_sphereface2_trains_the_classes_apart():
    torch.manual_seed(0)
    loss = SphereFace2(nOut=8, nClasses=4, margin=0.2, scale=32, margin_start=0, margin_end=0)
    x = torch.nn.Parameter(torch.randn(16, 1, 8))
    label = torch.arange(4).repeat(4)
    optimizer = torch.optim.Adam([x, *loss.parameters()], lr=0.05)
    first = loss(x, label)[0].item()
    for _ in range(60):
        optimizer.zero_grad()
        value, prec1 = loss(x, label)
        value.backward()
        optimizer.step()
    assert value.item() < first / 4 and prec1.item() == 100
    assert loss.bias.grad is not None and loss.bias.item() != 0


def mobius_distance(x: np.ndarray, y: np.ndarray, c: float) -> float:
    """Poincare distance by Mobius addition: (2 / sqrt(c)) artanh(sqrt(c) |(-x) (+)_c y|)."""
    minus_x = -x
    dot, xx, yy = minus_x @ y, minus_x @ minus_x, y @ y
    added = ((1 + 2 * c * dot + c * yy) * minus_x + (1 - c * xx) * y) / (1 + 2 * c * dot + c * c * xx * yy)
    return 2 / math.sqrt(c) * math.atanh(math.sqrt(c) * np.linalg.norm(added))


@pytest.mark.parametrize("curvature", [1.0, 0.5, 2.0])
def test_poincare_distances_equal_the_mobius_form(curvature):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=generator, dtype=torch.float64) * 0.3 / math.sqrt(curvature)
    w = torch.randn(3, 6, generator=generator, dtype=torch.float64) * 0.3 / math.sqrt(curvature)
    distances = poincare_distances(x, w, curvature)
    for i in range(4):
        for j in range(3):
            assert distances[i, j].item() == pytest.approx(mobius_distance(x[i].numpy(), w[j].numpy(), curvature),
                                                            rel=1e-9)


@pytest.mark.parametrize("curvature, norm", [(1.0, 0.1), (1.0, 5.0), (0.5, 1.0)])
def test_hamsoftmax_matches_its_formula(curvature, norm):
    """Small embeddings stay where they are; large ones are scaled to just inside the ball's radius."""
    torch.manual_seed(2)
    loss = HAMSoftmax(nOut=8, nClasses=5, margin=0.2, scale=30, curvature=curvature)
    x, label = batch(norm=norm, seed=3)
    value, _ = loss(x.float(), label)
    radius = (1 - 1e-5) / math.sqrt(curvature)
    total = 0.0
    for row, y in zip(x.reshape(len(label), -1).numpy(), label.tolist()):
        point = row * min(1.0, radius / np.linalg.norm(row))
        logits = []
        for j, w in enumerate(loss.weight.detach().double().numpy()):
            distance = mobius_distance(point, w, curvature)
            logits.append(-30 * (distance + 0.2 * (j == y)))
        logits = np.array(logits)
        total += np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[y]
    assert value.item() == pytest.approx(total / len(label), rel=2e-4)


@pytest.mark.parametrize("factory, options, message", [
    (SphereFace2, {"sphereface2_margin_type": "B"}, r"--sphereface2_margin_type must be C or A"),
    (SphereFace2, {"sphereface2_lambda": 1.5}, r"0 <= --sphereface2_lambda <= 1"),
    (HAMSoftmax, {"curvature": 0.0}, r"--curvature above 0"),
])
def test_bad_options_name_the_flag(factory, options, message):
    with pytest.raises(ValueError, match=message):
        factory(nOut=8, nClasses=3, **options)


@pytest.mark.parametrize("factory", [SphereFace2, HAMSoftmax])
def test_one_utterance_per_speaker(factory):
    loss = factory(nOut=8, nClasses=3)
    with pytest.raises(ValueError, match=r"needs nPerSpeaker 1"):
        loss(torch.randn(3, 2, 8), torch.arange(3))
