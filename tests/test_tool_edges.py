"""The tools as a new user meets them: none writes over one of its own inputs, outputs are checked before the work,
a list line that is not UTF-8 is named by file and line, errors name only the tool's own flags, and the tools that
only embed offer only the settings that build and score a model."""
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from cli_checks import stop_line
from test_import_errors import WESPEAKER_CONFIG, wespeaker_resnet34_weights, write_wespeaker
from test_kaldi_interchange import kaldi_folder
from test_train_cli import run_cli, small_run

import averageModels
import dataprep
import embedSpeaker
import exportModel
import importModel
import trainSpeakerNet
from audio.file_lists import read_list_lines
from deployment.model_loading import load_speaker_net, resolve_settings
from evaluation.calibration import Calibration
from runtime.atomic_files import check_not_an_input, check_output_folder
from runtime.errors import ConfigError, DataError
from SpeakerNet import SpeakerNet

NET = {"model": "ResNetSE34L", "trainfunc": "angleproto", "nPerSpeaker": 2, "nOut": 32, "log_input": True,
       "eval_frames": 50, "num_eval": 2}
NOT_UTF8 = "ab c\r\nd\u00e9f\n".encode() + b"gh\xffij\n"  # line 3, column 3 (after a CRLF and a two-byte letter)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """One of our checkpoints: weights and the args they were trained with (no model flags needed)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoint") / "model000000001.model"
    torch.save({"model_state_dict": SpeakerNet(**NET).state_dict(), "args": NET}, path)
    return path


