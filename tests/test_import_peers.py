"""Released models of wespeaker, 3D-Speaker and SpeechBrain, imported and compared with the peers' own inference
pipelines: each fixture holds the embeddings the peer's code gave for two real speech files (see
tests/fixtures/peers/README.md); the imported package must give the same embeddings, relative error < 1e-4."""
import pytest
import torch
from peer_releases import AUDIO_DIR, AUDIO_FILES, CASES, load_case, peer_embedding, write_release

import importModel
from embedSpeaker import SpeakerEmbedder

LARGE = {"wespeaker_resnet221", "wespeaker_resnet293"}  # a few seconds per file on 2 CPU cores
TOLERANCE = 1e-4


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """|ours - reference| / |reference| (L2)."""
    return float((ours - reference).norm() / reference.norm())


def imported_embeddings(case: dict, folder) -> dict[str, torch.Tensor]:
    """Write the release, import it, and embed the audio files with the package as --eval would (its settings)."""
    release = write_release(case, folder / "release")
    package = folder / "imported.pkg"
    assert importModel.main(["--from", case["toolkit"].replace("-", ""), "--checkpoint", str(release),
                             "--output", str(package)]) == 0
    embedder = SpeakerEmbedder(str(package))
    embeddings = embedder.embed_files(list(AUDIO_FILES), str(AUDIO_DIR))
    return {name: torch.from_numpy(value).reshape(-1) for name, value in embeddings.items()}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.integration if name in LARGE else ())
                                  for name in CASES])
def test_imported_release_matches_the_peer(name, tmp_path):
    case = load_case(name)
    embeddings = imported_embeddings(case, tmp_path)
    for audio in AUDIO_FILES:
        reference = peer_embedding(case, audio)
        assert embeddings[audio].shape == reference.shape
        assert relative_error(embeddings[audio], reference) < TOLERANCE, (name, audio)
