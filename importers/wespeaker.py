"""wespeaker releases: a folder with avg_model.pt (the averaged state dict) and the run's config.yaml, whose
`model`, `model_args` and `dataset_args` (fbank_args, or tfmel_args for ReDimNet2) decide our network and front
end."""
from __future__ import annotations

import os

from importers.redimnet import RULES as REDIMNET_RULES
from importers.release_files import ImportedRelease, ReleaseError, read_state_dict, read_yaml, require_file, setting
from importers.transfer import Rule
from models.StatsPooling import POOLING_CHOICES

# wespeaker's model name -> (our model, our options)
RESNETS = {name: (name, {}) for name in ("ResNet34", "ResNet152", "ResNet221", "ResNet293")}
ECAPAS = {f"ECAPA_TDNN{'_GLOB' if glob else ''}_c{channels}": ("ECAPA_TDNN", {"channels": channels,
                                                                             "global_context": glob})
          for glob in (True, False) for channels in (512, 1024)}
SIMAM_RESNETS = {f"SimAM_ResNet{depth}_ASP": (f"SimAM_ResNet{depth}", {}) for depth in (34, 100)}
REDIMNET2S = {f"ReDimNet2B{size}": (f"ReDimNet2B{size}", {}) for size in range(7)}
MODELS = {**RESNETS, **ECAPAS, "CAMPPlus": ("CAMPPlus", {}), **SIMAM_RESNETS, **REDIMNET2S}
# model_args each network takes, with the values our network requires where it has no option for them
MODEL_ARGS = {"ResNet": {"feat_dim", "embed_dim", "pooling_func", "two_emb_layer"},
              "ECAPA_TDNN": {"feat_dim", "embed_dim", "pooling_func", "emb_bn"},
              "CAMPPlus": {"feat_dim", "embed_dim", "pooling_func", "growth_rate", "bn_size", "init_channels",
                           "config_str"},
              "SimAM": {"in_planes", "embed_dim", "acoustic_dim", "dropout"},
              "ReDimNet2": {"feat_dim", "embed_dim", "pooling_func"}}
FIXED_ARGS = {"ECAPA_TDNN": {"pooling_func": "ASTP", "emb_bn": False}, "ReDimNet2": {"pooling_func": "ASTP"},
              "CAMPPlus": {"pooling_func": "TSTP", "growth_rate": 32, "bn_size": 4, "init_channels": 128,
                           "config_str": "batchnorm-relu"}}
WAVEFORM_SCALE = 32768.0  # wespeaker multiplies the waveform by 1 << 15 before its Kaldi filterbank
CLASSIFIER = "projection."
FRONT_END = "frontend."  # train.py's front-end module (tfmel): constant buffers, which our front end rebuilds
# tfmel_args our tfmel front end has fixed, with their value; spec-augment settings are for training only
TFMEL_FIXED = {"n_fft": 512, "win_length": 400, "hop_length": 160, "eps": 1e-8}
TFMEL_TRAINING = ("do_spec_aug", "freq_mask_width", "time_mask_width")
TFMEL_FOLLOWED = ("n_mels", "f_min", "f_max", "do_preemph", "norm_signal")
TFMEL_PREEMPHASIS = 0.97  # wespeaker's PreEmphasis coefficient when do_preemph

