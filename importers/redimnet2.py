"""ReDimNet2 releases of its authors (PalabraAI/redimnet2 on torch.hub, e.g. b6-vox2-lm.pt): one file holding
{"model_config": ReDimNet2Wrap's constructor arguments, "state_dict": its tensors}, as ReDimNet's releases. The
channel count, head and stage table decide which of our sizes it is; the front end is ReDimNet's MelBanks."""
from __future__ import annotations

from importers.redimnet import FRONT_END, IGNORED, RULES, hub_weights, read_hub_release
from importers.release_files import ImportedRelease, ReleaseError, setting
from models.ReDimNet2Family import SIZES

NETWORK = "ReDimNet2"
# the constructor arguments our ReDimNet2 follows, with the value it requires (the 2-D blocks ignore kernel sizes)
FIXED = {"causal": "none", "spec_in_channels": 1, "block_1d_type": "conv+att", "block_2d_type": "basic_resnet",
         "group_divisor": 1, "compress_tconvs": True, "use_freq_pos_enc": False, "fm_weigthing_type": "NC",
         "pooling_func": "ASTP", "hop_length": 160, "feat_type": "pt", "pad_right_samples": None,
         "before_pool_offset": None, "return_all_outputs": False, "num_classes": None}


def stage_table(config: dict, where: str) -> list[tuple]:
    """The stages as our (frequency stride, time stride, blocks, expansion, reduction) tuples."""
    stages = setting(config, "stages_setup", where, (list, tuple))
    try:
        return [(int(strides[0]), int(strides[1]), int(blocks), float(expansion), int(reduction))
                for strides, blocks, expansion, _kernels, reduction in stages]
    except (TypeError, ValueError, IndexError):
        raise ReleaseError(f"{where}: stages_setup is not a list of ((frequency stride, time stride), blocks, "
                           f"expansion, kernel sizes, reduction) entries: {stages!r}") from None


def matching_size(config: dict, where: str) -> str:
    """Our size whose channels, head and stages are the release's."""
    head = setting(config, "out_channels", where, (int, type(None)), None, required=False)
    found = (setting(config, "C", where, int), head,
             setting(config, "return_2d_output", where, bool, False, required=False), stage_table(config, where))
    for size, table in SIZES.items():
        if (*table[:3], [tuple(float(n) for n in stage) for stage in table[3]]) == found:
            return size
    raise ReleaseError(f"{where}: this C, out_channels, return_2d_output and stages_setup are none of the sizes "
                       f"B0-B6 (models/ReDimNet2Family.py SIZES)")


def read(path: str) -> ImportedRelease:
    """Read an authors' ReDimNet2 release (model_config and state_dict in one file)."""
    content, config, where = read_hub_release(path, NETWORK, FIXED)
    size = matching_size(config, where)
    settings = {"model": f"ReDimNet2{size}", "n_mels": setting(config, "F", where, int),
                "nOut": setting(config, "embed_dim", where, int, 192, required=False),
                "global_context": setting(config, "global_context_att", where, bool, True, required=False),
                "emb_bn": setting(config, "emb_bn", where, bool, False, required=False),
                "dual_agg": setting(config, "dual_agg", where, bool, False, required=False),
                "agg_gnorm": setting(config, "agg_gnorm", where, bool, False, required=False), **FRONT_END}
    return ImportedRelease("redimnet2", f"ReDimNet2-{size} ({settings['nOut']}-d)", settings,
                           hub_weights(path, content), RULES, IGNORED, [path])
