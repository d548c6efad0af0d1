"""Writing a benchmark's result: the one way every bench stores its JSON under bench/results/.

Owns `write_result`. Must not touch: measuring (each bench module measures; this only stores).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_result(path: str | Path, result: Any) -> Path:
    """Write `result` as indented JSON to `path` (its folder made if missing) and say so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
