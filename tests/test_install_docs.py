"""The README's install command and .ci/run must install the same way, so CI tests what users run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_command() -> str:
    """The one-line command in the first ```bash block of the README's "1. Install" step."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    step = text.index("**1. Install")
    match = re.search(r"```bash\n(.*?)\n```", text[step:], re.S)
    assert match, "README step 1 has no ```bash block"
    lines = [line for line in match.group(1).splitlines() if line.strip()]
    assert len(lines) == 1, f"README step 1 should be one command, found {len(lines)} lines"
    return lines[0]


def is_pip_install(argv: list[str]) -> bool:
    return argv[:2] == ["pip", "install"] or (
        argv[:1] in (["python"], ["python3"]) and argv[1:4] == ["-m", "pip", "install"]
    )


def install_steps(commands: list[str]) -> list[list[str]]:
    # Compared as argument lists, so quoting or spacing differences do not count but any flag does.
    return [argv for argv in map(shlex.split, commands) if is_pip_install(argv)]


def test_ci_installs_exactly_as_the_readme() -> None:
    readme = [part.strip() for part in readme_command().split("&&")]
    ci = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    readme_steps, ci_steps = install_steps(readme), install_steps(ci)
    assert readme_steps, "no pip install found in README step 1"
    assert ci_steps == readme_steps, f"README installs {readme_steps}, .ci/run installs {ci_steps}"
    # Both start from a fresh venv made the same way, and the README ends by running the main job.
    assert readme[0].startswith("python3 -m venv ")
    assert any(line.startswith("python3 -m venv ") for line in ci)
    assert readme[-1].startswith("mediq bench ")


def test_install_steps_ignore_quoting_but_not_flags() -> None:
    a = install_steps(["pip install -e '.[hf,dev]'", "echo hi"])
    assert a == install_steps(['pip  install -e ".[hf,dev]"'])
    assert a != install_steps(["pip install --quiet -e '.[hf,dev]'"])
