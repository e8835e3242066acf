"""Writing a benchmark's JSON results atomically."""
import json
from pathlib import Path

from runtime.atomic_files import write_text


def save_json(path: Path, report: dict) -> None:
    """Write `report` to `path` through a temporary file, then say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
