"""One typed settings object, built once from flags + YAML, with a section for each part of the framework.

Each part takes its own section; each plug-in receives its part's flags from `Settings.flags`
(settings.plugins.plugin_arguments)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

from settings.flags import flag_defaults


@dataclass(frozen=True)
class DataSettings:
    """The training data pipeline: list or shards, crops, speaker-balanced batches, augmentation, loader workers."""

    train_list: str
    train_path: str
    train_shards: str  # when given, the data comes from these shards, not from train_list / train_path
    max_frames: int
    batch_size: int
    nPerSpeaker: int
    max_seg_per_spk: int
    nDataLoaderThread: int
    augment: bool
    augment_mix: str  # original or wespeaker
    augment_prob: float  # the share of crops the wespeaker mix augments
    musan_path: str
    rir_path: str
    seed: int
    skip_bad_audio: bool
    speed_perturb: bool
    speed_perturb_mode: str  # expand or per_epoch
    spec_augment: bool
    sampler: str  # balanced or shuffled (--train_list only)


@dataclass(frozen=True)
class ModelSettings:
    """What builds SpeakerNet: the model and loss plug-ins and the global flags they read."""

    model: str
    trainfunc: str
    nOut: int
    n_mels: int
    log_input: bool
    encoder_type: str
    nPerSpeaker: int
    nClasses: int
    margin: float
    scale: float
    easy_margin: bool
    hard_prob: float
    hard_rank: int
    frontend: str
    frontend_window: str | None  # None: each front end's own default
    waveform_scale: float | None
    preemphasis: float | None
    mel_fmin: float | None
    mel_fmax: float | None
    dither: float | None
    mean_norm: bool | None
    ssl_source: str | None  # the ssl front end's options; None: its defaults
    ssl_init: str | None
    ssl_layers: str | None
    ssl_frozen: bool | None
    lora_rank: int | None
    lora_alpha: float | None
    lora_targets: str | None
    gradient_checkpointing: bool | None
    waveform_norm: bool | None


@dataclass(frozen=True)
class OptimisationSettings:
    """The trainer: optimiser and scheduler plug-ins, learning rates, epochs and checkpoints, precision, the
    non-finite-step limit and fine-tuning."""

    optimizer: str
    scheduler: str
    lr: float
    lr_decay: float
    weight_decay: float
    max_epoch: int
    test_interval: int
    mixedprec: bool
    nonfinite_limit: int
    freeze_backbone_epochs: int
    backbone_lr_factor: float
    save_last_epochs: int
    keep_last: int
    keep_best: int
    lr_reference_batch: int


@dataclass(frozen=True)
class EvaluationSettings:
    """Scoring trial lists: crops, scoring, normalisation cohort, calibration, outputs and loader workers."""

    test_list: tuple[str, ...]
    test_path: str
    eval_frames: int
    num_eval: int
    scoring: str
    score_file: str
    dcf_p_target: float
    dcf_c_miss: float
    dcf_c_fa: float
    score_norm: str
    norm_topk: int
    cohort_list: str  # --cohort_list, else --train_list
    cohort_path: str  # --train_path: the root of the cohort list's paths
    cohort_size: int
    cohort_utterances: int
    center_embeddings: bool
    calibration: str
    fit_calibration: str
    calibration_prior: float
    calibration_quality: str
    embeddings_cache: str
    eval_files_per_batch: int
    length_tolerance: float
    workers: int  # --nDataLoaderThread

    @classmethod
    def from_flags(cls, values: dict | argparse.Namespace) -> EvaluationSettings:
        """The section from flag values; flags not given take their defaults (for callers of the original's API)."""
        values = {**flag_defaults(), **(vars(values) if isinstance(values, argparse.Namespace) else values)}
        derived = {"test_list": tuple(trial_list_paths(values["test_list"])), "cohort_path": values["train_path"],
                   "cohort_list": values["cohort_list"] or values["train_list"],
                   "workers": values["nDataLoaderThread"]}
        return cls(**{field.name: derived.get(field.name, values.get(field.name)) for field in fields(cls)})


@dataclass(frozen=True)
class RunSettings:
    """How the run executes: train or evaluate, where it saves, devices, processes and checkpoints."""

    eval: bool
    save_path: str
    initial_model: str
    config: str | None
    device: str
    gpu_id: int
    distributed: bool
    port: str
    nproc: int
    checkpoint_minutes: float
    seed: int
    debug: bool

    @property
    def model_save_path(self) -> str:
        """<save_path>/model: checkpoints and .eer files."""
        return os.path.join(self.save_path, "model")

    @property
    def result_save_path(self) -> str:
        """<save_path>/result: scores.txt, timing.jsonl and the run records."""
        return os.path.join(self.save_path, "result")


@dataclass(frozen=True)
class Settings:
    """Every section, and every flag by name: the plug-ins' keyword arguments are drawn from it, and the run saves
    it."""

    data: DataSettings
    model: ModelSettings
    optimisation: OptimisationSettings
    evaluation: EvaluationSettings
    run: RunSettings
    flags: dict

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> Settings:
        """The sections of parsed flags (plug-in options stay in `flags`, from which the plug-ins receive them)."""
        values = dict(vars(args))
        return cls(data=section(DataSettings, values), model=section(ModelSettings, values),
                   optimisation=section(OptimisationSettings, values),
                   evaluation=EvaluationSettings.from_flags(values), run=section(RunSettings, values), flags=values)


def section(kind: type, values: dict):
    """A section dataclass filled from flag values."""
    return kind(**{field.name: values[field.name] for field in fields(kind)})


def trial_list_paths(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """--test_list as paths (comma-separated on the command line, or a YAML list)."""
    paths = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [path.strip() for path in paths if path.strip()]

