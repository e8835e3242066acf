"""The whole run with an ssl front end on a tiny random encoder: exact resume after SIGKILL in the LoRA stage, DDP,
large-margin fine-tuning from an earlier stage, --eval with AS-norm and calibration, a package and its export."""
import json

import pytest
import torch
from ssl_encoders import write_tiny_encoder
from test_distributed import free_port
from test_resilience import inside_epoch, resilient_run, saved_position, start, wait_for
from test_train_cli import checkpoint_names, epoch_log, run_cli, small_run

import embedSpeaker
import exportModel

pytestmark = pytest.mark.integration

ECAPA = ["--model", "ECAPA_TDNN", "--channels", "16", "--nOut", "16", "--frontend", "ssl"]
STAGES = {  # the recipes' stages, on a tiny encoder
    "frozen": ["--ssl_frozen", "true"],
    "joint": ["--encoder_lr_factor", "0.1", "--layer_decay", "0.8"],
    "lora": ["--lora_rank", "4", "--lora_alpha", "8"],
}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    return write_tiny_encoder("wavlm", tmp_path_factory.mktemp("encoder") / "wavlm")


def ssl_flags(encoder: str, stage: str) -> list[str]:
    return [*ECAPA, "--ssl_source", encoder, *STAGES[stage]]


def killable_run(corpus, save_path, stage: str, encoder: str) -> list[str]:
    """The resilience tests' run in two epochs (killed inside the second), on the tiny encoder."""
    return resilient_run(corpus, save_path, *ssl_flags(encoder, stage), "--max_epoch", "2", "--test_interval", "2")


# LoRA holds what the other stages hold (a frozen encoder part, trained adapters, layer weights, back end); one
# killed run per stage cost CI about 45 s each
@pytest.mark.parametrize("stage", ["lora"])
def test_sigkill_inside_an_epoch_then_resume_gives_identical_losses(tiny_corpus, tmp_path, encoder, stage):
    reference = tmp_path / "reference"
    run_cli(killable_run(tiny_corpus, reference, stage, encoder))
    save_path = tmp_path / "killed"
    argv = killable_run(tiny_corpus, save_path, stage, encoder)
    process = start([*argv, "--checkpoint_minutes", "0.0001"])
    wait_for(lambda: inside_epoch(2, saved_position(save_path)), process)
    process.kill()
    process.wait()
    completed, steps = saved_position(save_path)
    assert completed == 1 and steps >= 1
    resumed = run_cli(argv).stdout
    assert f"continuing with epoch 2 after its first {steps} batches" in resumed
    assert epoch_log(save_path) == epoch_log(reference)


def test_distributed_training_with_a_frozen_encoder(tiny_corpus, tmp_path, encoder):
    save_path = tmp_path / "ddp"
    output = run_cli(small_run(tiny_corpus, save_path, "--max_epoch", "1", "--batch_size", "2",
                               *ssl_flags(encoder, "frozen"), "--distributed", "--nproc", "2", "--port",
                               free_port())).stdout
    assert output.count("Epoch 1, TEER/TAcc") == 1 and (save_path / "model" / "model000000001.model").is_file()


def test_stages_chain_into_evaluation_packages_and_export(tiny_corpus, tmp_path, encoder):
    """LoRA stage -> joint stage (adapters merged) -> large-margin stage -> --eval with AS-norm and calibration ->
    package -> embed/verify -> ONNX with its parity check."""
    common = ["--trainfunc", "aamsoftmax", "--nClasses", "6", "--nPerSpeaker", "1", "--batch_size", "3",
              "--max_epoch", "1", "--scale", "30"]
    first = tmp_path / "lora"
    run_cli(small_run(tiny_corpus, first, *ssl_flags(encoder, "lora"), *common, "--margin", "0.2"))
    second = tmp_path / "joint"
    output = run_cli(small_run(tiny_corpus, second, *ssl_flags(encoder, "joint"), *common, "--margin", "0.2",
                               "--initial_model", str(first / "model" / "model000000001.model"))).stdout
    assert "missing in the file" not in output and "not in the model" not in output  # adapters merged
    saved = torch.load(second / "model" / "model000000001.model", weights_only=True)["model_state_dict"]
    assert not any(".lora_" in name for name in saved)
    third = tmp_path / "lm"
    run_cli(small_run(tiny_corpus, third, *ssl_flags(encoder, "joint"), *common, "--margin", "0.5",
                      "--max_frames", "80", "--initial_model", str(second / "model" / "model000000001.model")))
    assert checkpoint_names(third) == ["model000000001.eer", "model000000001.model", "resume.model"]
    final = str(third / "model" / "model000000001.model")
    calibration = tmp_path / "calibration.json"
    evaluated = run_cli(small_run(tiny_corpus, tmp_path / "eval", *ssl_flags(encoder, "joint"), *common,
                                  "--eval", "--initial_model", final, "--score_norm", "asnorm", "--norm_topk", "3",
                                  "--cohort_utterances", "2", "--fit_calibration", str(calibration))).stdout
    assert "EER" in evaluated and json.loads(calibration.read_text())
    package = tmp_path / "final.pkg"
    assert exportModel.main(["--initial_model", final, "--format", "package", "--output", str(package)]) == 0
    wav = f"{tiny_corpus['test_path']}/id00000/sess0/00000.wav"
    out = tmp_path / "one.npy"
    assert embedSpeaker.main(["embed", wav, "--output", str(out), "--initial_model", str(package)]) == 0
    assert embedSpeaker.main(["verify", wav, wav, "--initial_model", str(package)]) == 0
    onnx_file = tmp_path / "final.onnx"
    assert exportModel.main(["--initial_model", str(package), "--format", "onnx", "--output", str(onnx_file)]) == 0
    assert onnx_file.is_file()
