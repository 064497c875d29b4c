"""The core API end to end on the tiny checkpoint: processor → forward → generate."""

from __future__ import annotations

import torch
from PIL import Image

PROMPT = "<|user|>\n<|image_1|>\nWhat is this?<|end|>\n<|assistant|>\n"


def test_forward_with_one_image(tiny_dir, model) -> None:
    from phi3v_train.model import Phi3VProcessor

    processor = Phi3VProcessor.from_pretrained(tiny_dir, num_crops=4)
    batch = processor(PROMPT, [Image.new("RGB", (500, 300), (10, 200, 30))])
    # 500x300 at num_crops 4 → 2x2 grid (672x672): (4+1)*144 + 1 + (2+1)*12 = 757 image tokens
    assert int((batch["input_ids"] == -1).sum()) == 757
    assert batch["image_sizes"].tolist() == [[672, 672]]
    out = model(**batch)
    assert out.logits.shape == (1, batch["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(out.logits).all()
