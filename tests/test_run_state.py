"""What a training step and a resume depend on: precision, gradient scaler, random states, GPU choice."""
import random

import numpy as np
import pytest
import torch

from runtime import device as placement
from runtime import training_state
from runtime.errors import ConfigError
from SpeakerNet import SpeakerNet, WrappedModel
from training.parameters import batchnorm_buffers
from training.trainer import ModelTrainer

SAMPLES = 40 * 160 + 240


def make_trainer(precision=None, mixedprec=False, seed=0) -> ModelTrainer:
    torch.manual_seed(seed)
    net = SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="softmax", nPerSpeaker=1, nOut=16, nClasses=4,
                     n_mels=40, log_input=True, encoder_type="SAP")
    return ModelTrainer(WrappedModel(net), optimizer="adam", scheduler="steplr", mixedprec=mixedprec,
                        device=torch.device("cpu"), precision=precision, lr=0.01, weight_decay=0, test_interval=1,
                        lr_decay=1.0)


def batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, SAMPLES, generator=generator), torch.arange(4)  # [speakers, per_speaker, samples]


# ---------------------------------------------------------------- precision

@pytest.mark.parametrize("text, expected", [
    ("flags : fpu sse avx2 fma", False), ("flags : fpu avx512f avx512_bf16 avx512vl", True),
    ("flags : fpu amx_bf16 amx_tile", True), ("flags : fpu avx512_bf16x", False), ("", False),
])
def test_fast_bfloat16_is_read_from_cpu_flags(text, expected):
    assert placement.cpu_has_fast_bfloat16(text) is expected


def test_autocast_dtype_per_device(monkeypatch):
    assert placement.autocast_dtype(torch.device("cuda"), True) == torch.float16
    assert placement.autocast_dtype(torch.device("cuda"), False) is None
    monkeypatch.setattr(placement, "cpu_has_fast_bfloat16", lambda: True)
    assert placement.autocast_dtype(torch.device("cpu"), True) == torch.bfloat16
    monkeypatch.setattr(placement, "cpu_has_fast_bfloat16", lambda: False)
    assert placement.autocast_dtype(torch.device("cpu"), True) is None


@pytest.mark.skipif(not placement.cpu_has_fast_bfloat16(), reason="this CPU has no fast bfloat16 units")
def test_mixedprec_on_a_bfloat16_cpu_trains_in_bfloat16():
    trainer = make_trainer(mixedprec=True)
    assert trainer.autocast_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    seen = []
    conv = trainer.__model__.module.__S__.layer1[0].conv1
    conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    before = conv.weight.detach().clone()
    loss, _, finite = trainer.train_step(*batch())
    assert finite and torch.isfinite(loss) and seen == [torch.bfloat16]
    assert conv.weight.dtype == torch.float32 and not torch.allclose(before, conv.weight)


def test_float16_step_uses_the_gradient_scaler():
    trainer = make_trainer(precision=torch.float16)
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 65536.0
    weight = trainer.__model__.module.__S__.fc.weight
    before = weight.detach().clone()
    loss, _, finite = trainer.train_step(*batch())
    assert finite and torch.isfinite(loss) and not torch.allclose(before, weight)


def test_overflowing_float16_step_is_skipped_and_lowers_the_scale():
    trainer = make_trainer(precision=torch.float16)
    net = trainer.__model__.module
    trainer.train_step(*batch())
    weights = {name: value.detach().clone() for name, value in net.state_dict().items()}
    scale = trainer.scaler.get_scale()
    data, label = batch(2)
    data[0, 0, :100] = float("inf")  # an infinite sample poisons the forward pass
    _, _, finite = trainer.train_step(data, label)
    assert not finite and trainer.scaler.get_scale() == scale / 2
    for name, value in net.state_dict().items():  # weights and BatchNorm statistics as before the step
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=name)


def test_skipped_float32_step_restores_batchnorm_statistics():
    trainer = make_trainer()
    net = trainer.__model__.module
    trainer.train_step(*batch())
    statistics = [buffer.clone() for buffer in batchnorm_buffers(net)]
    data, label = batch(2)
    data[1, 0, :50] = float("nan")
    _, _, finite = trainer.train_step(data, label)
    assert not finite and len(statistics) > 10
    for saved, buffer in zip(statistics, batchnorm_buffers(net)):
        assert torch.equal(saved, buffer)
    trainer.train_step(*batch(3))
    assert any(not torch.equal(saved, buffer) for saved, buffer in zip(statistics, batchnorm_buffers(net)))


# ---------------------------------------------------------------- gradient scaler state on resume

def payload_of(trainer: ModelTrainer, epoch: int = 1) -> dict:
    """What trainer.saveParameters writes after `epoch`."""
    return training_state.training_payload(trainer.recoverables(), epoch, None, trainer.record)


def saved_payload(trainer: ModelTrainer) -> dict:
    trainer.train_step(*batch())
    return payload_of(trainer)


def test_float16_resume_restores_the_scaler():
    source = make_trainer(precision=torch.float16)
    source.train_step(*batch())
    source.scaler.update(1024.0)
    target = make_trainer(precision=torch.float16, seed=5)
    target.resume("x.model", payload_of(source))
    assert target.scaler.get_scale() == source.scaler.get_scale() == 1024.0


def test_resume_with_mixedprec_from_a_float32_checkpoint(capsys):
    target = make_trainer(precision=torch.float16)
    point = target.resume("plain.model", saved_payload(make_trainer()))
    assert point.first_epoch == 2 and target.scaler.get_scale() == 65536.0
    assert "plain.model was saved without float16 --mixedprec: the gradient scaler starts afresh" in \
        capsys.readouterr().out


