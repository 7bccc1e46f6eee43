from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The public MediQ data beside the checkout; tests using it skip cleanly where it is absent."""
    if not (SHARED_DATA / "mediq_askdocs_dev.jsonl").exists():
        pytest.skip(f"public data not found at {SHARED_DATA}")
    return SHARED_DATA


def good_record(**overrides: object) -> dict:
    record = {
        "id": "c1",
        "initial_info": "A 40-year-old man who smokes has lost weight.",
        "atomic_facts": ["The patient is 40 years old.", "The patient smokes 20 cigarettes a day.", "The patient has lost 6 kg."],
        "question": "What is the most likely diagnosis?",
        "options": {"A": "Asthma", "B": "Lung cancer", "C": "Pneumonia", "D": "Reflux"},
        "answer_idx": "B",
        "answer": "Lung cancer",
    }
    record.update(overrides)
    return record


@pytest.fixture
def write_jsonl(tmp_path: Path):
    def write(records: list, name: str = "cases.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy shared CPU torch's spinning workers make them
    many times slower; the setting is restored for other test modules."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal LM and tokenizer built locally from a config (no hub), shared by a test module."""
    from mediq_env.backends.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny"), seed=0)