RESNET_RULES: list[Rule] = [
    (r"\.shortcut\.", ".downsample."),
    (r"^seg_1\.", "embedding."), (r"^seg_bn_1\.", "second_embedding.1."), (r"^seg_2\.", "second_embedding.2."),
    (r"^pool\.n_query\.", "pool.queries."),
    (r"\.heads_att_trans\.(\d+)\.att_0\.", r".heads.\1.0."), (r"\.heads_att_trans\.(\d+)\.att_1\.", r".heads.\1.2."),
]
ECAPA_RULES: list[Rule] = [
    (r"^layer1\.conv\.", "layer1.0."), (r"^layer1\.bn\.", "layer1.2."),
    (r"^layer([234])\.se_res2block\.", lambda match: f"blocks.{int(match.group(1)) - 2}.body."),
    (r"\.body\.([02])\.conv\.", r".body.\1.0."), (r"\.body\.([02])\.bn\.", r".body.\1.2."),
    (r"\.body\.1\.convs\.(\d+)\.", r".body.1.convs.\1.0."), (r"\.body\.1\.bns\.(\d+)\.", r".body.1.convs.\1.2."),
    (r"^conv\.", "aggregate."), (r"^linear\.", "embedding."),
]
CAMPPLUS_RULES: list[Rule] = [  # wespeaker's CAM++ keeps 3D-Speaker's names
    (r"\.shortcut\.", ".downsample."),
    (r"^xvector\.tdnn\.linear\.", "tdnn.0."), (r"^xvector\.tdnn\.nonlinear\.batchnorm\.", "tdnn.1.0."),
    (r"^xvector\.block(\d)\.tdnnd(\d+)\.",
     lambda match: f"blocks.{2 * (int(match.group(1)) - 1)}.{int(match.group(2)) - 1}."),
    (r"^(blocks\.\d+\.\d+)\.nonlinear1\.batchnorm\.", r"\1.0.0."), (r"^(blocks\.\d+\.\d+)\.linear1\.", r"\1.1."),
    (r"^(blocks\.\d+\.\d+)\.nonlinear2\.batchnorm\.", r"\1.2.0."),
    (r"\.cam_layer\.linear_local\.", ".3.local."), (r"\.cam_layer\.linear1\.", ".3.squeeze."),
    (r"\.cam_layer\.linear2\.", ".3.excite."),
    (r"^xvector\.transit(\d)\.nonlinear\.batchnorm\.", lambda match: f"blocks.{2 * int(match.group(1)) - 1}.0.0."),
    (r"^xvector\.transit(\d)\.linear\.", lambda match: f"blocks.{2 * int(match.group(1)) - 1}.1."),
    (r"^xvector\.out_nonlinear\.batchnorm\.", "blocks.6.0."),
    (r"^xvector\.dense\.linear\.", "embedding."), (r"^xvector\.dense\.nonlinear\.batchnorm\.", "embedding_bn."),
]
SIMAM_RULES: list[Rule] = [(r"^front\.", ""), (r"^pooling\.", "pool."), (r"^bottleneck\.", "embedding.")]
RULES = {"ResNet": RESNET_RULES, "ECAPA_TDNN": ECAPA_RULES, "CAMPPlus": CAMPPLUS_RULES, "SimAM": SIMAM_RULES,
         "ReDimNet2": REDIMNET_RULES}  # wespeaker's ReDimNet2 keeps the authors' names


def family(model: str) -> str:
    """ResNet, ECAPA_TDNN, CAMPPlus, SimAM or ReDimNet2."""
    for prefix in ("ResNet", "SimAM", "ReDimNet2"):
        if model.startswith(prefix):
            return prefix
    return model


def check_model_args(args: dict, kind: str, where: str) -> None:
    """Refuse model_args our network cannot follow, naming the key."""
    for key, value in args.items():
        if key not in MODEL_ARGS[kind]:
            raise ReleaseError(f"{where}: model_args '{key}' is not a setting of this framework's {kind} "
                               f"(it takes {', '.join(sorted(MODEL_ARGS[kind]))})")
        required = FIXED_ARGS.get(kind, {}).get(key, value)
        if value != required:
            raise ReleaseError(f"{where}: model_args '{key}' is {value!r}; this framework's {kind} has {required!r}")


def model_settings(config: dict, weights: dict, where: str) -> tuple[dict, str]:
    """Our model settings from config.yaml's model and model_args, and a name for the network."""
    name = setting(config, "model", where, str)
    if name not in MODELS:
        raise ReleaseError(f"{where}: model '{name}' is not available here; importable wespeaker models: "
                           f"{', '.join(MODELS)}")
    ours, options = MODELS[name]
    args = setting(config, "model_args", where, dict)
    kind = family(ours)
    check_model_args(args, kind, where)
    if kind == "SimAM":  # SimAM_ResNet*_ASP(in_planes=64, embed_dim=256, acoustic_dim=80, dropout=0)
        settings = {"model": ours, "n_mels": setting(args, "acoustic_dim", where + " model_args", int, 80,
                                                     required=False),
                    "nOut": setting(args, "embed_dim", where + " model_args", int, 256, required=False),
                    "m_channels": setting(args, "in_planes", where + " model_args", int, 64, required=False),
                    "pooling": "ASP"}
        return settings, f"{name} ({settings['nOut']}-d)"
    settings = {"model": ours, **options, "n_mels": setting(args, "feat_dim", where + " model_args", int),
                "nOut": setting(args, "embed_dim", where + " model_args", int)}
    if kind == "ResNet":
        pooling = setting(args, "pooling_func", where + " model_args", str, "TSTP", required=False)
        if pooling not in POOLING_CHOICES:
            raise ReleaseError(f"{where}: model_args pooling_func '{pooling}' is not available here "
                               f"(choices: {', '.join(POOLING_CHOICES)})")
        settings["pooling"] = pooling
        two_layers = setting(args, "two_emb_layer", where + " model_args", bool, None, required=False)
        settings["two_emb_layer"] = "seg_2.weight" in weights if two_layers is None else two_layers
    if kind == "CAMPPlus":
        settings["variance_floor"] = 1e-7  # wespeaker pools CAM++ with its TSTP (variance + 1e-7)
    return settings, f"{name} ({settings.get('pooling', args.get('pooling_func', ''))}, {settings['nOut']}-d)"


