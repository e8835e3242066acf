"""Self-supervised front ends (--frontend ssl) on tiny random encoders of each kind: the hidden states are
transformers' own, the layer uses, the frozen / joint / LoRA stages, checkpoints and export."""
import numpy as np
import pytest
import torch
from ssl_encoders import KINDS, write_tiny_encoder

from deployment.export import export_model
from models.Fbanks import build_frontend
from models.SSLEncoder import EncoderSourceError, W2VBertFeatures
from runtime import checkpoint_files
from SpeakerNet import SpeakerNet, WrappedModel
from training.trainer import ModelTrainer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def encoders(tmp_path_factory) -> dict[str, str]:
    """A folder (config.json + weights) of a tiny random encoder of each kind."""
    root = tmp_path_factory.mktemp("encoders")
    return {kind: write_tiny_encoder(kind, root / kind, seed=index) for index, kind in enumerate(KINDS)}


def waveforms(batch: int = 2, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, int(16000 * seconds), generator=torch.Generator().manual_seed(seed))


def speaker_net(source: str, model: str = "ECAPA_TDNN", **options) -> SpeakerNet:
    torch.manual_seed(0)
    sizes = {"ECAPA_TDNN": {"channels": 16}, "MHFA": {"mhfa_heads": 4, "mhfa_compression": 8},
             "SSL_MFA": {"mfa_adapter_dim": 8}, "ResNet34": {"m_channels": 4}, "CAMPPlus": {}}[model]
    return SpeakerNet(model=model, trainfunc="softmax", nClasses=4, nOut=16, frontend="ssl", ssl_source=source,
                      **sizes, **options)


def trainer_of(net: SpeakerNet, **flags) -> ModelTrainer:
    settings = {"lr": 0.01, "weight_decay": 1e-3, "test_interval": 1, "lr_decay": 0.9, "max_epoch": 1, **flags}
    return ModelTrainer(WrappedModel(net), "adam", "steplr", False, torch.device("cpu"), **settings)


def train_steps(trainer: ModelTrainer, steps: int = 3) -> None:
    trainer.train_mode()
    for step in range(steps):
        data = waveforms(4, seed=step).reshape(4, 1, -1)
        assert trainer.train_step(data, torch.arange(4))[2], "a non-finite step"


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


# ---------------------------------------------------------------- the encoder is transformers' own

@pytest.mark.parametrize("kind", KINDS)
def test_hidden_states_equal_the_transformers_forward(encoders, kind):
    ours = build_frontend(0, "ssl", stacked=True, ssl_source=encoders[kind], mean_norm=False).eval()
    theirs = transformers.AutoModel.from_pretrained(encoders[kind]).eval()
    batch = waveforms(2, 1.3)
    if kind == "wav2vec2-bert":
        extractor = transformers.SeamlessM4TFeatureExtractor()
        inputs = extractor(list(batch.numpy()), sampling_rate=16000, return_tensors="pt")["input_features"]
    else:
        inputs = batch
    with torch.no_grad():
        expected = torch.stack(theirs(inputs, output_hidden_states=True).hidden_states, dim=1).transpose(2, 3)
        stacked = ours(batch)
    assert stacked.shape == (2, theirs.config.num_hidden_layers + 1, 32, ours.frames(batch.shape[1]))
    torch.testing.assert_close(stacked, expected, rtol=1e-4, atol=1e-4)


