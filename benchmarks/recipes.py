"""Demo recipes side by side: train each configs/demo*.yaml on the demo corpus with several seeds, print EER and time.

    python benchmarks/recipes.py                                  # demo.yaml and demo_ECAPA.yaml, seeds 10 and 11
    python benchmarks/recipes.py --recipes configs/demo.yaml --seeds 10

Each run is the real CLI (`trainSpeakerNet.py --config` on a copy of the recipe whose save_path and seed are
this benchmark's), timed as a whole process; the EER is the last VEER line of its scores.txt. Runs alternate
between the recipes, so a change in the machine's load falls on all of them alike.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
from results_file import save_json  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "recipes.json"
DEFAULT_RECIPES = ["configs/demo.yaml", "configs/demo_ECAPA.yaml"]


def run_recipe(recipe: Path, seed: int, folder: Path) -> dict:
    """Train and evaluate one recipe with one seed in `folder`; its wall time and final EER."""
    config = yaml.safe_load(recipe.read_text())
    config.update(seed=seed, save_path=str(folder / f"{recipe.stem}_seed{seed}"))
    copy = folder / f"{recipe.stem}_seed{seed}.yaml"
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "trainSpeakerNet.py", "--config", str(copy)], cwd=PROJECT_ROOT,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{recipe} (seed {seed}) failed:\n{result.stderr[-2000:]}")
    lines = (Path(config["save_path"]) / "result" / "scores.txt").read_text().splitlines()
    eer = float([line for line in lines if "VEER" in line][-1].split("VEER ")[1].split(",")[0])
    print(f"{recipe.name} seed {seed}: EER {eer:.2f}% in {seconds:.0f} s", flush=True)
    return {"seed": seed, "eer": eer, "seconds": seconds}


def summary(runs: dict[str, list[dict]], baseline: str) -> list[str]:
    """One line per recipe: mean EER and time, and both as ratios to the baseline recipe."""
    mean = {name: (statistics.mean(r["eer"] for r in rows), statistics.mean(r["seconds"] for r in rows))
            for name, rows in runs.items()}
    base_eer, base_seconds = mean[baseline]
    lines = []
    for name, (eer, seconds) in mean.items():
        each = " / ".join(f"{run['eer']:.2f}" for run in runs[name])
        lines.append(f"{name:24s} EER {eer:6.2f}% ({each})  time {seconds:5.0f} s  EER x{eer / base_eer:.2f}  "
                     f"time x{seconds / base_seconds:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, help="recipes; the first is the baseline")
    parser.add_argument("--seeds", nargs="+", type=int, default=[10, 11])
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    if not (PROJECT_ROOT / "data" / "demo" / "train_list.txt").exists():
        raise SystemExit("The demo corpus is missing: python dataprep.py --demo --save_path data/demo")
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.work or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        runs: dict[str, list[dict]] = {Path(recipe).name: [] for recipe in args.recipes}
        for seed in args.seeds:
            for recipe in args.recipes:
                runs[Path(recipe).name].append(run_recipe(PROJECT_ROOT / recipe, seed, folder))
    lines = summary(runs, Path(args.recipes[0]).name)
    print("\n".join(lines))
    save_json(RESULTS, {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
                        "runs": runs, "summary": lines})


if __name__ == "__main__":
    main()
