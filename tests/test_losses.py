"""Losses: hand-worked values (independent numpy math), gradients, toy training, nPerSpeaker bounds, prec1."""
from importlib import import_module

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from loss.LossHelpers import equal_error_rate

# nPerSpeaker each loss accepts: (min, max or None)
PER_SPEAKER = {
    "softmax": (1, 1), "amsoftmax": (1, 1), "aamsoftmax": (1, 1), "ge2e": (2, None),
    "proto": (2, None), "triplet": (2, 2), "angleproto": (2, None), "softmaxproto": (2, 2),
}
TEST_NORMALIZE = {name: name != "proto" for name in PER_SPEAKER}
# what trainSpeakerNet.py passes by default
CLI = {"nOut": 8, "nClasses": 8, "margin": 0.1, "scale": 30.0, "hard_rank": 10, "hard_prob": 0.5,
       "model": "ResNetSE34L", "nPerSpeaker": 2, "batch_size": 8}


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one CPU thread is faster and does not fight other processes for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_loss(name: str, **kwargs) -> torch.nn.Module:
    """loss.<name>.LossFunction built with the trainer's default args (overridable)."""
    return import_module(f"loss.{name}").LossFunction(**{**CLI, **kwargs})


# ---------------------------------------------------------------- independent reference math

def np_cross_entropy(logits: np.ndarray, target: np.ndarray) -> float:
    """Mean softmax cross-entropy."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(log_norm - shifted[np.arange(len(target)), target]))


def np_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def np_angleproto(x: np.ndarray, w: float, b: float) -> tuple[float, float]:
    """Angular prototypical loss and accuracy by explicit loops."""
    speakers = x.shape[0]
    logits = np.array([[w * np_cosine(x[i, 0], x[j, 1:].mean(axis=0)) + b for j in range(speakers)]
                       for i in range(speakers)])
    target = np.arange(speakers)
    return np_cross_entropy(logits, target), 100.0 * np.mean(logits.argmax(1) == target)


X_PAIRS = np.array([  # 3 speakers x 3 utterances x 5 dims (B != D, so a [B, D] "distance" matrix would fail)
    [[1.0, 0.2, 0.0, -0.3, 0.5], [0.8, 0.1, 0.2, -0.1, 0.4], [0.9, -0.2, 0.1, 0.0, 0.7]],
    [[-0.5, 1.0, 0.3, 0.2, 0.0], [-0.3, 0.7, 0.1, 0.5, -0.2], [0.2, 0.9, -0.4, 0.1, 0.1]],
    [[0.1, -0.4, 1.2, 0.3, -0.6], [-0.9, 0.3, 0.2, -0.8, 0.1], [0.3, -0.1, 0.8, 0.2, 0.2]],
], dtype=np.float32)
LABELS = np.array([2, 0, 1])


def tensor(array: np.ndarray) -> torch.Tensor:
    """float32 tensor that tracks gradients."""
    return torch.tensor(array, dtype=torch.float32, requires_grad=True)


# ---------------------------------------------------------------- hand-worked values

def test_softmax_value():
    loss = make_loss("softmax", nOut=5, nClasses=3)
    weight = np.arange(15, dtype=np.float32).reshape(3, 5) / 10 - 0.7
    bias = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    with torch.no_grad():
        loss.fc.weight.copy_(torch.tensor(weight))
        loss.fc.bias.copy_(torch.tensor(bias))
    x = X_PAIRS[:, 0]
    value, prec1 = loss(tensor(x), torch.tensor(LABELS))
    logits = x @ weight.T + bias
    assert value.item() == pytest.approx(np_cross_entropy(logits, LABELS), rel=1e-5)
    assert prec1.item() == pytest.approx(100.0 * np.mean(logits.argmax(1) == LABELS))


def test_amsoftmax_value():
    loss = make_loss("amsoftmax", nOut=5, nClasses=3, margin=0.2, scale=10)
    weight = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    with torch.no_grad():
        loss.W.copy_(torch.tensor(weight))
    x = X_PAIRS[:, 1]
    value, prec1 = loss(tensor(x), torch.tensor(LABELS))
    logits = np.array([[10 * (np_cosine(x[i], weight[:, c]) - 0.2 * (c == LABELS[i])) for c in range(3)]
                       for i in range(3)])
    assert value.item() == pytest.approx(np_cross_entropy(logits, LABELS), rel=1e-5)
    assert prec1.item() == pytest.approx(100.0 * np.mean(logits.argmax(1) == LABELS))


@pytest.mark.parametrize("easy_margin", [False, True])
def test_aamsoftmax_value(easy_margin):
    """2-D case worked with angles: target logit s*cos(theta + m), or the fallbacks past the limits."""
    margin, scale = 0.3, 15.0
    class_angles = np.array([0.0, 2.0, 4.0])
    sample_angles = np.array([0.5, 1.3, 2.2, 0.05])
    labels = np.array([0, 1, 0, 2])  # theta = 0.5, 0.7, 2.2 (cos < 0) and 2.33 (> pi - m) radians
    loss = make_loss("aamsoftmax", nOut=2, nClasses=3, margin=margin, scale=scale, easy_margin=easy_margin)
    with torch.no_grad():
        loss.weight.copy_(torch.tensor(np.stack([np.cos(class_angles), np.sin(class_angles)], 1)))
    x = 3.0 * np.stack([np.cos(sample_angles), np.sin(sample_angles)], 1)
    value, _ = loss(tensor(x), torch.tensor(labels))

    logits = np.cos(sample_angles[:, None] - class_angles[None, :])
    for i, c in enumerate(labels):
        theta = abs(np.angle(np.exp(1j * (sample_angles[i] - class_angles[c]))))
        if easy_margin:
            logits[i, c] = np.cos(theta + margin) if np.cos(theta) > 0 else np.cos(theta)
        else:
            logits[i, c] = np.cos(theta + margin) if theta < np.pi - margin else np.cos(theta) - margin * np.sin(margin)
    assert value.item() == pytest.approx(np_cross_entropy(scale * logits, labels), rel=1e-5)


def test_angleproto_value():
    loss = make_loss("angleproto", init_w=7.0, init_b=-2.0)
    value, prec1 = loss(tensor(X_PAIRS), torch.tensor(LABELS))
    expected_loss, expected_prec = np_angleproto(X_PAIRS, 7.0, -2.0)
    assert value.item() == pytest.approx(expected_loss, rel=1e-5)
    assert prec1.item() == pytest.approx(expected_prec)


def test_ge2e_value():
    w, b = 6.0, -1.5
    loss = make_loss("ge2e", init_w=w, init_b=b)
    value, prec1 = loss(tensor(X_PAIRS), torch.tensor(LABELS))
    speakers, per_speaker = X_PAIRS.shape[:2]
    logits, target = [], []
    for j in range(speakers):
        for i in range(per_speaker):
            row = []
            for k in range(speakers):
                others = [X_PAIRS[k, u] for u in range(per_speaker) if k != j or u != i]
                row.append(w * np_cosine(X_PAIRS[j, i], np.mean(others, axis=0)) + b)
            logits.append(row)
            target.append(j)
    logits, target = np.array(logits), np.array(target)
    assert (logits < b).any(), "the case should include negative cosines"
    assert value.item() == pytest.approx(np_cross_entropy(logits, target), rel=1e-5)
    assert prec1.item() == pytest.approx(100.0 * np.mean(logits.argmax(1) == target))


def test_proto_value_uses_true_squared_distances():
    loss = make_loss("proto")
    value, prec1 = loss(tensor(X_PAIRS), torch.tensor(LABELS))
    speakers = X_PAIRS.shape[0]
    logits = np.array([[-np.sum((X_PAIRS[i, 0] - X_PAIRS[j, 1:].mean(axis=0)) ** 2) for j in range(speakers)]
                       for i in range(speakers)])
    assert value.item() == pytest.approx(np_cross_entropy(logits, np.arange(speakers)), rel=1e-5)
    assert prec1.item() == pytest.approx(100.0 * np.mean(logits.argmax(1) == np.arange(speakers)))


def np_triplet(anchor: np.ndarray, positive: np.ndarray, negative_index: list[int], margin: float) -> float:
    """Triplet loss on L2-normalised vectors for a given choice of negatives."""
    a = anchor / np.linalg.norm(anchor, axis=1, keepdims=True)
    p = positive / np.linalg.norm(positive, axis=1, keepdims=True)
    terms = [max(0.0, np.sum((a[i] - p[i]) ** 2) - np.sum((a[i] - p[n]) ** 2) + margin)
             for i, n in enumerate(negative_index)]
    return float(np.mean(terms))


def test_triplet_value_with_two_speakers():
    """With two speakers the negative is forced; prec1 is the EER of the two pairs."""
    x = X_PAIRS[:2, :2]
    loss = make_loss("triplet", margin=0.5)
    value, prec1 = loss(tensor(x), torch.tensor(LABELS[:2]))
    assert value.item() == pytest.approx(np_triplet(x[:, 0], x[:, 1], [1, 0], 0.5), rel=1e-5)
    assert prec1.item() == pytest.approx(0.0)  # both positive pairs are closer than both negatives


def test_triplet_hard_negatives():
    """hard_prob 1, hard_rank 0: the negative is the closest other speaker's positive."""
    rng = np.random.default_rng(3)
    anchor = rng.normal(size=(5, 4)).astype(np.float32)
    positive = rng.normal(size=(5, 4)).astype(np.float32)
    a = anchor / np.linalg.norm(anchor, axis=1, keepdims=True)
    p = positive / np.linalg.norm(positive, axis=1, keepdims=True)
    distance = ((a[:, None] - p[None]) ** 2).sum(-1) + np.eye(5) * 1e9
    hardest = distance.argmin(axis=1).tolist()
    loss = make_loss("triplet", hard_rank=0, hard_prob=1.0, margin=0.2)
    value, _ = loss(tensor(np.stack([anchor, positive], 1)), torch.arange(5))
    assert value.item() == pytest.approx(np_triplet(anchor, positive, hardest, 0.2), rel=1e-5)


