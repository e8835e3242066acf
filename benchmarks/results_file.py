"""Writing a benchmark's JSON results atomically."""
import json
from pathlib import Path


def save_json(path: Path, report: dict) -> None:
    """Write `report` to `path` through a temporary file, then say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(path)
    print(f"wrote {path}")
