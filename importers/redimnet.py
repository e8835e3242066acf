"""ReDimNet releases of its authors (IDRnD/ReDimNet on torch.hub, e.g. b2-vox2-ft_lm.pt): one file holding
{"model_config": the network's constructor arguments, "state_dict": its tensors}. The stage table decides which of
our sizes it is; the front end is the authors' MelBanks (pre-emphasis 0.97, 20-7600 Hz mel bands, log, mean
normalisation), our logmel front end with those options."""
from __future__ import annotations

from importers.release_files import ImportedRelease, ReleaseError, read_checkpoint, read_state_dict, setting
from importers.transfer import Rule
from models.ReDimNetFamily import SIZES

BLOCK_KINDS = {"basic_resnet": "resnet", "basic_resnet_fwse": "resnet_fwse", "convnext_like": "convnext"}
# the constructor arguments our ReDimNet follows, with the value it requires
FIXED = {"block_1d_type": "conv+att", "out_channels": None, "pooling_func": "ASTP", "hop_length": 160,
         "feat_type": "pt", "tf_optimized_arch": False, "return_all_outputs": False, "num_classes": None}
SPEC_FIXED = {"norm_signal": False, "do_preemph": True, "spec_norm": "mn"}
# spec-augment settings: training only
SPEC_IGNORED = ("do_spec_aug", "freq_mask_width", "time_mask_width", "freq_start_bin", "num_apply_spec_aug")
FRONT_END = {"frontend": "logmel", "preemphasis": 0.97, "mel_fmin": 20.0, "mel_fmax": 7600.0}
RULES: list[Rule] = [(r"\.conv_block\.", ".")]
IGNORED = ("spec.",)  # the mel filterbank's constant buffers: our front end builds its own from the options


def stage_table(config: dict, where: str) -> list[tuple]:
    """The stages as our (stride, blocks, expansion, reduction) tuples."""
    stages = setting(config, "stages_setup", where, (list, tuple))
    try:
        return [(int(stride), int(blocks), int(expansion), None if reduction is None else int(reduction))
                for stride, blocks, expansion, _kernels, reduction in stages]
    except (TypeError, ValueError):
        raise ReleaseError(f"{where}: stages_setup is not a list of (stride, blocks, expansion, kernel sizes, "
                           f"reduction) entries: {stages!r}") from None


def matching_size(config: dict, where: str) -> str:
    """Our size whose channels, block kind, group divisor and stages are the release's."""
    block = setting(config, "block_2d_type", where, str)
    if block not in BLOCK_KINDS:
        raise ReleaseError(f"{where}: block_2d_type '{block}' is not a ReDimNet block here (choices: "
                           f"{', '.join(BLOCK_KINDS)})")
    found = (setting(config, "C", where, int), BLOCK_KINDS[block], setting(config, "group_divisor", where, int),
             stage_table(config, where))
    for size, (_, *table) in SIZES.items():
        if tuple(table) == found:
            return size
    raise ReleaseError(f"{where}: this C, block_2d_type, group_divisor and stages_setup are none of the sizes "
                       f"B0-B6 (models/ReDimNetFamily.py SIZES)")


def check_fixed(config: dict, fixed: dict, where: str, network: str = "ReDimNet") -> None:
    """Refuse constructor arguments whose value our network cannot follow, naming the key."""
    for key, required in fixed.items():
        if key in config and config[key] != required:
            raise ReleaseError(f"{where}: {key} is {config[key]!r}; this framework's {network} has {required!r}")


def read_hub_release(path: str, network: str, fixed: dict) -> tuple[dict, dict, str]:
    """(file content, model_config, where) of an authors' torch.hub release of `network`, its constructor
    arguments and MelBanks settings checked against `fixed` and SPEC_FIXED."""
    content = read_checkpoint(path)
    if not isinstance(content, dict) or not isinstance(content.get("model_config"), dict):
        raise ReleaseError(f"{path} is not a {network} release: it has no model_config (the authors' files hold "
                           "model_config and state_dict)")
    config, where = content["model_config"], f"{path} model_config"
    check_fixed(config, fixed, where, network)
    spec = setting(config, "spec_params", where, dict, {}, required=False)
    check_fixed(spec, SPEC_FIXED, where + ".spec_params", network)
    unknown = sorted(set(spec) - set(SPEC_FIXED) - set(SPEC_IGNORED))
    if unknown:
        raise ReleaseError(f"{where}.spec_params: {', '.join(unknown)} not followed by this framework's front end")
    return content, config, where


def hub_weights(path: str, content: dict) -> dict:
    """The tensors of a torch.hub release's state_dict."""
    return read_state_dict(path, content["state_dict"] if isinstance(content.get("state_dict"), dict) else None)


def read(path: str) -> ImportedRelease:
    """Read an authors' ReDimNet release (model_config and state_dict in one file)."""
    content, config, where = read_hub_release(path, "ReDimNet", FIXED)
    size = matching_size(config, where)
    settings = {"model": f"ReDimNet{size}", "n_mels": setting(config, "F", where, int),
                "nOut": setting(config, "embed_dim", where, int, 192, required=False),
                "global_context": setting(config, "global_context_att", where, bool, False, required=False),
                "emb_bn": setting(config, "emb_bn", where, bool, False, required=False), **FRONT_END}
    return ImportedRelease("redimnet", f"ReDimNet-{size} ({settings['nOut']}-d)", settings, hub_weights(path, content),
                           RULES, IGNORED + ("cls_head.",), [path])