def test_triplet_semi_hard_negatives():
    """hard_rank < 0: the only negative farther than the positive but within the margin is chosen."""
    angles = {"a0": 0.0, "p0": 0.5, "p1": 0.7, "p2": 0.3, "a1": 2.0, "a2": 4.0}
    vec = {k: np.array([np.cos(v), np.sin(v)], dtype=np.float32) for k, v in angles.items()}
    anchor = np.stack([vec["a0"], vec["a1"], vec["a2"]])
    positive = np.stack([vec["p0"], vec["p1"], vec["p2"]])
    loss = make_loss("triplet", hard_rank=-1, margin=0.5)
    torch.manual_seed(0)
    negatives = loss._mine_negatives(-torch.cdist(torch.tensor(anchor), torch.tensor(positive)) ** 2)
    # for anchor 0: d(p0)=0.245, d(p1)=0.470 (semi-hard), d(p2)=0.089 (harder than the positive)
    assert negatives[0].item() == 1


def test_triplet_random_negatives_never_pick_own_speaker():
    loss = make_loss("triplet", hard_prob=0.0)
    similarity = torch.randn(6, 6)
    picks = torch.stack([loss._mine_negatives(similarity) for _ in range(200)])
    assert (picks != torch.arange(6)).all()
    assert all(len(set(picks[:, row].tolist())) == 5 for row in range(6))  # every other speaker is drawn