def test_resume_without_mixedprec_from_a_float16_checkpoint(capsys):
    target = make_trainer()
    point = target.resume("half.model", saved_payload(make_trainer(precision=torch.float16)))
    assert point.first_epoch == 2 and not target.scaler.is_enabled()
    assert "its gradient scaler state is not used" in capsys.readouterr().out


def test_resume_of_a_checkpoint_saved_before_scalers_existed():
    payload = saved_payload(make_trainer())
    del payload["scaler_state_dict"]
    assert make_trainer(precision=torch.float16).resume("old.model", payload).first_epoch == 2


# ---------------------------------------------------------------- random states

def test_rng_states_round_trip():
    saved = training_state.rng_states()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    training_state.restore_rng_states(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_cuda_states_of_more_gpus_than_visible(capsys):
    states = [torch.full((4,), index, dtype=torch.uint8) for index in range(4)]
    kept = training_state.cuda_states_to_restore(states, visible=2)
    assert [state[0].item() for state in kept] == [0, 1]
    assert "random states of 4 GPUs and 2 are visible" in capsys.readouterr().err
    assert [state[0].item() for state in training_state.cuda_states_to_restore(states[:1], visible=8)] == [0]
    assert training_state.cuda_states_to_restore(states, visible=0) == []


def test_restore_sets_each_visible_gpu_once(monkeypatch):
    calls = []
    saved = training_state.rng_states()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: calls.append((index, state[0].item())))
    saved["cuda"] = [torch.full((4,), 7, dtype=torch.uint8), torch.full((4,), 9, dtype=torch.uint8)]
    training_state.restore_rng_states(saved)  # saved from 2 GPUs, restored where 1 is visible: no IndexError
    assert calls == [(0, 7)]


def test_each_rank_restores_its_own_states(capsys):
    content = {"rng_state": "rank0", "rank_rng_states": ["rank0", "rank1", "rank2"]}
    assert [training_state.own_rng_states(content, rank, 3) for rank in range(3)] == ["rank0", "rank1", "rank2"]
    assert capsys.readouterr().err == ""
    assert training_state.own_rng_states(content, 1, 2) == "rank1"
    assert "random states of 3 processes and this run has 2" in capsys.readouterr().err
    assert training_state.own_rng_states({"rng_state": "only"}, 0, 2) == "only"
    assert training_state.own_rng_states({"rng_state": "only"}, 1, 2) is None


def test_a_single_process_checkpoint_has_no_per_rank_states():
    payload = payload_of(make_trainer(), epoch=0)
    assert "rank_rng_states" not in payload and set(payload["rng_state"]) >= {"python", "torch", "numpy"}


# ---------------------------------------------------------------- which GPUs a run uses

@pytest.mark.parametrize("device, gpu_id, distributed, visible, expected", [
    ("cpu", 3, False, None, (None, "cpu")),
    ("auto", 0, False, None, ("0", "auto")),
    ("cuda", 2, False, None, ("2", "cuda")),
    ("cuda:1", 0, False, None, ("1", "cuda")),  # the original forced CUDA_VISIBLE_DEVICES=0, then cuda:1 failed
    ("cuda:1", 1, False, None, ("1", "cuda")),
    ("cuda:1", 0, False, "4,5", (None, "cuda:1")),  # the user's CUDA_VISIBLE_DEVICES stays
    ("cuda", 0, True, None, (None, "cuda")),
    ("auto", 5, True, "0,1", (None, "auto")),
])
def test_gpu_choice(device, gpu_id, distributed, visible, expected):
    assert placement.choose_gpus(device, gpu_id, distributed, visible) == expected


@pytest.mark.parametrize("device, gpu_id, distributed, message", [
    ("cuda:1", 0, True, "picks one GPU, but --distributed"),
    ("cuda:1", 2, False, "name different GPUs"),
    ("gpu", 0, False, "must be auto, cpu, cuda or cuda:N"),
    ("cuda:x", 0, False, "must be auto, cpu, cuda or cuda:N"),
])
def test_gpu_choice_mistakes(device, gpu_id, distributed, message):
    with pytest.raises(ConfigError, match=message):
        placement.choose_gpus(device, gpu_id, distributed, None)


# ---------------------------------------------------------------- --initial_model fit

def test_initial_model_with_another_loss_head_loads_and_reports(tmp_path, capsys):
    source = make_trainer()
    source.__model__.module.__L__.fc = torch.nn.Linear(16, 6)  # trained with 6 speakers
    path = tmp_path / "six_speakers.model"
    torch.save(source.__model__.module.state_dict(), path)
    target = make_trainer(seed=3)
    report = target.loadParameters(str(path))
    assert [key for key, _, _ in report.mismatched] == ["__L__.fc.weight", "__L__.fc.bias"]
    assert not report.missing_in("__S__.") and "shape differs, ignored (2)" in capsys.readouterr().out
    for key, value in source.__model__.module.__S__.state_dict().items():
        assert torch.equal(target.__model__.module.__S__.state_dict()[key], value), key


def test_initial_model_that_fills_almost_nothing_is_refused(tmp_path):
    from runtime.checkpoint_files import CheckpointError
    weights = make_trainer().__model__.module.state_dict()
    path = tmp_path / "other.model"
    torch.save({key: value for key, value in weights.items() if key.startswith("__S__.layer1.0.")}, path)
    with pytest.raises(CheckpointError, match=r"fills only \d+ of the \d+ tensors of the embedding model"):
        make_trainer().loadParameters(str(path))
