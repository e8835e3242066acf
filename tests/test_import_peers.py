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


@pytest.fixture(scope="module")
def imported_package(tmp_path_factory):
    """SpeechBrain's ECAPA release, imported once for the tests of what a package can do."""
    folder = tmp_path_factory.mktemp("imported")
    release = write_release(load_case("speechbrain_ecapa_voxceleb"), folder / "release")
    package = folder / "ecapa.pkg"
    assert importModel.main(["--from", "speechbrain", "--checkpoint", str(release), "--output", str(package)]) == 0
    return package


def test_package_records_provenance(imported_package):
    content = torch.load(imported_package, weights_only=True)
    provenance = content["provenance"]
    assert provenance["toolkit"] == "speechbrain" and provenance["network"].startswith("ECAPA_TDNN (C=1024")
    assert set(provenance["files"]) == {"hyperparams.yaml", "embedding_model.ckpt"}
    assert all(len(digest) == 64 for digest in provenance["files"].values())
    assert content["args"]["frontend"] == "speechbrain" and content["args"]["ecapa_variant"] == "speechbrain"


def test_a_package_written_again_keeps_its_provenance(imported_package, tmp_path):
    import exportModel

    again = tmp_path / "again.pkg"
    assert exportModel.main(["--initial_model", str(imported_package), "--format", "package", "--output",
                             str(again)]) == 0
    first, second = torch.load(imported_package, weights_only=True), torch.load(again, weights_only=True)
    assert second["provenance"] == first["provenance"] and second["sha256"] == first["sha256"]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_imported_package_exports_with_parity(imported_package, tmp_path, kind, capsys):
    import exportModel

    output = tmp_path / f"ecapa.{kind}"
    assert exportModel.main(["--initial_model", str(imported_package), "--format", kind, "--output", str(output)]) == 0
    assert output.is_file() and "min cosine 1.0000" in capsys.readouterr().out


@pytest.mark.integration
def test_imported_package_evaluates_with_asnorm_and_calibration(imported_package, tiny_corpus, tmp_path, capsys):
    """--eval takes the package with no model flags: whole utterances, cosine, AS-norm and a fitted calibration."""
    import trainSpeakerNet

    status = trainSpeakerNet.main(["--eval", "--initial_model", str(imported_package), "--device", "cpu",
                                   "--test_list", tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"],
                                   "--train_list", tiny_corpus["train_list"], "--train_path",
                                   tiny_corpus["train_path"], "--score_norm", "asnorm", "--norm_topk", "3",
                                   "--fit_calibration", str(tmp_path / "calibration.json"), "--nDataLoaderThread", "0"])
    output = capsys.readouterr().out
    assert status == 0 and "EER " in output and "Cllr " in output
    verdict = SpeakerEmbedder(str(imported_package)).verify(f"{AUDIO_DIR}/{AUDIO_FILES[0]}",
                                                            f"{AUDIO_DIR}/{AUDIO_FILES[1]}")
    assert -1 <= verdict["score"] <= 1  # the cosine of the two files' whole-utterance embeddings
