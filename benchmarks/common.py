"""Small helpers shared by benchmark scripts: where results go, and the machine they were measured on."""

from __future__ import annotations

import contextlib
import json
import math
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


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinity replaced by None: they are not JSON, and strict parsers (browsers,
    jq, most languages) reject a file that holds them. Callers say in a note what null means."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        return json_safe(obj.item())  # numpy scalars
    return obj


def publish_result(name: str, result: dict[str, Any], markdown: str, out_dir: Path | None = None) -> Path:
    """:func:`write_result`, then print the markdown and where it went (what every benchmark's ``main`` ends with)."""
    path = write_result(name, result, markdown, out_dir)
    print(markdown)
    print(f"written: {path}")
    return path


def write_result(name: str, result: dict[str, Any], markdown: str | None = None, out_dir: Path | None = None) -> Path:
    """Write ``<name>.json`` (and ``<name>.md``) under the results folder; returns the JSON path.

    The JSON also records the faithful patient's model id (:func:`mediq_env.patient.patient_model_id`):
    the patient every doctor figure depends on, which a refit of its head changes."""
    from mediq_env.patient import patient_model_id

    out = out_dir or RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    stamped = {"machine": machine(), "faithful_patient_model": patient_model_id("faithful"), **result}
    path.write_text(json.dumps(json_safe(stamped), indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    if markdown is not None:
        (out / f"{name}.md").write_text(markdown, encoding="utf-8")
    return path
