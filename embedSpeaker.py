#!/usr/bin/env python
"""Embed any audio with a trained checkpoint (file, folder or list -> .npy/.npz) and verify pairs of files."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import arguments
import evaluation
from audio.file_lists import check_files_exist, is_wav_scp, read_list_lines
from audio.kaldi_data import read_wav_scp
from audio.reading import AUDIO_EXTENSIONS
from deployment.model_loading import MODEL_SETTINGS, add_model_flags, load_speaker_net
from deployment.onnx_embedder import OnnxEmbedder
from deployment.pair_verifier import PairVerifier
from evaluation.kaldi_embeddings import KALDI_FOLDER_FILES, utterance_names, write_kaldi_embeddings
from runtime.atomic_files import atomic_write, check_not_an_input, check_output_folder
from runtime.errors import ConfigError, DataError, MissingFileError, run_command


class SpeakerEmbedder(PairVerifier):
    """A checkpoint ready to embed audio and score pairs the way --eval does (usable from a notebook)."""

    def __init__(self, checkpoint: str, config: str | None = None, device: str = "cpu",
                 calibration_path: str | None = None, **overrides):
        self.device = torch.device(device)
        self.net, self.settings = load_speaker_net(checkpoint, config, self.device, overrides)
        self.load_calibration(calibration_path, self.settings["scoring"])

    def embed_files(self, files: list[str], root: str = "", num_workers: int = 0,
                    length_tolerance: float = 0.0) -> dict[str, np.ndarray]:
        """`[crops, D]` float32 embeddings of files (paths relative to root), batched like --eval; whole utterances
        within `length_tolerance` of a batch's shortest are cut to its length (0: exactly --eval's embeddings)."""
        check_files_exist([os.path.join(root, name) for name in files], "the files to embed")
        embeddings = evaluation.extract_embeddings(self.net, files, root, self.settings["eval_frames"],
                                                   self.settings["num_eval"], num_workers, self.device,
                                                   length_tolerance=length_tolerance)
        return {name: value.numpy() for name, value in embeddings.items()}

    def score(self, enrol: str, test: str) -> float:
        """The --eval score of one pair of files (before any score normalisation)."""
        embeddings = {name: torch.from_numpy(value) for name, value in self.embed_files([enrol, test]).items()}
        trials = evaluation.Trials(np.array([-1]), [enrol], [test], sorted({enrol, test}), "pair")
        return float(evaluation.score_trials(trials, embeddings, bool(self.net.__L__.test_normalize),
                                             self.settings["scoring"])[0])


def average_embedding(crops: np.ndarray) -> np.ndarray:
    """One unit-length vector per file: the normalised mean of the L2-normalised crop embeddings."""
    tensor = torch.from_numpy(crops)
    return F.normalize(F.normalize(tensor, dim=-1).mean(0), dim=0).numpy()


def input_files(source: str, root: str) -> tuple[list[str], str]:
    """(paths relative to the root, root) of a file, a folder (searched recursively) or a list of paths; the files
    of a list must exist."""
    if os.path.isdir(source):
        found = [os.path.relpath(os.path.join(folder, name), source) for folder, _, names in os.walk(source)
                 for name in names if name.lower().endswith(AUDIO_EXTENSIONS)]
        if not found:
            raise MissingFileError(f"No audio files ({', '.join(AUDIO_EXTENSIONS)}) under {source}")
        return sorted(found), source
    if not os.path.isfile(source):
        raise MissingFileError(f"{source} is neither an audio file, a folder nor a list of paths")
    if source.lower().endswith(AUDIO_EXTENSIONS):
        return [os.path.basename(source)], os.path.dirname(source)
    if is_wav_scp(source):
        files = list(read_wav_scp(source).values())
        check_files_exist(files, source)
        return files, ""
    files = [line.split()[-1] for line in read_list_lines(source, "list of paths") if line.strip()]
    if not files:
        raise DataError(f"The list {source} names no files")
    check_files_exist([os.path.join(root, name) for name in files], source, "--root", root or ".")
    return files, root


def check_output(output: str | None, n_files: int) -> None:
    """Raise before any embedding work when the output name cannot hold this many files."""
    if output is None:
        return
    if not output.endswith((".npy", ".npz")):
        raise ConfigError(f"Output {output} must end in .npy (one file) or .npz (several)")
    if output.endswith(".npy") and n_files != 1:
        raise ConfigError(f"{n_files} files cannot go into one .npy; name an .npz output")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    except OSError as error:
        raise ConfigError(f"Cannot create the folder of --output {output}: {error.strerror}") from None


def read_inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The files `embed` reads besides the audio (which no output can name: outputs are never audio files)."""
    inputs = [("the source", args.source), ("--initial_model", args.initial_model), ("--onnx", args.onnx),
              ("--config", args.config)]
    if is_wav_scp(args.source):
        inputs.append(("the source's utt2spk", os.path.join(os.path.dirname(args.source), "utt2spk")))
    return inputs


def check_outputs(args: argparse.Namespace, n_files: int) -> None:
    """Raise before any embedding work when --output or --kaldi_dir cannot be written or would overwrite an input."""
    check_output(args.output, n_files)
    inputs = read_inputs(args)
    if args.output:
        check_not_an_input(args.output, "--output", inputs)
    if args.kaldi_dir:
        for name in KALDI_FOLDER_FILES:
            check_not_an_input(os.path.join(args.kaldi_dir, name), "--kaldi_dir", inputs)
        check_output_folder(args.kaldi_dir, "--kaldi_dir")


