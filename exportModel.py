#!/usr/bin/env python
"""Export a trained checkpoint for inference: a small package (weights + settings + sha256), an ONNX graph or a
TorchScript module that maps a 16 kHz waveform [batch, samples] to embeddings [batch, nOut]."""
from __future__ import annotations

import os
import sys

import torch

import arguments
from deployment.export import export_model
from deployment.model_loading import MODEL_SETTINGS, add_model_flags, load_speaker_net
from runtime import checkpoint_files, packages
from runtime.atomic_files import check_not_an_input, check_output_file
from runtime.errors import run_command

FORMATS = ("package", "onnx", "torchscript")


def build_parser() -> arguments.ArgumentParser:
    """Command line: checkpoint, format, output, and the model settings a bare checkpoint needs."""
    parser = arguments.ArgumentParser(description=__doc__)
    parser.add_argument("--initial_model", required=True, help="checkpoint: ours, the original's, or a package")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="package (weights, settings, sha256; loads with no model flags), onnx or torchscript "
                             "(front end included; checked against PyTorch right after export)")
    parser.add_argument("--output", required=True, help="file to write (its folder must exist)")
    parser.add_argument("--config", help="the run's config.yaml (model settings)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one "
                        "line (also SPEAKERNET_DEBUG=1)")
    add_model_flags(parser)
    return parser


def run(argv: list[str]) -> int:
    """Load the checkpoint, then write the package or the exported model."""
    args = build_parser().parse_args(argv)
    check_output_file(args.output)
    check_not_an_input(args.output, "--output", [("--initial_model", args.initial_model), ("--config", args.config)])
    overrides = {name: getattr(args, name) for name in MODEL_SETTINGS}
    net, settings = load_speaker_net(args.initial_model, args.config, torch.device("cpu"), overrides)
    model_settings = {name: settings[name] for name in MODEL_SETTINGS if name in settings}
    if args.format == "package":
        content = packages.package_content(net.state_dict(), model_settings,
                                           packages.package_entry(args.initial_model, "provenance"))
        checkpoint_files.write_atomically(content, args.output)
        size = os.path.getsize(args.output) / 2 ** 20
        print(f"Wrote the {settings['model']} package {args.output} ({len(content['weights'])} tensors, "
              f"{size:.1f} MiB, sha256 {content['sha256'][:16]}...)")
        return 0
    export_model(net, model_settings, args.format, args.output)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: a mistake in what was given ends with one line and exit status 1 (traceback with --debug)."""
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
