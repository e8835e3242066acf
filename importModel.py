#!/usr/bin/env python
"""Import a released speaker-embedding model of wespeaker, 3D-Speaker or SpeechBrain as this framework's inference
package: the same network under our names, the front end it was trained with, and where it came from."""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import arguments
from deployment.model_loading import MODEL_SETTINGS, resolve_settings
from importers import READERS, ImportedRelease, ReleaseError
from importers.release_files import file_sha256
from importers.transfer import transfer
from runtime import checkpoint_files, packages
from runtime.atomic_files import check_not_an_input, check_output_file
from runtime.errors import run_command
from SpeakerNet import SpeakerNet

# What every imported release is scored with: whole utterances, cosine of the embeddings (as all three toolkits
# score); the loss only sets test_normalize.
SCORING = {"trainfunc": "aamsoftmax", "scoring": "cosine", "eval_frames": 0}
CHECK_SAMPLES = 8000  # half a second of audio runs through the imported network before it is written


def build_parser() -> argparse.ArgumentParser:
    """Command line: the toolkit, the release as it was downloaded, the package to write."""
    parser = arguments.ArgumentParser(description=__doc__)
    parser.add_argument("--from", dest="toolkit", required=True, choices=sorted(READERS),
                        help="the toolkit that published the release")
    parser.add_argument("--checkpoint", required=True,
                        help="wespeaker: the folder with avg_model.pt and config.yaml; 3dspeaker: the CAM++ or "
                             "ERes2NetV2 state-dict file (e.g. campplus_voxceleb.bin, pretrained_eres2netv2.ckpt); "
                             "speechbrain: the folder with embedding_model.ckpt and hyperparams.yaml")
    parser.add_argument("--output", required=True, help="the package to write (its folder must exist)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one "
                        "line (also SPEAKERNET_DEBUG=1)")
    return parser


def imported_network(release: ImportedRelease) -> tuple[SpeakerNet, dict]:
    """Our SpeakerNet holding the release's weights (every tensor accounted for), and its settings."""
    settings = resolve_settings({**SCORING, **release.settings, **({"nClasses": release.classes}
                                                                    if release.classes else {})}, None, {})
    net = SpeakerNet(**settings).eval()
    weights = transfer(release.weights, release.rules, net.__S__, release.files[-1],
                       f"{release.toolkit} {release.network}", release.ignored)
    net.__S__.load_state_dict(weights, strict=False)
    with torch.no_grad():
        check = net(torch.randn(2, CHECK_SAMPLES, generator=torch.Generator().manual_seed(0)))
    if not torch.isfinite(check).all():
        raise ReleaseError(f"{release.files[-1]}: the imported {release.network} gives non-finite embeddings")
    return net, settings


def provenance(release: ImportedRelease) -> dict:
    """Where a package came from: toolkit, network, and each file read with its sha256."""
    return {"toolkit": release.toolkit, "network": release.network,
            "files": {os.path.basename(path): file_sha256(path) for path in release.files},
            "classifier_classes": release.classes or 0}


def run(argv: list[str]) -> int:
    """Read the release, rebuild it as our network, check it runs, then write the package."""
    args = build_parser().parse_args(argv)
    check_output_file(args.output)
    started = time.perf_counter()
    release = READERS[args.toolkit](args.checkpoint)
    check_not_an_input(args.output, "--output", [("the release file", path) for path in release.files])
    net, settings = imported_network(release)
    model_settings = {name: settings[name] for name in MODEL_SETTINGS if name in settings}
    content = packages.package_content(net.state_dict(), model_settings, provenance(release))
    checkpoint_files.write_atomically(content, args.output)
    front_end = ", ".join(f"{key} {settings[key]}" for key in ("frontend_window", "waveform_scale", "dither")
                          if settings.get(key) is not None)
    print(f"Imported {release.toolkit} {release.network} as --model {settings['model']} "
          f"(--frontend {settings.get('frontend', 'logmel')}{', ' + front_end if front_end else ''}): "
          f"{len(content['weights'])} tensors"
          + (f", its {release.classes}-class training classifier left out" if release.classes else "")
          + f"; wrote {args.output} ({os.path.getsize(args.output) / 2 ** 20:.1f} MiB) in "
          f"{time.perf_counter() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: a mistake in what was given ends with one line and exit status 1 (traceback with --debug)."""
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