def save_embeddings(embeddings: dict[str, np.ndarray], output: str) -> None:
    """One file -> .npy; several -> .npz keyed by path (temporary file, then rename; folders created)."""
    check_output(output, len(embeddings))
    with atomic_write(output) as temporary, open(temporary, "wb") as handle:
        if output.endswith(".npy"):
            np.save(handle, next(iter(embeddings.values())))
        else:
            np.savez(handle, **embeddings)


def save_kaldi_folder(folder: str, names: tuple[dict, dict | None], embeddings: dict[str, np.ndarray]) -> None:
    """Write one unit vector per file (as --average) to a Kaldi folder, keyed by utterance id."""
    ids, speakers = names
    write_kaldi_embeddings(folder, {ids[name]: average_embedding(value) for name, value in embeddings.items()},
                           speakers)
    print(f"Saved {len(embeddings)} vectors to {folder}/embedding.ark, embedding.scp"
          + (", utt2spk, spk2utt" if speakers else ""))


def build_parser() -> argparse.ArgumentParser:
    """Command line: common model options, then `embed` or `verify`."""
    common = argparse.ArgumentParser(add_help=False)
    model = common.add_mutually_exclusive_group(required=True)
    model.add_argument("--initial_model", help="checkpoint: ours, the original's state_dict, or a package from "
                       "exportModel.py (which needs no model flags)")
    model.add_argument("--onnx", help="ONNX model from exportModel.py, run with onnxruntime (no model flags; "
                       "--eval_frames, --num_eval and --scoring may still be given)")
    common.add_argument("--config", help="the run's config.yaml (model settings)")
    common.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    common.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one "
                        "line (also SPEAKERNET_DEBUG=1)")
    add_model_flags(common)
    parser = arguments.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser("embed", parents=[common], help="embed a file, folder or list of paths")
    embed.add_argument("source", help="audio file, folder, or text file with one path a line")
    embed.add_argument("--output", help=".npy (one file) or .npz (several)")
    embed.add_argument("--kaldi_dir", help="also (or only) write one vector per file as Kaldi embedding.ark/.scp "
                       "keyed by utterance id, with utt2spk and spk2utt when the speakers are known")
    embed.add_argument("--root", default="", help="folder the paths of a list are relative to")
    embed.add_argument("--average", action="store_true", help="save one unit vector per file, not its crops")
    embed.add_argument("--workers", "--nDataLoaderThread", dest="workers", type=int, default=0,
                       help="DataLoader workers that read the audio")
    embed.add_argument("--length_tolerance", type=float, default=0.05, help="--eval_frames 0: whole utterances "
                       "at most this fraction longer than a batch's shortest are cut to it (centred) and share its "
                       "forward pass; 0: equal lengths only, exactly --eval's embeddings")
    verify = commands.add_parser("verify", parents=[common], help="score a pair of files")
    verify.add_argument("enrol")
    verify.add_argument("test")
    verify.add_argument("--calibration", help="saved calibration (--fit_calibration of --eval) for LLR output")
    verify.add_argument("--prior", type=float, default=0.5, help="target prior of the decision")
    return parser


def run(argv: list[str]) -> int:
    """Embed files or verify a pair, as the command line asks."""
    args = build_parser().parse_args(argv)
    overrides = {name: getattr(args, name) for name in MODEL_SETTINGS}
    if args.command == "embed":
        if not (args.output or args.kaldi_dir):
            raise ConfigError("Name an --output (.npy/.npz), a --kaldi_dir, or both")
        if args.length_tolerance < 0:
            raise ConfigError(f"--length_tolerance is a fraction of a length (0 or more), got {args.length_tolerance}")
        files, root = input_files(args.source, args.root)
        check_outputs(args, len(files))
        names = utterance_names(args.source, files) if args.kaldi_dir else None
    else:
        check_files_exist([args.enrol, args.test], "the pair to verify")
    if args.onnx:
        embedder = OnnxEmbedder(args.onnx, getattr(args, "calibration", None), config=args.config, **overrides)
    else:
        embedder = SpeakerEmbedder(args.initial_model, args.config, args.device, getattr(args, "calibration", None),
                                   **overrides)
    if args.command == "embed":
        embeddings = embedder.embed_files(files, root, args.workers, args.length_tolerance)
        if args.kaldi_dir:
            save_kaldi_folder(args.kaldi_dir, names, embeddings)
        if args.average:
            embeddings = {name: average_embedding(value) for name, value in embeddings.items()}
        if args.output:
            save_embeddings(embeddings, args.output)
            shape = next(iter(embeddings.values())).shape
            print(f"Saved {len(embeddings)} embeddings of shape {list(shape)} to {args.output}")
        return 0
    result = embedder.verify(args.enrol, args.test, args.prior)
    print(f"score {result['score']:.6f}")
    if "llr" in result:
        print(f"llr {result['llr']:.4f} probability {result['probability']:.4f} "
              f"decision {'same speaker' if result['same_speaker'] else 'different speakers'} "
              f"(prior {result['p_target']:g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: a mistake in what was given ends with one line and exit status 1 (traceback with --debug)."""
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
