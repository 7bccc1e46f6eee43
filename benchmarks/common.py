"""Small helpers shared by benchmark scripts: where results go, and the machine they were measured on."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DATA_DIR = Path(__file__).resolve().parent / "data"


def machine() -> dict[str, Any]:
    """What a figure was measured on: a benchmark result without it cannot be compared."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for pkg in ("mediq-env", "numpy", "bm25s", "torch", "transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[pkg] = metadata.version(pkg)
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        info["git"] = None
    return info


def write_result(name: str, result: dict[str, Any], markdown: str | None = None, out_dir: Path | None = None) -> Path:
    """Write ``<name>.json`` (and ``<name>.md``) under the results folder; returns the JSON path."""
    out = out_dir or RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if markdown is not None:
        (out / f"{name}.md").write_text(markdown, encoding="utf-8")
    return path