def test_normalised_waveforms_when_the_source_asks_for_them(encoders, tmp_path):
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)
    folder = tmp_path / "hubert"
    transformers.AutoModel.from_pretrained(encoders["hubert"]).save_pretrained(folder)
    extractor.save_pretrained(folder)
    ours = build_frontend(0, "ssl", stacked=True, ssl_source=str(folder), mean_norm=False).eval()
    assert ours.waveform_norm and not build_frontend(0, "ssl", ssl_source=encoders["hubert"]).waveform_norm
    batch = waveforms(2, 1.2, seed=4) + 0.05  # a DC offset and a scale the normalisation removes
    inputs = extractor(list(batch.numpy()), sampling_rate=16000, return_tensors="pt")["input_values"]
    theirs = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = torch.stack(theirs(inputs, output_hidden_states=True).hidden_states, dim=1).transpose(2, 3)
        torch.testing.assert_close(ours(batch), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seconds", [1.0, 1.01])  # an even and an odd number of fbank frames
def test_w2v_bert_features_equal_the_seamless_feature_extractor(seconds):
    batch = waveforms(2, seconds, seed=3)
    expected = transformers.SeamlessM4TFeatureExtractor()(list(batch.numpy()), sampling_rate=16000,
                                                          return_tensors="pt")["input_features"]
    ours = W2VBertFeatures()(batch)
    assert ours.shape == expected.shape and ours.shape[-1] == 160
    torch.testing.assert_close(ours, expected.float(), rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_frame_count_matches_the_encoder_output(encoders, kind):
    front_end = build_frontend(0, "ssl", ssl_source=encoders[kind], ssl_layers="last").eval()
    for samples in (front_end.min_samples(1), front_end.min_samples(3), 16000, 16123):
        with torch.no_grad():
            assert front_end(waveforms(1, samples / 16000)).shape[-1] == front_end.frames(samples)
    assert front_end.frames(front_end.min_samples(3) - 1) < 3


# ---------------------------------------------------------------- layer use and back ends

def test_layer_modes_give_the_back_end_its_width(encoders):
    batch = waveforms(2)
    with torch.no_grad():
        stacked = build_frontend(0, "ssl", stacked=True, ssl_source=encoders["hubert"], mean_norm=False).eval()(batch)
        for mode, width in (("weighted", 32), ("concat", 96), ("last", 32)):
            front_end = build_frontend(0, "ssl", ssl_source=encoders["hubert"], ssl_layers=mode,
                                       mean_norm=False).eval()
            feats = front_end(batch)
            assert front_end.feature_dim == width and feats.shape == (2, width, stacked.shape[-1])
            expected = {"weighted": stacked.mean(dim=1), "concat": stacked.flatten(1, 2), "last": stacked[:, -1]}
            torch.testing.assert_close(feats, expected[mode])  # equal weights at first: the plain mean
        normalised = build_frontend(0, "ssl", ssl_source=encoders["hubert"]).eval()(batch)
        assert normalised.mean(dim=-1).abs().max() < 1e-5


@pytest.mark.parametrize("model", ["ECAPA_TDNN", "ResNet34", "CAMPPlus", "MHFA", "SSL_MFA"])
def test_back_ends_train_on_each_encoder_kind(encoders, model):
    for kind in KINDS:
        net = speaker_net(encoders[kind], model)
        loss, _ = net(waveforms(4).reshape(4, 1, -1), torch.arange(4))
        loss.backward()
        assert torch.isfinite(loss) and net(waveforms(3)).shape == (3, 16)
        layers = [parameter for name, parameter in net.__S__.fbank.encoder.named_parameters() if ".layers." in name]
        assert layers and all(parameter.grad is not None for parameter in layers)


# ---------------------------------------------------------------- the stages

@pytest.mark.parametrize("kind", KINDS)
def test_frozen_encoder_stays_bit_identical_while_the_layer_weights_and_back_end_learn(encoders, kind):
    net = speaker_net(encoders[kind], ssl_frozen=True)
    encoder, before = net.__S__.fbank.encoder, snapshot(net)
    train_steps(trainer_of(net))
    after = snapshot(net)
    assert not changed(snapshot(encoder), {name[len("__S__.fbank.encoder."):]: tensor for name, tensor in
                                           before.items() if name.startswith("__S__.fbank.encoder.")})
    assert "__S__.fbank.layer_weights" in changed(before, after)
    assert {"__S__.layer1.0.weight", "__L__.fc.weight"} <= changed(before, after)
    assert not encoder.training, "a frozen encoder runs without dropout"


LORA_TARGETS = {"wavlm": (".intermediate_dense", ".output_dense"), "wav2vec2-bert": (".linear_q", ".linear_v")}


@pytest.mark.parametrize("kind", KINDS)
def test_lora_steps_change_only_adapters_and_back_end(encoders, kind):
    net = speaker_net(encoders[kind], lora_rank=4)
    before = snapshot(net)
    train_steps(trainer_of(net))
    moved = changed(before, snapshot(net))
    in_encoder = {name for name in moved if name.startswith("__S__.fbank.encoder.")}
    assert in_encoder and all(".lora_A." in name or ".lora_B." in name for name in in_encoder)
    adapted = {name.split(".lora_")[0] for name in in_encoder}
    assert adapted == {name.split(".lora_A.")[0] for name in before if ".lora_A." in name}  # every adapter learns
    assert all(name.endswith(LORA_TARGETS.get(kind, (".q_proj", ".v_proj"))) for name in adapted)
    assert {"__S__.fbank.layer_weights", "__S__.layer1.0.weight"} <= moved


def test_lora_targets_the_encoder_never_calls_are_refused(encoders):
    with pytest.raises(ValueError, match=r"--lora_targets q_proj,v_proj: the wavlm encoder never calls .*q_proj.*"
                                         r"e\.g\. intermediate_dense,output_dense"):
        speaker_net(encoders["wavlm"], lora_rank=2, lora_targets="q_proj,v_proj")
    with pytest.raises(ValueError, match=r"--lora_targets no_such_layer"):
        speaker_net(encoders["hubert"], lora_rank=2, lora_targets="no_such_layer")


def test_encoder_learning_rate_factor_and_layer_decay(encoders):
    net = speaker_net(encoders["wav2vec2"])
    trainer = trainer_of(net, encoder_lr_factor=0.1, layer_decay=0.5)
    groups = trainer.__optimizer__.param_groups
    assert [group["lr"] for group in groups] == pytest.approx([0.01 * 0.1 * 0.25, 0.01 * 0.1 * 0.5, 0.01 * 0.1,
                                                               0.01, 0.01])
    named = {id(parameter): name for name, parameter in net.named_parameters()}
    depth_one = {named[id(parameter)] for parameter in groups[1]["params"]}
    assert depth_one and all(name.startswith("__S__.fbank.encoder.encoder.layers.0.") for name in depth_one)
    top = {named[id(parameter)] for parameter in groups[2]["params"]}
    assert "__S__.fbank.encoder.encoder.layer_norm.weight" in top  # the final layer norm of a stable-norm encoder
    assert {named[id(parameter)] for parameter in groups[-1]["params"]} == {"__L__.fc.weight", "__L__.fc.bias"}
    assert "0.01 for the embedding model" in trainer.learning_rates() and "--layer_decay 0.5" in trainer.learning_rates()
    train_steps(trainer, 1)


def test_gradient_checkpointing_recomputes_the_layers_and_gives_the_same_gradients(encoders):
    grads, calls = [], []
    for checkpointing in (False, True):
        net = speaker_net(encoders["hubert"], gradient_checkpointing=checkpointing).train()
        layer_calls = []
        first_layer = net.__S__.fbank.encoder.encoder.layers[0]
        first_layer.feed_forward.register_forward_hook(lambda *_, seen=layer_calls: seen.append(1))
        torch.manual_seed(5)  # the same dropout masks; checkpointing replays them in the recomputation
        net(waveforms(4).reshape(4, 1, -1), torch.arange(4))[0].backward()
        grads.append({name: parameter.grad for name, parameter in net.named_parameters()})
        calls.append(len(layer_calls))
    assert calls == [1, 2]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_bfloat16_autocast_training_step(encoders):
    net = speaker_net(encoders["wavlm"], lora_rank=2)
    trainer = trainer_of(net)
    trainer.autocast_dtype = torch.bfloat16
    before = snapshot(net)
    train_steps(trainer, 1)
    assert "__S__.layer1.0.weight" in changed(before, snapshot(net))


# ---------------------------------------------------------------- checkpoints between stages

def embeddings(net: SpeakerNet, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(batch)


def test_lora_adapters_merge_into_a_model_without_them(encoders):
    adapted = speaker_net(encoders["hubert"], lora_rank=4, lora_alpha=16.0)
    train_steps(trainer_of(adapted))
    batch = waveforms(2, seed=9)
    plain = speaker_net(encoders["hubert"])
    report = checkpoint_files.load_weights(plain, snapshot(adapted))
    assert not report.missing and not report.unexpected and not report.mismatched
    torch.testing.assert_close(embeddings(plain, batch), embeddings(adapted, batch), rtol=1e-4, atol=1e-5)
    again = speaker_net(encoders["hubert"], lora_rank=2)  # plain weights become the base of new adapters
    report = checkpoint_files.load_weights(again, snapshot(plain))
    assert not report.unexpected and all(".lora_" in name for name in report.missing)
    torch.testing.assert_close(embeddings(again, batch), embeddings(plain, batch), rtol=1e-5, atol=1e-6)


def test_changed_encoder_factor_is_refused_at_resume(encoders, tmp_path):
    trainer = trainer_of(speaker_net(encoders["wavlm"]), encoder_lr_factor=0.1)
    trainer.saveParameters(str(tmp_path / "state.model"), 1)
    other = trainer_of(speaker_net(encoders["wavlm"]), encoder_lr_factor=0.2)
    content = checkpoint_files.read_checkpoint(str(tmp_path / "state.model"))
    with pytest.raises(checkpoint_files.CheckpointError, match=r"trained with --encoder_lr_factor 0.1; continue"):
        other.resume(str(tmp_path / "state.model"), content)


# ---------------------------------------------------------------- export and errors

@pytest.mark.integration
@pytest.mark.parametrize("model", ["ECAPA_TDNN", "MHFA", "SSL_MFA"])
@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_export_parity(encoders, model, kind, tmp_path):
    for encoder_kind in ("wavlm", "wav2vec2-bert"):
        net = speaker_net(encoders[encoder_kind], model, lora_rank=2).eval()
        settings = {"model": model, "frontend": "ssl", "ssl_source": encoders[encoder_kind], "lora_rank": 2}
        parity = export_model(net, settings, kind, str(tmp_path / f"{encoder_kind}.{kind}"),
                              seconds=(1.0, 1.3, 1.1))
        assert parity.clips == 4 and parity.min_cosine > 0.9999 and parity.max_abs_diff < 1e-3


def test_bad_sources_and_options_name_the_flag(encoders, tmp_path):
    with pytest.raises(EncoderSourceError, match=r"--frontend ssl needs --ssl_source"):
        build_frontend(0, "ssl")
    with pytest.raises(EncoderSourceError, match=rf"--ssl_source {tmp_path}/missing: no such folder"):
        build_frontend(0, "ssl", ssl_source=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderSourceError, match=rf"--ssl_source {tmp_path}/empty: cannot read the encoder's config"):
        build_frontend(0, "ssl", ssl_source=str(tmp_path / "empty"))
    transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                            intermediate_size=8).save_pretrained(tmp_path / "bert")
    with pytest.raises(EncoderSourceError, match=r"is a 'bert' model; the ssl front end takes wavlm, hubert"):
        build_frontend(0, "ssl", ssl_source=str(tmp_path / "bert"))
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text((tmp_path / "bert" / "config.json").read_text()
                                                          .replace('"bert"', '"hubert"'))
    with pytest.raises(EncoderSourceError, match=r"cannot read the encoder's weights .* --ssl_init random"):
        build_frontend(0, "ssl", ssl_source=str(tmp_path / "config_only"))
    with pytest.raises(ValueError, match=r"--ssl_layers 'sum' is not an option; choose weighted, concat, last"):
        build_frontend(0, "ssl", ssl_source=encoders["hubert"], ssl_layers="sum")
    with pytest.raises(ValueError, match=r"--frontend logmel: this back end pools the layers"):
        SpeakerNet(model="MHFA", trainfunc="softmax", nClasses=4, nOut=8)
    with pytest.raises(ValueError, match=r"--ssl_layers does not apply to this back end"):
        speaker_net(encoders["hubert"], "MHFA", ssl_layers="concat")
    with pytest.raises(ValueError, match=r"--lora_rank does not apply to --frontend kaldi"):
        build_frontend(80, "kaldi", lora_rank=4)


def test_random_init_reads_config_json_alone(encoders, tmp_path):
    folder = tmp_path / "config_only"
    folder.mkdir()
    (folder / "config.json").write_text(open(f"{encoders['wavlm']}/config.json").read())
    front_end = build_frontend(0, "ssl", ssl_source=str(folder), ssl_init="random")
    assert front_end.kind == "wavlm" and np.isfinite(front_end(waveforms(1)).detach().numpy()).all()
