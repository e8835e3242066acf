"""Export every model to ONNX and TorchScript and print how closely each reproduces PyTorch, and how long it took.

    python benchmarks/export_parity.py                        # every fbank/waveform model, both formats
    python benchmarks/export_parity.py --models ECAPA_TDNN --formats onnx

Each model is built at its recipe size with freshly initialised weights (seed 0) and exported with
deployment.export.export_model, whose parity check runs 4 clips (batch 1 and 2, 2.6-3.1 s, traced on 2 s).
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
from results_file import save_json  # noqa: E402

from deployment.export import compare, export_model, parity_clips  # noqa: E402
from settings.plugins import available_plugins  # noqa: E402
from SpeakerNet import SpeakerNet, ssl_back_ends  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "export_parity.json"
FBANK = {"n_mels": 80}
# model -> constructor settings at the size its recipes or the original use
RECIPE_SETTINGS = {
    "ResNetSE34L": {"encoder_type": "SAP", "n_mels": 40, "nOut": 512},
    "ResNetSE34": {"encoder_type": "SAP", "log_input": False, "nOut": 512},
    "ResNetSE34V2": {"encoder_type": "ASP", "n_mels": 64, "nOut": 512},
    "Res2NetSE34": {"encoder_type": "ASP", "n_mels": 64, "nOut": 512},
    "VGGVox": {"encoder_type": "SAP", "nOut": 512},
    "VGGVox40": {"encoder_type": "SAP", "nOut": 512},
    "RawNet3": {"encoder_type": "ECA", "nOut": 256},
    "ECAPA_TDNN": {**FBANK, "channels": 512, "nOut": 192},
    "CAMPPlus": {**FBANK, "nOut": 192},
    "ResNet34": {**FBANK, "nOut": 256},
    "ResNet221": {**FBANK, "nOut": 256},
    "ResNet293": {**FBANK, "nOut": 256},
}


def measure(model: str, kind: str) -> dict:
    """Export one model in one format to a temporary file; its parity figures and seconds."""
    torch.manual_seed(0)
    settings = {"log_input": True, **RECIPE_SETTINGS[model]}
    net = SpeakerNet(model=model, trainfunc="angleproto", **settings).eval()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        parity = export_model(net, {"model": model, **settings}, kind, str(Path(folder) / f"model.{kind}"))
        seconds = time.perf_counter() - started
    with torch.no_grad():  # context: how far apart PyTorch puts the two different clips of the check
        pair = net.__S__(parity_clips()[1][-1]).numpy()
    return {"model": model, "format": kind, "min_cosine": parity.min_cosine,
            "max_abs_diff": parity.max_abs_diff, "seconds": seconds, "clips_cosine": compare(pair[:1], pair[1:])[0]}


def main() -> None:
    """Measure the chosen models and formats, print a Markdown table and save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[model for model in available_plugins("models")
                                                     if model not in ssl_back_ends()])
    parser.add_argument("--formats", nargs="+", default=["onnx", "torchscript"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(model, kind) for model in args.models for kind in args.formats]
    print("\n| model | format | min cosine | cosine distance | max abs diff | two clips' cosine | export + check |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['format']} | {row['min_cosine']:.8f} | {1 - row['min_cosine']:.1e} | "
              f"{row['max_abs_diff']:.1e} | {row['clips_cosine']:.5f} | {row['seconds']:.0f} s |")
    save_json(RESULTS, {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                        "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
