"""Shared fixtures of the animation tests: a small synthetic corpus and a model trained on it once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmface4d_stream.animate.synthetic import write_synthetic_corpus


@pytest.fixture(autouse=True)
def one_torch_thread(single_torch_thread):
    """Every animate test on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(train folder: 4 subjects x 5 sequences of 4 s, held-out folder: the same subjects, 2 new seeds each)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("animate_corpus")
    write_synthetic_corpus(root / "train", subjects=4, sequences_per_subject=5, seconds=4.0, first_seed=0,
                           progress=False)
    write_synthetic_corpus(root / "heldout", subjects=4, sequences_per_subject=2, seconds=4.0, first_seed=500,
                           progress=False)
    return root / "train", root / "heldout"


@pytest.fixture(scope="session")
def trained_model(synthetic_corpus, tmp_path_factory) -> Path:
    """A small model trained for a few epochs on the synthetic corpus (~20 s on one core)."""
    from mmface4d_stream.animate.train import TrainConfig, train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("animate_model") / "model.pt"
    config = TrainConfig(epochs=12, hidden=48, n_components=12, batch_size=8, val_fraction=0.25, seed=0)
    train([synthetic_corpus[0]], out, config, progress=False)
    return out
