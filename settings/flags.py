"""The flag table: every flag's name, type, default and help, and the ranges a run can use."""
from __future__ import annotations

import argparse

from runtime.errors import ConfigError

RUNTIME_KEYS = ("model_save_path", "result_save_path", "feat_save_path", "gpu", "config", "debug")
# Left out of the run's saved config.yaml: as YAML wins over the command line, they would stop the file from
# being reused with --eval or with another --initial_model.
RUN_MODE_KEYS = ("eval", "initial_model")
LIST_KEYS = ("test_list",)  # keys whose YAML value may be a list (joined with commas like the command line)
# Smallest accepted value of numeric flags; checked after the YAML is applied.
MINIMUM = {"max_frames": 1, "eval_frames": 0, "batch_size": 1, "max_seg_per_spk": 1, "nDataLoaderThread": 0,
           "test_interval": 1, "max_epoch": 1, "nPerSpeaker": 1, "nClasses": 1, "num_eval": 1, "n_mels": 1,
           "nOut": 1, "weight_decay": 0, "length_tolerance": 0, "checkpoint_minutes": 0, "nonfinite_limit": 1,
           "nproc": 0, "gpu_id": 0, "freeze_backbone_epochs": 0, "backbone_lr_factor": 0,
           "encoder_lr_factor": 0, "layer_decay": 0, "lora_rank": 0, "lora_alpha": 0,
           "save_last_epochs": 0, "keep_last": 0, "keep_best": 0,
           "lr_reference_batch": 0}
POSITIVE = ("lr", "lr_decay", "scale")