def test_softmaxproto_value():
    loss = make_loss("softmaxproto", nOut=5, nClasses=3)
    weight = np.linspace(-1, 1, 15, dtype=np.float32).reshape(3, 5)
    with torch.no_grad():
        loss.softmax.fc.weight.copy_(torch.tensor(weight))
        loss.softmax.fc.bias.zero_()
    x = X_PAIRS[:, :2]
    value, prec1 = loss(tensor(x), torch.tensor(LABELS))
    flat, flat_labels = x.reshape(6, 5), np.repeat(LABELS, 2)
    softmax_part = np_cross_entropy(flat @ weight.T, flat_labels)
    assert value.item() == pytest.approx(softmax_part + np_angleproto(x, 10.0, -5.0)[0], rel=1e-5)
    assert prec1.item() == pytest.approx(100.0 * np.mean((flat @ weight.T).argmax(1) == flat_labels))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_error_rate_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    positive, negative = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 60)
    labels = np.r_[np.ones(40), np.zeros(60)]
    fpr, tpr, _ = roc_curve(labels, np.r_[positive, negative], drop_intermediate=False)
    fnr = 1 - tpr
    best = np.argmin(np.abs(fnr - fpr))
    expected = 100.0 * (fnr[best] + fpr[best]) / 2
    assert equal_error_rate(torch.tensor(positive), torch.tensor(negative)).item() == pytest.approx(expected)


# ---------------------------------------------------------------- generic behaviour

def embeddings_for(name: str, speakers: int = 4, dim: int = 8) -> torch.Tensor:
    """Random embeddings of the shape the loss expects."""
    per_speaker = PER_SPEAKER[name][0]
    shape = (speakers, dim) if per_speaker == 1 else (speakers, per_speaker, dim)
    return torch.randn(*shape, requires_grad=True)