def copy(path: Path, folder: Path, name: str | None = None) -> Path:
    """A copy of `path` in `folder` (a test may try to overwrite it)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(path, folder / (name or path.name)))


# ---------------------------------------------------------------- no tool writes over one of its own inputs


def test_same_file_sees_through_links_and_relative_parts(tmp_path, monkeypatch):
    target = tmp_path / "a.model"
    target.write_bytes(b"x")
    (tmp_path / "link.model").symlink_to(target)
    monkeypatch.chdir(tmp_path)
    for output in ("a.model", "link.model", f"../{tmp_path.name}/a.model", str(target)):
        with pytest.raises(ConfigError, match=f"--output {re.escape(output)} would overwrite --initial_model"):
            check_not_an_input(output, "--output", [("--config", None), ("--initial_model", str(target))])
    check_not_an_input("b.model", "--output", [("--initial_model", str(target))])


@pytest.mark.integration
@pytest.mark.parametrize("case", ["same path", "through a link"])
def test_export_refuses_to_overwrite_its_checkpoint(case, checkpoint, tmp_path, capsys):
    source = copy(checkpoint, tmp_path)
    initial_model = source
    if case == "through a link":
        initial_model = tmp_path / "link.model"
        initial_model.symlink_to(source)
    before = source.read_bytes()
    line = stop_line(exportModel.main, ["--initial_model", str(initial_model), "--format", "package",
                                        "--output", str(source)], capsys)
    assert f"--output {source} would overwrite --initial_model {initial_model}" in line
    assert source.read_bytes() == before


@pytest.mark.integration
def test_import_refuses_to_overwrite_the_release(tmp_path, capsys):
    release = Path(write_wespeaker(tmp_path / "release", WESPEAKER_CONFIG, wespeaker_resnet34_weights()))
    before = (release / "avg_model.pt").read_bytes()
    line = stop_line(importModel.main, ["--from", "wespeaker", "--checkpoint", str(release), "--output",
                                        str(release / "avg_model.pt")], capsys)
    assert "would overwrite the release file" in line and (release / "avg_model.pt").read_bytes() == before


@pytest.mark.parametrize("source", ["inputs", "save_path"])
def test_average_refuses_to_overwrite_an_input(source, checkpoint, tmp_path, capsys):
    model = tmp_path / "exp" / "model"
    first, second = copy(checkpoint, model, "model000000001.model"), copy(checkpoint, model, "model000000002.model")
    chosen = ["--inputs", str(first), str(second)] if source == "inputs" else ["--save_path", str(tmp_path / "exp"),
                                                                               "--last", "2"]
    line = stop_line(averageModels.main, [*chosen, "--output", str(second)], capsys)
    assert f"--output {second} would overwrite the input checkpoint" in line
    assert second.read_bytes() == checkpoint.read_bytes()


@pytest.mark.integration
def test_embed_refuses_to_overwrite_its_inputs(checkpoint, tiny_corpus, tmp_path, capsys):
    kaldi = kaldi_folder(tiny_corpus, tmp_path)
    folder = Path(kaldi["train_scp"]).parent
    before = (folder / "utt2spk").read_bytes()
    line = stop_line(embedSpeaker.main, ["embed", kaldi["train_scp"], "--kaldi_dir", str(folder), "--initial_model",
                                         str(checkpoint)], capsys)
    assert f"--kaldi_dir {folder}/utt2spk would overwrite the source's utt2spk" in line
    assert (folder / "utt2spk").read_bytes() == before and sorted(os.listdir(folder)) == ["utt2spk", "wav.scp"]
    model = copy(checkpoint, tmp_path, "model.npz")
    wav = f"{tiny_corpus['test_path']}/id00000/sess0/00000.wav"
    line = stop_line(embedSpeaker.main, ["embed", wav, "--output", str(model), "--initial_model", str(model)], capsys)
    assert "would overwrite --initial_model" in line and model.read_bytes() == checkpoint.read_bytes()


@pytest.mark.integration
@pytest.mark.parametrize("output, input_flag", [("--score_file", "--test_list"),
                                                ("--fit_calibration", "--initial_model"),
                                                ("--embeddings_cache", "--calibration")])
def test_eval_refuses_to_overwrite_its_inputs(output, input_flag, checkpoint, tiny_corpus, tmp_path, capsys):
    initial_model = copy(checkpoint, tmp_path)
    trials = copy(Path(tiny_corpus["test_list"]), tmp_path)
    calibration = tmp_path / "calibration.json"
    Calibration(10.0, 1.0, 0.5, "original", "none", "dev.txt", 5, 5).save(str(calibration))
    inputs = {"--test_list": trials, "--initial_model": initial_model, "--calibration": calibration}
    argv = small_run(tiny_corpus, tmp_path / "exp", "--eval", "--initial_model", str(initial_model),
                     "--test_list", str(trials), output, str(inputs[input_flag]))
    if input_flag == "--calibration":
        argv += ["--calibration", str(calibration)]
    before = inputs[input_flag].read_bytes()
    line = stop_line(trainSpeakerNet.main, argv, capsys)
    assert f"{output} {inputs[input_flag]} would overwrite {input_flag}" in line
    assert inputs[input_flag].read_bytes() == before


# ---------------------------------------------------------------- outputs are checked before the work


def test_an_output_folder_must_be_a_folder_that_can_be_made(tmp_path):
    (tmp_path / "file").write_text("kept")
    with pytest.raises(ConfigError, match=r"--kaldi_dir .*file is a file; give a folder"):
        check_output_folder(str(tmp_path / "file"), "--kaldi_dir")
    with pytest.raises(ConfigError, match=r"Cannot create --kaldi_dir .*file/sub"):
        check_output_folder(str(tmp_path / "file" / "sub"), "--kaldi_dir")
    check_output_folder(str(tmp_path / "new" / "folder"), "--kaldi_dir")
    assert (tmp_path / "new" / "folder").is_dir() and (tmp_path / "file").read_text() == "kept"


def test_kaldi_dir_that_is_a_file_stops_before_the_model_is_read(tiny_corpus, tmp_path, capsys):
    taken = tmp_path / "embeddings"
    taken.write_text("kept")
    wav = f"{tiny_corpus['test_path']}/id00000/sess0/00000.wav"
    line = stop_line(embedSpeaker.main, ["embed", wav, "--kaldi_dir", str(taken), "--initial_model",
                                         str(tmp_path / "not_read.model")], capsys)
    assert f"--kaldi_dir {taken} is a file; give a folder" in line and taken.read_text() == "kept"


# ---------------------------------------------------------------- a run that never validates needs no trial list


@pytest.mark.integration
def test_training_without_validation_reads_no_trial_list(tiny_corpus, tmp_path):
    save_path = tmp_path / "exp"
    result = run_cli(small_run(tiny_corpus, save_path, "--test_list", str(tmp_path / "no_trials.txt"),
                               "--test_interval", "5", "--max_epoch", "1", "--save_last_epochs", "1"))
    assert "--test_interval 5 is beyond --max_epoch 1: no validation will run" in result.stdout
    assert sorted(os.listdir(save_path / "model")) == ["model000000001.model", "resume.model"]
    assert "VEER" not in (save_path / "result" / "scores.txt").read_text()


# ---------------------------------------------------------------- lines that are not UTF-8 are named by line


def test_a_line_that_is_not_utf8_is_named_by_file_line_and_column(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbf" + NOT_UTF8)  # with a byte-order mark, which is not counted
    with pytest.raises(DataError, match=re.escape(f"{path} line 3 is not UTF-8 text (byte 0xff at column 3); save "
                                                  "the train list as UTF-8; check --train_list")):
        read_list_lines(str(path), "train list", "--train_list")
    path.write_bytes(NOT_UTF8.replace(b"\xff", b""))
    assert read_list_lines(str(path), "train list") == ["ab c", "d\u00e9f", "ghij"]


@pytest.mark.integration
def test_lists_that_are_not_utf8_are_one_line_in_every_tool(checkpoint, tiny_corpus, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(NOT_UTF8)
    expected = f"{bad} line 3 is not UTF-8 text (byte 0xff at column 3)"
    cohort = small_run(tiny_corpus, tmp_path / "exp", "--eval", "--initial_model", str(checkpoint),
                       "--score_norm", "snorm", "--cohort_list", str(bad))
    line = stop_line(trainSpeakerNet.main, cohort, capsys)
    assert expected in line and line.endswith("check --cohort_list")
    line = stop_line(embedSpeaker.main, ["embed", str(bad), "--output", str(tmp_path / "x.npz"), "--initial_model",
                                         str(checkpoint)], capsys)
    assert expected in line and not (tmp_path / "x.npz").exists()
    scp = tmp_path / "kaldi" / "wav.scp"
    scp.parent.mkdir()
    scp.write_bytes(NOT_UTF8)
    assert f"{scp} line 3 is not UTF-8 text" in stop_line(embedSpeaker.main, [
        "embed", str(scp), "--output", str(tmp_path / "x.npz"), "--initial_model", str(checkpoint)], capsys)
    line = stop_line(dataprep.main, ["--save_path", str(tmp_path / "data"), "--check_trials", str(bad)], capsys)
    assert expected in line and line.endswith("check --check_trials")


# ---------------------------------------------------------------- errors name only the tool's own flags


@pytest.mark.integration
def test_missing_files_of_a_wav_scp_name_no_root_flag(tiny_corpus, tmp_path, capsys):
    kaldi = kaldi_folder(tiny_corpus, tmp_path)
    scp = Path(kaldi["train_scp"])
    scp.write_text(scp.read_text().replace(tiny_corpus["train_path"], "/no/audio", 1))
    line = stop_line(trainSpeakerNet.main, small_run(tiny_corpus, tmp_path / "exp", "--train_list", str(scp)), capsys)
    assert f"1 of 24 files named in {scp} do not exist (first: /no/audio/" in line
    assert "a wav.scp holds each file's path" in line and "--train_path" not in line


def test_verify_names_its_missing_file_without_a_root_flag(tiny_corpus, tmp_path, capsys):
    wav = f"{tiny_corpus['test_path']}/id00000/sess0/00000.wav"
    line = stop_line(embedSpeaker.main, ["verify", wav, str(tmp_path / "b.wav"), "--initial_model",
                                         str(tmp_path / "not_read.model")], capsys)
    assert line == f"Error: 1 of 2 files named in the pair to verify do not exist (first: {tmp_path / 'b.wav'})"


@pytest.mark.integration
def test_a_missing_cohort_list_names_cohort_list(checkpoint, tiny_corpus, tmp_path, capsys):
    argv = small_run(tiny_corpus, tmp_path / "exp", "--eval", "--initial_model", str(checkpoint),
                     "--score_norm", "snorm", "--cohort_list", str(tmp_path / "cohort.txt"))
    assert stop_line(trainSpeakerNet.main, argv, capsys).endswith("it does not exist; check --cohort_list")


@pytest.mark.integration
@pytest.mark.parametrize("scoring, score_norm, message", [
    ("original", "asnorm", "verify scores a pair without score normalisation: fit one with trainSpeakerNet.py "
                           "--eval --score_norm none --fit_calibration"),
    ("cosine", "none", "was fitted on --scoring cosine scores, but these are --scoring original; give --scoring "
                       "cosine")])
def test_verify_names_its_own_flags_for_a_calibration_of_other_scores(scoring, score_norm, message, checkpoint,
                                                                      tiny_corpus, tmp_path, capsys):
    calibration = tmp_path / "calibration.json"
    Calibration(10.0, 1.0, 0.5, scoring, score_norm, "dev.txt", 5, 5).save(str(calibration))
    wav = f"{tiny_corpus['test_path']}/id00000/sess0/00000.wav"
    line = stop_line(embedSpeaker.main, ["verify", wav, wav, "--initial_model", str(checkpoint), "--calibration",
                                         str(calibration)], capsys)
    assert message in line and "this run" not in line


# ---------------------------------------------------------------- the embedding tools offer only model settings


def help_text(main, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().out


@pytest.mark.parametrize("tool", ["embed", "verify", "export"])
def test_embedding_tools_offer_only_the_settings_of_a_model(tool, capsys):
    text = (help_text(exportModel.main, ["--help"], capsys) if tool == "export"
            else help_text(embedSpeaker.main, [tool, "--help"], capsys))
    flags = set(re.findall(r"(--\w+)", text))
    assert {"--model", "--trainfunc", "--nOut", "--frontend", "--m_channels", "--eval_frames", "--scoring",
            "--nClasses"} <= flags  # nClasses shapes the loss head a checkpoint holds
    assert not flags & {"--momentum", "--final_lr", "--warmup_epochs", "--margin_start", "--margin", "--scale",
                        "--nPerSpeaker", "--subcenters", "--lr", "--optimizer", "--test_interval"}


def test_saved_loss_and_optimiser_settings_still_reach_the_model(tmp_path):
    saved = {**NET, "trainfunc": "subcenter_aamsoftmax", "nPerSpeaker": 1, "nClasses": 6, "subcenters": 3,
             "margin": 0.3, "momentum": 0.5}
    settings = resolve_settings(saved, None, {"nOut": "32"})
    assert (settings["subcenters"], settings["nClasses"], settings["momentum"]) == (3, 6, 0.5)
    assert settings["margin"] == pytest.approx(0.3) and settings["scale"] == pytest.approx(30)  # a trainer default
    path = tmp_path / "model.model"
    torch.save({"model_state_dict": SpeakerNet(**saved).state_dict(), "args": saved}, path)
    net, _ = load_speaker_net(str(path), None, torch.device("cpu"), {})
    assert net.__L__.state_dict()["weight"].shape[0] == 6 * 3  # the saved subcenters built the loss head
