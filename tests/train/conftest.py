"""Fixtures of the training tests: the tiny model (once per session) and a tiny dataset (per test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import make_tiny_model, write_dataset


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model helper's tiny random checkpoint (created once per test session)."""
    return make_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")