@pytest.mark.parametrize("name", sorted(PER_SPEAKER))
def test_gradients_match_finite_differences(name):
    """The gradient reaching the embeddings is the loss's true derivative (float64 central differences)."""
    torch.manual_seed(0)
    loss = make_loss(name).double()
    x = embeddings_for(name).detach().double().requires_grad_()
    labels = torch.tensor([0, 1, 2, 3])

    def value_at(embeddings):
        torch.manual_seed(1)  # triplet draws its negatives: the same draws at every evaluation
        return loss(embeddings, labels)

    value, prec1 = value_at(x)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert not prec1.requires_grad and 0.0 <= prec1.item() <= 100.0
    direction = torch.randn_like(x)
    step = 1e-6
    with torch.no_grad():
        numeric = (value_at(x + step * direction)[0] - value_at(x - step * direction)[0]) / (2 * step)
    assert x.grad.abs().sum() > 0
    assert (x.grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("name", sorted(PER_SPEAKER))
def test_declared_per_speaker_and_test_normalize(name):
    loss = make_loss(name)
    assert (type(loss).min_per_speaker, type(loss).max_per_speaker) == PER_SPEAKER[name]
    assert loss.test_normalize is TEST_NORMALIZE[name]


@pytest.mark.parametrize("name", sorted(PER_SPEAKER))
def test_wrong_per_speaker_is_a_clear_error(name):
    low, high = PER_SPEAKER[name]
    wrong = [1] if low == 2 else [2]
    if high == 2:
        wrong.append(3)
    for per_speaker in wrong:
        shape = (4, 8) if per_speaker == 1 else (4, per_speaker, 8)
        with pytest.raises(ValueError, match=rf"loss '{name}' needs nPerSpeaker .*{low}") as error:
            make_loss(name)(torch.randn(*shape), torch.arange(4))
        assert "--nPerSpeaker" in str(error.value)


@pytest.mark.parametrize("name", ["amsoftmax", "aamsoftmax"])
def test_margin_losses_check_embedding_width(name):
    with pytest.raises(ValueError, match="nOut 8"):
        make_loss(name)(torch.randn(4, 6), torch.arange(4))


def test_prec1_is_accuracy_percent_on_perfect_separation():
    x = torch.eye(4).repeat_interleave(2, dim=0).reshape(4, 2, 4) * 5
    assert make_loss("angleproto")(x, None)[1].item() == 100.0
    assert make_loss("proto")(x, None)[1].item() == 100.0
    assert make_loss("triplet")(x, None)[1].item() == 0.0  # triplet's prec1 is an EER


# ---------------------------------------------------------------- toy training

CENTERS = 3.0 * torch.nn.functional.normalize(torch.randn(8, 6, generator=torch.Generator().manual_seed(42)), dim=1)


def toy_batch(rng: torch.Generator, per_speaker: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [8 speakers, per_speaker, 32]: 6 informative dims (speaker centre) buried in 26 noisy ones."""
    speakers = CENTERS.shape[0]
    informative = CENTERS[:, None, :] + 0.3 * torch.randn(speakers, per_speaker, 6, generator=rng)
    noise = 3.0 * torch.randn(speakers, per_speaker, 26, generator=rng)
    return torch.cat([informative, noise], dim=2), torch.arange(speakers)


@pytest.mark.parametrize("name", sorted(PER_SPEAKER))
def test_toy_training_lowers_loss_and_improves_prec1(name):
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    per_speaker = PER_SPEAKER[name][0]
    encoder = torch.nn.Linear(32, 8)
    loss = make_loss(name)
    optimizer = torch.optim.Adam([*encoder.parameters(), *loss.parameters()], lr=0.02)
    history = []
    for _ in range(200):
        inputs, labels = toy_batch(rng, per_speaker)
        embeddings = encoder(inputs)
        value, prec1 = loss(embeddings[:, 0] if per_speaker == 1 else embeddings, labels)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        history.append((value.item(), prec1.item()))
    start, end = np.mean(history[:20], axis=0), np.mean(history[-20:], axis=0)
    assert end[0] < 0.7 * start[0]
    if name == "triplet":  # prec1 is an EER: lower is better
        assert end[1] < start[1] - 10
    else:
        assert end[1] > start[1] + 20
