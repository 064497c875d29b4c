"""The speed table: the FLOP formula on hand-computed examples, prompt fitting, and one tiny CPU run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from phi3v_train.bench import COLUMNS, docvqa_record, fit_prompt
from phi3v_train.cli.bench import bench
from phi3v_train.flops import FlopPart, flop_parts, mfu, training_flops


def test_step_flops_by_hand() -> None:
    # N=10 params, T=4 tokens, 1 layer of width 2 attending over S=4 in 1 sequence, everything trainable:
    # forward linear 2·10·4 = 80 (×2 with activation grads), attention 4·1·2·16 = 128 (×3), weight grads 2·10·4 = 80.
    full = FlopPart("lm", params=10, trainable=10, tokens=4, layers=1, width=2, attn_len=4, sequences=1,
                    grads_flow=True)
    assert full.step_flops() == 80 * 2 + 128 * 3 + 80 == 624
    frozen = FlopPart("tower", params=10, trainable=0, tokens=4)  # no grads flow: forward only
    assert frozen.step_flops() == 80
    lora = FlopPart("lm", params=10, trainable=1, tokens=4, grads_flow=True)  # activation grads + 1 adapter weight
    assert lora.step_flops() == 80 * 2 + 2 * 1 * 4 == 168
    assert training_flops([full, frozen, lora]) == 872
    assert mfu(872, 2.0, 436.0) == 1.0
    assert mfu(872, 2.0, None) is None


def test_full_finetuning_is_six_n_t_and_lora_about_four() -> None:
    n, t = 1_000_000, 2443
    assert FlopPart("x", n, n, t, grads_flow=True).step_flops() == 6 * n * t
    assert FlopPart("x", n, 0, t, grads_flow=True).step_flops() == 4 * n * t


def test_flop_parts_count_577_tokens_per_crop_and_stop_gradients_at_a_frozen_tower() -> None:
    config = SimpleNamespace(
        num_hidden_layers=2, hidden_size=8,
        vision_config=SimpleNamespace(image_size=336, patch_size=14, num_hidden_layers=3, hidden_size=4),
    )
    base = {"vision": 100, "projector": 10, "language model": 1000}
    trainable = {"vision": 0, "projector": 10, "language model": 1000}  # frozen-vision
    vision, projector, lm = flop_parts(config, base, trainable, crops=17, batch=2, seq_len=2443)
    assert (vision.tokens, vision.attn_len, vision.sequences, vision.grads_flow) == (17 * 577, 577, 17, False)
    assert (projector.tokens, projector.grads_flow) == (17 * 144, True)
    assert (lm.tokens, lm.attn_len, lm.sequences, lm.layers, lm.width) == (4886, 2443, 2, 2, 8)
    assert vision.step_flops() == 2 * 100 * 17 * 577 + 4 * 3 * 4 * 577**2 * 17


def test_fit_prompt_reaches_the_target_with_a_word_tokenizer() -> None:
    encode = lambda text: [7] * len(text.split())  # noqa: E731 - one token per word
    encoded = fit_prompt(docvqa_record, encode=encode, image_tokens=[50], bos_id=1, target=300)
    assert len(encoded) == 300
    assert encoded.input_ids.count(-1) == 50 and encoded.input_ids[0] == 1
    assert sum(label != -100 for label in encoded.labels) == 2  # "$1,234.56<|end|>\n<|endoftext|>" → 2 words


def test_tiny_cpu_bench_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    args = ["--preset", "tiny", "--strategy", "lora", "--attention", "sdpa", "--steps", "1", "--warmup", "1",
            "--num-crops", "1", "--page", "336x336", "--seq-len", "400", "--peak-flops", "1e12", "--out", str(out)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| training method"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == list(COLUMNS)
    rows = [line for line in lines if line.startswith("| lora")]
    assert len(rows) == 1
    method, gpus, flash, batch, img_s, speedup, memory, tok_s, mfu_cell = (
        c.strip() for c in rows[0].strip("|").split("|"))
    assert (method, gpus, flash, batch, speedup) == ("lora", "0 (CPU)", "no (sdpa)", "1", "1.00×")
    assert float(img_s) > 0 and float(memory) > 0 and float(tok_s.replace(",", "")) > 0
    assert mfu_cell.endswith("%") and float(mfu_cell[:-1]) > 0
    assert "1 crops" not in out.read_text() and "2 crops" in out.read_text()  # 1×1 grid + global view
    assert "MFU = model FLOPs per step" in out.read_text()


def test_full_size_preset_without_gpu_is_a_clear_error() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(bench, ["--preset", "phi-3.5-vision", "--out", "x.md"])
    assert result.exit_code == 1
    assert "needs a CUDA GPU" in result.output and "Traceback" not in result.output


def test_bad_page_is_a_usage_error() -> None:
    result = CliRunner().invoke(bench, ["--page", "big"])
    assert result.exit_code == 2 and "WIDTHxHEIGHT" in result.output
