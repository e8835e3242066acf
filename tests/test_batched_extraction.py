"""Whole-utterance extraction batched by length: the groups, and embeddings close to one file at a time."""

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from conftest import speaker_tone

import embedSpeaker
from evaluation import extract_embeddings
from evaluation.extraction import length_groups
from SpeakerNet import SpeakerNet


def test_length_groups_sort_and_cap():
    lengths = [100, 210, 103, 200, 104, 100, 211, 106]
    assert length_groups(lengths, 0.05, 16) == [[0, 5, 2, 4], [7], [3, 1], [6]]
    assert length_groups(lengths, 0.0, 16) == [[0, 5], [2], [4], [7], [3], [1], [6]]
    assert length_groups(lengths, 0.1, 3) == [[0, 5, 2], [4, 7], [3, 1, 6]]


@pytest.fixture(scope="module")
def uneven_files(tmp_path_factory):
    """10 files of 1.00-1.27 s (3 speakers), so that most lengths differ."""
    root = tmp_path_factory.mktemp("uneven")
    rng = np.random.default_rng(5)
    names = []
    for number in range(10):
        name = f"s{number % 3}/{number:02d}.wav"
        (root / name).parent.mkdir(exist_ok=True)
        soundfile.write(root / name, speaker_tone(number % 3, 1.0 + 0.03 * number, rng), 16000)
        names.append(name)
    return str(root), names


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(1)
    return SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=2, nOut=32,
                      log_input=True, encoder_type="SAP", n_mels=40).eval()


def embed_counting_passes(net, root, names, **options):
    passes = []
    hook = net.register_forward_hook(lambda module, inputs, output: passes.append(inputs[0].shape[0]))
    try:
        return extract_embeddings(net, names, root, 0, 1, device="cpu", **options), passes
    finally:
        hook.remove()


def test_batched_whole_utterances_match_one_at_a_time(net, uneven_files):
    root, names = uneven_files
    single, single_passes = embed_counting_passes(net, root, names, num_workers=0, files_per_batch=1)
    batched, batched_passes = embed_counting_passes(net, root, names, num_workers=1, files_per_batch=8,
                                                    length_tolerance=0.1)
    exact, _ = embed_counting_passes(net, root, names, num_workers=0, files_per_batch=8)
    assert len(single_passes) == 10 and len(batched_passes) < 5 and max(batched_passes) > 1
    for name in names:
        assert single[name].shape == batched[name].shape == (1, 32)
        assert float(F.cosine_similarity(single[name], batched[name])) > 0.999
        np.testing.assert_allclose(exact[name].numpy(), single[name].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.integration
def test_embed_cli_batches_by_length_with_workers(net, uneven_files, tmp_path):
    root, names = uneven_files
    checkpoint = str(tmp_path / "model000000001.model")
    torch.save(net.state_dict(), checkpoint)
    flags = ["--initial_model", checkpoint, "--model", "ResNetSE34L", "--trainfunc", "angleproto", "--nOut", "32",
             "--log_input", "true", "--eval_frames", "0", "--nDataLoaderThread", "1"]
    assert embedSpeaker.main(["embed", root, "--output", str(tmp_path / "batched.npz"), *flags]) == 0
    assert embedSpeaker.main(["embed", root, "--output", str(tmp_path / "exact.npz"), "--length_tolerance", "0",
                              *flags]) == 0
    batched, exact = np.load(tmp_path / "batched.npz"), np.load(tmp_path / "exact.npz")
    for name in names:
        cosine = float(F.cosine_similarity(torch.from_numpy(batched[name]), torch.from_numpy(exact[name])))
        assert cosine > 0.999
    assert embedSpeaker.main(["embed", root, "--output", str(tmp_path / "x.npz"), "--length_tolerance", "-1",
                              *flags]) == 1


def test_evaluation_batches_whole_utterances_by_length(net, uneven_files, tmp_path):
    """--eval --eval_frames 0 groups utterances within --length_tolerance (the cache records the tolerance);
    --length_tolerance 0 embeds every utterance whole, exactly as one at a time."""
    from evaluation.extraction import embed_paths
    from settings.sections import EvaluationSettings

    root, names = uneven_files
    passes = []
    hook = net.register_forward_hook(lambda module, inputs, output: passes.append(inputs[0].shape[0]))
    try:
        def embed(tolerance: float, cache: str) -> dict:
            settings = EvaluationSettings.from_flags(dict(eval_frames=0, num_eval=1, nDataLoaderThread=0,
                                                          length_tolerance=tolerance, eval_files_per_batch=8,
                                                          embeddings_cache=str(tmp_path / cache)))
            passes.clear()
            return embed_paths(net, {root: names}, settings, torch.device("cpu"), None)
        grouped = embed(0.1, "grouped.pt")
        grouped_passes = len(passes)
        exact = embed(0.0, "exact.pt")
        exact_passes = len(passes)
    finally:
        hook.remove()
    single, _ = embed_counting_passes(net, root, names, num_workers=0, files_per_batch=1)
    assert grouped_passes < 5 < exact_passes
    for name in names:
        full = f"{root}/{name}"
        np.testing.assert_allclose(exact[full].numpy(), single[name].numpy(), rtol=1e-4, atol=1e-5)
        assert float(F.cosine_similarity(grouped[full], single[name])) > 0.999
    assert torch.load(tmp_path / "grouped.pt", weights_only=True)["settings"]["length_tolerance"] == 0.1