def str2bool(value) -> bool:
    """Parse true/false/1/0/yes/no (any case); unlike the original's type=bool, 'False' is False."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "t", "yes", "y", "on"):
        return True
    if text in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, 1/0, yes/no), got '{value}'")


def add_flag(group, name: str, kind, default, help_text: str) -> None:
    """Add --name; booleans work bare (--augment) or with a value (--augment false)."""
    if kind is bool:
        group.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=default, metavar="BOOL",
                           help=help_text)
    else:
        group.add_argument(f"--{name}", type=kind, default=default, help=help_text)


FLAG_GROUPS = {
    "Data loader": [
        ("max_frames", int, 200, "training crop length in 10 ms frames"),
        ("eval_frames", int, 300, "test crop length in frames; 0 uses whole utterances"),
        ("batch_size", int, 200, "speakers per batch, per process"),
        ("max_seg_per_spk", int, 500, "maximum utterances per speaker per epoch"),
        ("nDataLoaderThread", int, 5, "DataLoader worker processes (train and test)"),
        ("augment", bool, False, "online MUSAN/RIR augmentation"),
        ("augment_mix", str, "original", "--augment: original (per crop 1/5 each of none, reverb, music, babble "
                                         "of 3-7 speakers, noise; small and medium rooms) or wespeaker (with "
                                         "probability --augment_prob, half each reverb from any room or one MUSAN "
                                         "recording, then peak normalisation)"),
        ("augment_prob", float, 0.6, "--augment_mix wespeaker: probability that a training crop is augmented"),
        ("seed", int, 10, "seed of the sampler, crops and augmentation"),
        ("skip_bad_audio", bool, False, "replace unreadable training files by another of the same speaker "
                                        "(counted) instead of stopping"),
        ("speed_perturb", bool, False, "each training speaker also at 0.9 and 1.1 speed as two new speakers "
                                       "(3x the classes: set --nClasses to 3x the speakers)"),
        ("speed_perturb_mode", str, "expand", "--speed_perturb: expand (every utterance at all three speeds, 3x the "
                                              "epoch) or per_epoch (wespeaker's: one random speed per batch item and "
                                              "epoch, the epoch keeps its size); --nClasses is 3x the speakers "
                                              "either way"),
        ("spec_augment", bool, False, "SpecAugment-style masks: 2 frequency bands and 2 time spans of each "
                                      "training crop zeroed in its spectrum"),
        ("sampler", str, "balanced", "training batches: balanced (batch_size different speakers) or shuffled "
                                     "(nPerSpeaker-utterance groups in random order, speakers may repeat; for losses "
                                     "that classify speakers, chosen by itself when there are fewer speakers than "
                                     "batch_size)"),
    ],
    "Training": [
        ("test_interval", int, 10, "evaluate and save every N epochs (also the StepLR step size)"),
        ("max_epoch", int, 500, "last epoch (inclusive)"),
        ("trainfunc", str, "", "loss plug-in in loss/"),
        ("mix", str, "none", "mix-based fine-tuning of a classifying loss: mixup (weighted sums of two training "
                             "crops), cutmix (a time span of one crop replaced by another's), both (one of the two "
                             "per batch) or none; the loss is the mix of both labels' losses"),
        ("mix_alpha", float, 0.2, "--mix: the share of a crop's own utterance is drawn from Beta(alpha, alpha)"),
        ("mix_prob", float, 1.0, "--mix: the share of training batches that are mixed"),
        ("mix_domain", str, "wave", "--mix: what is mixed, wave (the crops' waveforms) or feature (the log-mel "
                                    "features of the model's filterbank front end as it normalises them; CutMix "
                                    "takes a span of frames; needs a model on --frontend logmel, kaldi, "
                                    "speechbrain or tfmel)"),
        ("freeze_backbone_epochs", int, 0, "fine-tuning: in the first N epochs the embedding model is frozen (no "
                                           "gradients, BatchNorm statistics kept) and only the loss head trains"),
        ("save_last_epochs", int, 0, "also save a checkpoint (without evaluating) at each of the last N epochs, for "
                                     "averageModels.py --last N (wespeaker saves its last num_avg epochs); 0: only "
                                     "every --test_interval epochs"),
        ("keep_last", int, 0, "keep the newest N epoch checkpoints (model<epoch>.model and its .eer) and remove older "
                              "ones after each save; the newest, resume.model and those of the last "
                              "--save_last_epochs epochs always stay; 0 with --keep_best 0: keep every checkpoint"),
        ("keep_best", int, 0, "also keep the N epoch checkpoints of lowest validation EER (their .eer files); with "
                              "--keep_last 0 only these and the ones that always stay are kept"),
    ],
    "Optimizer and scheduler": [
        ("optimizer", str, "adam", "optimizer plug-in in optimizer/"),
        ("scheduler", str, "steplr", "scheduler plug-in in scheduler/"),
        ("lr", float, 0.001, "learning rate (of the loss head with --backbone_lr_factor; the LR logged)"),
        ("lr_decay", float, 0.95, "StepLR decay factor"),
        ("weight_decay", float, 0, "weight decay"),
        ("backbone_lr_factor", float, 1.0, "fine-tuning: the embedding model trains at this times the loss head's "
                                           "learning rate (its own parameter group); the LR logged is the head's"),
        ("encoder_lr_factor", float, 1.0, "--frontend ssl: the self-supervised encoder trains at this times the "
                                          "embedding model's learning rate (joint fine-tuning, e.g. 0.1)"),
        ("layer_decay", float, 1.0, "--frontend ssl: layer-wise learning-rate decay; encoder layer k of L trains at "
                                    "decay^(L - k) times the encoder's rate (the layers before the first at "
                                    "decay^L)"),
        ("lr_reference_batch", int, 0, "multiply --lr and the scheduler's other learning rates (--final_lr) by "
                                        "(processes x --batch_size x --nPerSpeaker) / this batch, as wespeaker does "
                                        "with 64; 0: use them as given"),
    ],
    "Loss functions": [
        ("hard_prob", float, 0.5, "triplet: probability of a hard negative"),
        ("hard_rank", int, 10, "triplet: hard negative drawn from the top hard_rank+1"),
        ("margin", float, 0.1, "margin of amsoftmax, the aamsoftmax losses, sphereface2, hamsoftmax and triplet"),
        ("scale", float, 30, "scale of amsoftmax, the aamsoftmax losses, sphereface2 and hamsoftmax"),
        ("easy_margin", bool, False, "aamsoftmax: easy-margin variant"),
        ("nPerSpeaker", int, 1, "utterances per speaker in each batch item (metric losses need 2 or more)"),
        ("nClasses", int, 5994, "number of training speakers for classification losses"),
    ],
    "Evaluation": [
        ("dcf_p_target", float, 0.05, "MinDCF target prior (MinDCF at 0.01 is printed too)"),
        ("dcf_c_miss", float, 1, "MinDCF miss cost"),
        ("dcf_c_fa", float, 1, "MinDCF false-alarm cost"),
        ("num_eval", int, 10, "crops per test file"),
        ("scoring", str, "original", "original (minus mean crop distance) or cosine (mean normalised embedding)"),
        ("score_file", str, "", "--eval: write '<score> <enrol> <test>' per trial to this file (plots beside it)"),
    ],
    "Load and save": [
        ("initial_model", str, "", "weights a new run starts from (a run with its own state in --save_path "
                                   "continues from that state); an inference package also fills the model flags "
                                   "not given (for training: the architecture, not the loss)"),
        ("save_path", str, "exps/exp1", "experiment folder (model/ and result/ inside)"),
    ],
    "Training and test data": [
        ("train_list", str, "data/train_list.txt", "train list: '<speaker> <relative path>' lines, or a Kaldi "
                                                  "wav.scp with utt2spk beside it"),
        ("test_list", str, "data/veri_test.txt", "trial list(s), comma-separated: '<label> <enrol> <test>' lines, "
                                                "or Kaldi trials ('<enrol-utt> <test-utt> target|nontarget')"),
        ("train_path", str, "data/voxceleb2/dev/wav", "root of the train list's paths"),
        ("train_shards", str, "", "train from tar shards: the shards.list of dataprep.py --make_shards "
                                  "(instead of --train_list and --train_path)"),
        ("test_path", str, "data/voxceleb1/test/wav", "root of the trial list's paths (for Kaldi trials: a wav.scp "
                                                      "or the folder holding it)"),
        ("musan_path", str, "data/musan_split", "split MUSAN folder"),
        ("rir_path", str, "data/RIRS_NOISES/simulated_rirs", "simulated RIR folder"),
    ],
    "Model definition": [
        ("n_mels", int, 40, "mel filterbank channels"),
        ("log_input", bool, False, "log of the mel power"),
        ("model", str, "", "model plug-in in models/"),
        ("encoder_type", str, "SAP", "pooling: SAP, ASP (ResNets), TAP, MAX (VGGVox)"),
        ("nOut", int, 512, "embedding size"),
    ],
    "Front end": [
        ("frontend", str, "logmel", "features of ECAPA_TDNN, ResNet34/221/293 and CAMPPlus: logmel (torchaudio log "
                                    "mel), kaldi (Kaldi's fbank, as wespeaker and 3D-Speaker), speechbrain "
                                    "(SpeechBrain's Fbank), tfmel (ReDimNet2's TensorFlow-style log mel, as "
                                    "wespeaker's ReDimNet2) or ssl (a self-supervised encoder's hidden layers; MHFA "
                                    "and SSL_MFA take only ssl)"),
        ("frontend_window", str, None, "kaldi, speechbrain: window povey, hamming, hann, rectangular or blackman "
                                       "(Kaldi's formulas; symmetric for kaldi, periodic for speechbrain); default "
                                       "povey for kaldi, hamming for speechbrain"),
        ("waveform_scale", float, None, "kaldi, speechbrain, tfmel: multiply the waveform (read in [-1, 1]) by this "
                                        "first; wespeaker's models use 32768 (default 1)"),
        ("preemphasis", float, None, "kaldi, logmel, tfmel: pre-emphasis coefficient from 0 to 1 (default 0.97 for "
                                     "kaldi and tfmel, 0 for logmel)"),
        ("mel_fmin", float, None, "logmel, tfmel: lowest edge of the mel bands in Hz (default 0; ReDimNet and "
                                  "tfmel: 20)"),
        ("mel_fmax", float, None, "logmel, tfmel: highest edge of the mel bands in Hz (default 8000; ReDimNet and "
                                  "tfmel: 7600)"),
        ("dither", float, None, "kaldi: in training only, Gaussian noise of this standard deviation (waveform-scale "
                                "units) added to each frame, as Kaldi's --dither (default 0)"),
        ("mean_norm", bool, None, "kaldi, speechbrain, ssl: subtract each utterance's mean over time (default "
                                  "true)"),
        ("ssl_source", str, None, "ssl: the encoder, a folder with transformers' config.json (and weights) or a hub "
                                  "name such as microsoft/wavlm-base-plus or facebook/w2v-bert-2.0: WavLM, HuBERT, "
                                  "wav2vec 2.0 or w2v-BERT 2.0"),
        ("ssl_init", str, None, "ssl: pretrained (the source's weights; default) or random (config.json alone)"),
        ("ssl_layers", str, None, "ssl: weighted (learnt softmax-weighted sum of all hidden layers; default), concat "
                                  "(all layers along channels: multi-layer feature aggregation) or last"),
        ("ssl_frozen", bool, None, "ssl: the encoder does not train (its layer weights and the back end do)"),
        ("lora_rank", int, None, "ssl: LoRA adapters of this rank on --lora_targets, the rest of the encoder frozen "
                                 "(default 0: no adapters)"),
        ("lora_alpha", float, None, "ssl: LoRA scaling is alpha / rank (default alpha 2 x rank)"),
        ("lora_targets", str, None, "ssl: comma-separated names of the encoder's linear layers that get adapters "
                                    "(default q_proj,v_proj; linear_q,linear_v for w2v-BERT)"),
        ("gradient_checkpointing", bool, None, "ssl: recompute the encoder's activations in the backward pass "
                                               "(less memory, more time)"),
        ("waveform_norm", bool, None, "ssl, tfmel: zero-mean, unit-variance waveforms into the encoder or "
                                      "filterbank (ssl's default: the source's preprocessor_config.json "
                                      "do_normalize, else false; tfmel's: true)"),
    ],
    "Run mode and hardware": [
        ("eval", bool, False, "evaluate only, then exit"),
        ("port", str, "8888", "MASTER_PORT for distributed training"),
        ("distributed", bool, False, "one process per visible GPU (DistributedDataParallel)"),
        ("mixedprec", bool, False, "float16 autocast + grad scaler on CUDA; bfloat16 on CPUs with fast bfloat16"),
        ("device", str, "auto", "auto (CUDA when available), cpu or cuda"),
        ("gpu_id", int, 0, "GPU to use when not distributed (sets CUDA_VISIBLE_DEVICES)"),
        ("nproc", int, 0, "--distributed without torchrun: processes to start (0: one per visible GPU, "
                          "2 on CPU, gloo)"),
        ("checkpoint_minutes", float, 0, "also save the training state every N minutes inside an epoch "
                                         "(model/resume.model); 0: only at the end of each epoch"),
        ("nonfinite_limit", int, 20, "stop after this many training steps in a row with a non-finite loss"),
        ("debug", bool, False, "show the Python traceback of an error instead of one line (also SPEAKERNET_DEBUG=1)"),
    ],
    "Evaluation back end": [
        ("score_norm", str, "none", "score normalisation: none, asnorm (top-k cohort) or snorm (whole cohort)"),
        ("norm_topk", int, 300, "asnorm: cohort scores per side used for the statistics"),
        ("cohort_list", str, "", "speaker list of the cohort ('<speaker> <path>' lines, paths under --train_path); "
                                 "default: --train_list"),
        ("cohort_size", int, 0, "cohort speakers (seeded pick; 0: all speakers of the cohort list)"),
        ("cohort_utterances", int, 10, "utterances averaged per cohort speaker (0: all)"),
        ("center_embeddings", bool, False, "subtract the mean embedding of the cohort list's utterances (the ones "
                                           "--cohort_size and --cohort_utterances select) from every embedding "
                                           "before scoring and score normalisation, as wespeaker's scoring does "
                                           "with the mean of its training set"),
        ("calibration", str, "", "apply this saved calibration: scores become log-likelihood ratios"),
        ("fit_calibration", str, "", "fit a calibration on the first --test_list and save it to this path"),
        ("calibration_prior", float, 0.5, "target prior the calibration is fitted at"),
        ("calibration_quality", str, "", "quality terms of --fit_calibration (QMF), comma-separated: duration "
                                         "(log durations), norm (embedding norms), cohort (score-norm statistics)"),
        ("embeddings_cache", str, "", "file of saved embeddings: reused when model and crop settings match, "
                                      "updated with new files"),
        ("eval_files_per_batch", int, 0, "test files per forward pass (0: 16 on a GPU, 16 crops' worth on a CPU)"),
        ("length_tolerance", float, 0.05, "--eval_frames 0: whole utterances at most this fraction longer than "
                                          "a forward pass's shortest are cut to it (centred) and share the pass; "
                                          "0: equal lengths only, every utterance embedded whole"),
    ],
}
FRONTEND_FLAGS = tuple(name for name, *_ in FLAG_GROUPS["Front end"])
# The YAML sections of the parts (model_args: {nOut: 256}): the framework flags each holds. The section of a
# plug-in folder (SECTION_FOLDERS) also holds the options the selected plug-in declares in its OPTIONS.
SECTION_FLAGS = {
    "model_args": ("nOut", "n_mels", "log_input", "encoder_type"),
    "frontend_args": FRONTEND_FLAGS,
    "loss_args": ("nClasses", "margin", "scale", "easy_margin", "hard_prob", "hard_rank", "nPerSpeaker"),
    "optimizer_args": ("lr", "weight_decay"),
    "scheduler_args": ("lr_decay",),
}
SECTION_FOLDERS = {"model_args": "models", "loss_args": "loss", "optimizer_args": "optimizer",
                   "scheduler_args": "scheduler"}


def check_ranges(args: argparse.Namespace) -> None:
    """Refuse numeric values no run can use (e.g. --max_frames 0, --batch_size 0, --lr -1)."""
    for name, low in MINIMUM.items():
        if getattr(args, name) is not None and getattr(args, name) < low:
            raise ConfigError(f"--{name} must be at least {low}, got {getattr(args, name)}")
    for name in POSITIVE:
        if not getattr(args, name) > 0:
            raise ConfigError(f"--{name} must be above 0, got {getattr(args, name)}")
    if not 0 <= args.hard_prob <= 1:
        raise ConfigError(f"--hard_prob is a probability (0 to 1), got {args.hard_prob}")
    for name in ("dcf_p_target", "calibration_prior"):
        if not 0 < getattr(args, name) < 1:
            raise ConfigError(f"--{name} is a prior strictly between 0 and 1, got {getattr(args, name)}")


def flag_defaults() -> dict:
    """Every flag of the table with its default."""
    return {name: default for flags in FLAG_GROUPS.values() for name, _, default, _ in flags}


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the evaluation back end's flags (--score_norm, --calibration, ...) to an argparse parser."""
    group = parser.add_argument_group("Evaluation back end")
    for name, kind, default, help_text in FLAG_GROUPS["Evaluation back end"]:
        add_flag(group, name, kind, default, help_text)
