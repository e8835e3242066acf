"""Importing released models: the time to import each peer fixture release (ResNet293 among them) and the relative
error of the imported package's embeddings against the peer's own pipeline (tests/fixtures/peers)."""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "tests"))
from peer_releases import AUDIO_DIR, AUDIO_FILES, CASES, load_case, peer_embedding, write_release  # noqa: E402
from results_file import save_json  # noqa: E402

import importModel  # noqa: E402
from embedSpeaker import SpeakerEmbedder  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "import_releases.json"


def measure(name: str, folder: Path, repeats: int) -> dict:
    """Import one fixture release `repeats` times (the fastest kept) and compare its embeddings with the peer's."""
    case = load_case(name)
    release = write_release(case, folder / name)
    package = folder / f"{name}.pkg"
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        if importModel.main(["--from", case["toolkit"].replace("-", ""), "--checkpoint", str(release),
                             "--output", str(package)]) != 0:
            raise SystemExit(f"importing {name} failed")
        seconds.append(time.perf_counter() - started)
    embeddings = SpeakerEmbedder(str(package)).embed_files(list(AUDIO_FILES), str(AUDIO_DIR))
    errors = {}
    for audio in AUDIO_FILES:
        reference = peer_embedding(case, audio)
        ours = torch.from_numpy(embeddings[audio]).reshape(-1)
        errors[audio] = float((ours - reference).norm() / reference.norm())
    return {"toolkit": case["toolkit"], "import_seconds": min(seconds), "all_import_seconds": seconds,
            "package_mib": package.stat().st_size / 2 ** 20, "relative_error": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="imports per case (the fastest is reported)")
    args = parser.parse_args()
    results = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                          f"{torch.get_num_threads()} threads", "cases": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cases:
            results["cases"][name] = measure(name, Path(folder), args.repeats)
    print(f"{'case':34} {'import s':>9} {'MiB':>7} {'max relative error':>19}")
    for name, result in results["cases"].items():
        print(f"{name:34} {result['import_seconds']:9.2f} {result['package_mib']:7.1f} "
              f"{max(result['relative_error'].values()):19.2e}")
    print(json.dumps(results["machine"]))
    save_json(RESULTS, results)


if __name__ == "__main__":
    main()
