"""One tiny checkpoint per test session (building it takes ~1 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from phi3v_train.model import create_tiny_checkpoint

    return create_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def processor(tiny_dir: Path):
    from phi3v_train.model import Phi3VProcessor

    return Phi3VProcessor.from_pretrained(tiny_dir, num_crops=1)  # 313 tokens per image keeps tests fast


@pytest.fixture()
def model(tiny_dir: Path):
    from phi3v_train.model import Phi3VForCausalLM

    return Phi3VForCausalLM.from_pretrained(tiny_dir).eval()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread start-up and contention on a busy 2-core CI box cost more than they save (~20x here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
