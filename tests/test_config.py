"""Flags and --config YAML: the original's names, types, defaults and override semantics."""
import pytest
import yaml

import arguments as entry
from runtime.errors import ConfigError

ORIGINAL_DEFAULTS = {  # fact sheet section 1.1 (HEAD data paths)
    "max_frames": 200, "eval_frames": 300, "batch_size": 200, "max_seg_per_spk": 500, "nDataLoaderThread": 5,
    "augment": False, "seed": 10, "test_interval": 10, "max_epoch": 500, "trainfunc": "", "optimizer": "adam",
    "scheduler": "steplr", "lr": 0.001, "lr_decay": 0.95, "weight_decay": 0, "hard_prob": 0.5, "hard_rank": 10,
    "margin": 0.1, "scale": 30, "nPerSpeaker": 1, "nClasses": 5994, "dcf_p_target": 0.05, "dcf_c_miss": 1,
    "dcf_c_fa": 1, "initial_model": "", "save_path": "exps/exp1", "train_list": "data/train_list.txt",
    "test_list": "data/veri_test.txt", "train_path": "data/voxceleb2/dev/wav",
    "test_path": "data/voxceleb1/test/wav", "musan_path": "data/musan_split",
    "rir_path": "data/RIRS_NOISES/simulated_rirs", "n_mels": 40, "log_input": False, "model": "",
    "encoder_type": "SAP", "nOut": 512, "sinc_stride": 10, "eval": False, "port": "8888",
    "distributed": False, "mixedprec": False, "config": None, "gpu_id": 0,
}


def test_every_original_flag_has_its_default_and_type():
    args = entry.parse_arguments([])
    for name, default in ORIGINAL_DEFAULTS.items():
        assert getattr(args, name) == default, name
        assert type(getattr(args, name)) is type(default), name
    assert args.model_save_path == "exps/exp1/model" and args.result_save_path == "exps/exp1/result"


@pytest.mark.parametrize("argv, expected", [
    (["--augment"], True), (["--augment", "True"], True), (["--augment", "false"], False),
    (["--augment", "False"], False), (["--augment", "0"], False), (["--augment=yes"], True), ([], False),
])
def test_boolean_flags(argv, expected):
    assert entry.parse_arguments(argv).augment is expected


def test_log_input_numeric_and_bad_boolean():
    assert entry.parse_arguments(["--log_input", "1"]).log_input is True
    with pytest.raises(ConfigError, match="argument --log_input: expected a boolean"):
        entry.parse_arguments(["--log_input", "maybe"])


def write_yaml(tmp_path, content: dict | str):
    path = tmp_path / "config.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


def test_yaml_wins_and_casts(tmp_path):
    path = write_yaml(tmp_path, "weight_decay: 5e-05\nlr_decay: 0.75\nbatch_size: 32\nmodel: ResNetSE34L\n"
                                "augment: true\neval: true\nmixedprec: false\nlog_input: True\n")
    with pytest.warns(UserWarning, match=r"--batch_size 64 from the command line is overridden by .*config.yaml "
                                         r"\(batch_size: 32\); using 32"):
        args = entry.parse_arguments(["--config", path, "--batch_size", "64", "--lr", "0.01"])
    assert args.weight_decay == 5e-05 and isinstance(args.weight_decay, float)
    assert args.batch_size == 32 and args.lr == 0.01 and args.lr_decay == 0.75
    assert args.augment is True and args.eval is True and args.mixedprec is False and args.log_input is True


def test_unknown_yaml_key_warns_with_key_and_file(tmp_path):
    path = write_yaml(tmp_path, {"nLcasses": 5994, "model": "ResNetSE34L"})
    with pytest.warns(UserWarning, match=r"Ignored unknown parameter 'nLcasses' in .*config.yaml"):
        args = entry.parse_arguments(["--config", path])
    assert args.nClasses == 5994 and args.model == "ResNetSE34L"


@pytest.mark.parametrize("content, fragment", [
    ({"batch_size": "many"}, "key 'batch_size' has value 'many', which is not a valid int"),
    ({"lr": "fast"}, "key 'lr' has value 'fast', which is not a valid float"),
    ({"augment": "sometimes"}, "key 'augment' has value 'sometimes', which is not a valid bool"),
])
def test_mistyped_yaml_value_is_an_error(tmp_path, content, fragment):
    path = write_yaml(tmp_path, content)
    with pytest.raises(ConfigError) as error:
        entry.parse_arguments(["--config", path])
    assert fragment in str(error.value) and path in str(error.value)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="Cannot read --config"):
        entry.parse_arguments(["--config", str(tmp_path / "absent.yaml")])
    with pytest.raises(ConfigError, match="not valid YAML"):
        entry.parse_arguments(["--config", write_yaml(tmp_path, "a: [1, 2\n")])


def test_resolved_config_round_trips(tmp_path):
    args = entry.parse_arguments(["--model", "ResNetSE34L", "--augment", "--weight_decay", "5e-5",
                                  "--save_path", str(tmp_path / "exp")])
    path = write_yaml(tmp_path, yaml.safe_dump(entry.resolved_config(args)))
    again = entry.parse_arguments(["--config", path])
    assert vars(again) == vars(args) | {"config": path}


def test_help_lists_new_flags(capsys):
    with pytest.raises(SystemExit):
        entry.parse_arguments(["--help"])
    text = capsys.readouterr().out
    for flag in ("--device", "--score_file", "--num_eval", "--scoring", "--easy_margin", "--skip_bad_audio"):
        assert flag in text


def test_yaml_list_of_trial_lists(tmp_path):
    path = write_yaml(tmp_path, {"test_list": ["data/veri_test2.txt", "data/list_test_hard2.txt"]})
    args = entry.parse_arguments(["--config", path])
    assert args.test_list == "data/veri_test2.txt,data/list_test_hard2.txt"
    with pytest.raises(ConfigError, match="key 'train_list' has value \\['a', 'b'\\], which is not a valid str"):
        entry.parse_arguments(["--config", write_yaml(tmp_path, {"train_list": ["a", "b"]})])


def test_overridden_flag_message_says_which_value_won(tmp_path):
    path = write_yaml(tmp_path, {"lr": 0.002})
    with pytest.warns(UserWarning) as caught:
        args = entry.parse_arguments(["--lr", "0.1", "--config", path])
    assert args.lr == 0.002
    assert [str(w.message) for w in caught] == [
        f"--lr 0.1 from the command line is overridden by {path} (lr: 0.002); using 0.002"]
