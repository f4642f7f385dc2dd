from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, os.cpu_count() or 1))

from tiny import byte_tokenizer, perturbed, save_folder, tiny_config, tiny_hf_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Folders of a tiny target, a draft near it, a very close one, a poor one, and another vocab."""
    root = tmp_path_factory.mktemp("tiny")
    tok = byte_tokenizer()
    target = tiny_hf_model(tiny_config(layers=2, dim=64), seed=0)
    save_folder(target, root / "target", tok)
    save_folder(perturbed(target, 0.05, seed=1), root / "draft", tok)
    save_folder(perturbed(target, 0.005, seed=4), root / "close", tok)
    save_folder(perturbed(target, 0.3, seed=2), root / "poor", tok)
    other = tiny_hf_model(tiny_config(vocab=300), seed=3)
    other_tok = byte_tokenizer()
    other_tok.add_tokens([f"extra{i}" for i in range(41)])
    save_folder(other, root / "othervocab", other_tok)
    return root


def pytest_configure(config):
    config.addinivalue_line("markers", "real: uses the real default models (pulled into the user's cache)")


@pytest.fixture(autouse=True)
def _isolated_home(request, tmp_path, monkeypatch):
    """Tests never write to the user's model cache, except real-model tests (marked ``real``)."""
    if request.node.get_closest_marker("real") is None:
        monkeypatch.setenv("SPECROUTER_HOME", str(tmp_path / "home"))