def tfmel_settings(dataset: dict, n_mels: int, where: str) -> dict:
    """Our tfmel front end as wespeaker's TFMelFrontend computes it from tfmel_args, on int16-scale audio."""
    rate = setting(dataset, "resample_rate", where, int, 16000, required=False)
    if rate != 16000:
        raise ReleaseError(f"{where}: resample_rate must be 16000 here, got {rate}")
    args = setting(dataset, "tfmel_args", where, dict, {}, required=False)
    where = where + ".tfmel_args"
    for key, value in args.items():
        if key in TFMEL_FIXED and value != TFMEL_FIXED[key]:
            raise ReleaseError(f"{where}: {key} must be {TFMEL_FIXED[key]} here, got {value!r}")
        if key not in (*TFMEL_FIXED, *TFMEL_TRAINING, *TFMEL_FOLLOWED):
            raise ReleaseError(f"{where}: '{key}' is not followed by this framework's tfmel front end (it takes "
                               f"{', '.join((*TFMEL_FOLLOWED, *TFMEL_FIXED, *TFMEL_TRAINING))})")
    mels = setting(args, "n_mels", where, int, 80, required=False)
    if mels != n_mels:
        raise ReleaseError(f"{where}: n_mels {mels} differs from model_args feat_dim {n_mels}")
    preemphasis = setting(args, "do_preemph", where, bool, True, required=False)
    return {"frontend": "tfmel", "waveform_scale": WAVEFORM_SCALE,
            "waveform_norm": setting(args, "norm_signal", where, bool, False, required=False),
            "preemphasis": TFMEL_PREEMPHASIS if preemphasis else 0.0,
            "mel_fmin": float(setting(args, "f_min", where, float, 20.0, required=False)),
            "mel_fmax": float(setting(args, "f_max", where, float, 7600.0, required=False))}


def front_end_settings(config: dict, n_mels: int, where: str) -> dict:
    """Our Kaldi front end as wespeaker computes it: fbank_args on int16-scale audio, Hamming window, CMN; or our
    tfmel front end for dataset_args frontend tfmel."""
    dataset = setting(config, "dataset_args", where, dict, {}, required=False)
    front_end = dataset.get("frontend", "fbank")
    if front_end == "tfmel":
        return tfmel_settings(dataset, n_mels, where + " dataset_args")
    if front_end != "fbank":
        raise ReleaseError(f"{where}: dataset_args frontend '{front_end}' (a self-supervised front end) is not "
                           "importable; only fbank and tfmel models are")
    fbank = setting(dataset, "fbank_args", where + " dataset_args", dict, {}, required=False)
    where = where + " dataset_args.fbank_args"
    mels = setting(fbank, "num_mel_bins", where, int, n_mels, required=False)
    if mels != n_mels:
        raise ReleaseError(f"{where}: num_mel_bins {mels} differs from model_args feat_dim {n_mels}")
    for key, expected in (("frame_length", 25), ("frame_shift", 10)):
        if setting(fbank, key, where, (int, float), expected, required=False) != expected:
            raise ReleaseError(f"{where}: {key} must be {expected} ms here, got {fbank[key]}")
    return {"frontend": "kaldi", "frontend_window": "hamming", "waveform_scale": WAVEFORM_SCALE,
            "dither": float(setting(fbank, "dither", where, float, 1.0, required=False)), "mean_norm": True}


def read(path: str) -> ImportedRelease:
    """Read a wespeaker release folder (avg_model.pt and config.yaml)."""
    if not os.path.isdir(path):
        raise ReleaseError(f"--checkpoint {path}: a wespeaker release is a folder with avg_model.pt and config.yaml")
    config_path = require_file(path, "config.yaml", "wespeaker")
    weights_path = require_file(path, "avg_model.pt", "wespeaker")
    config = read_yaml(config_path)
    weights = read_state_dict(weights_path)
    settings, network = model_settings(config, weights, config_path)
    settings.update(front_end_settings(config, settings["n_mels"], config_path))
    classifier = weights.get(CLASSIFIER + "weight")
    return ImportedRelease("wespeaker", network, settings, weights, RULES[family(settings["model"])],
                           (CLASSIFIER, FRONT_END), [config_path, weights_path],
                           None if classifier is None else int(classifier.shape[0]))
