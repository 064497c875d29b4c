"""``phi3v-train predict``: one question from a LoRA run, a merged export and a full checkpoint; a batch with p_yes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from phi3v_train.cli import main
from phi3v_train.config import load_config
from phi3v_train.evaluate import evaluate, load_records
from phi3v_train.loading import load_for_inference
from phi3v_train.merge import merge_adapter
from phi3v_train.predict import Answer, Predictor, generation_settings
from phi3v_train.train import run
from train_fixtures import COLORS, run_flags, write_dataset

QUESTION = "What color is the image?"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    """A LoRA run's final/ (adapter), its merged export, and a full-finetuning run directory (final/ inside)."""
    root = tmp_path_factory.mktemp("predict")
    data = write_dataset(root / "data", count=4)
    lora = run(load_config(flags=run_flags(data, tiny_model, root / "lora", strategy="lora", lr=1e-2, max_steps=2)))
    full = run(load_config(flags=run_flags(data, tiny_model, root / "full", max_steps=1)))
    export = merge_adapter(lora.final_dir, out=root / "export")
    return {"lora": lora.final_dir, "export": export, "full": full.run_dir}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "page.png"
    Image.new("RGB", (48, 36), COLORS["red"]).save(path)
    return path


def _eval_answer(model_dir: Path, image: Path, question: str = QUESTION, *, task: str = "binary") -> tuple[str, float]:
    """What `phi3v-train eval` answers for the same image and question as a dataset record (and its P(yes))."""
    model, processor = load_for_inference(model_dir, num_crops=1)
    path = image.parent / "one.jsonl"
    path.write_text(json.dumps({"id": "q", "task": task,
                                "conversations": [{"images": [image.name], "user": question}]}))
    row = evaluate(model, processor, load_records([path]), images_root=image.parent, num_crops=1, max_new_tokens=8,
                   progress=False, score=False).rows[0]
    return row["prediction"], row["p_yes"]


def _predict(*args: str) -> tuple[int, str]:
    """(exit code, stdout) of the command, or (exit code, all output) when it failed."""
    result = CliRunner().invoke(main, ["predict", "--num-crops", "1", "--max-new-tokens", "8", *args])
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


@pytest.mark.parametrize("kind", ["lora", "export", "full"])
def test_predict_answers_one_image_as_eval_would(kind: str, models: dict[str, Path], page: Path) -> None:
    code, output = _predict("--model", str(models[kind]), "--image", str(page), "--json", QUESTION)
    assert code == 0, output
    printed = json.loads(output)
    text, p_yes = _eval_answer(models[kind] / "final" if kind == "full" else models[kind], page)
    assert printed["answer"] == text
    assert printed["p_yes"] == pytest.approx(p_yes, abs=1e-6)
    code, plain = _predict("--model", str(models[kind]), "--image", str(page), QUESTION)
    assert (code, plain) == (0, text + "\n")


def test_adapter_and_its_export_agree_and_differ_from_the_base(models: dict[str, Path], page: Path,
                                                                tiny_model: Path) -> None:
    adapter = Predictor.load(models["lora"], num_crops=1, max_new_tokens=8).answer(QUESTION, images=[page])
    merged = Predictor.load(models["export"], num_crops=1, max_new_tokens=8).answer(QUESTION, images=[page])
    base = Predictor.load(tiny_model, num_crops=1, max_new_tokens=8).answer(QUESTION, images=[page])
    assert isinstance(adapter, Answer) and adapter.text == merged.text
    assert adapter.p_yes == pytest.approx(merged.p_yes, abs=1e-5)
    assert abs(adapter.p_yes - base.p_yes) > 1e-4  # the adapter was applied, not just the base loaded


def test_batch_writes_one_line_per_record_with_p_yes_for_binary(models: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "memes"
    (root / "images" / "test").mkdir(parents=True)
    records = []
    for index, color in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (40, 30), COLORS[color]).save(root / "images" / "test" / f"{color}.png")
        task = "classification" if color == "green" else "binary"
        records.append({"id": f"test-{index}", "task": task,
                        "conversations": [{"images": [f"test/{color}.png"], "user": "Is this hateful? yes or no"}]})
    (root / "memes_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "preds.jsonl"
    code, output = _predict("--model", str(models["export"]), "--data", str(root / "memes_test.jsonl"),
                            "--output", str(out), "-q")
    assert code == 0, output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["id"], row["turn"], row["task"]) for row in rows] == [
        ("test-0", 0, "binary"), ("test-1", 0, "binary"), ("test-2", 0, "classification")]
    assert ["p_yes" in row for row in rows] == [True, True, False]
    assert not any(key in row for row in rows for key in ("correct", "references", "label"))  # nothing scored
    single = _eval_answer(models["export"], root / "images" / "test" / "red.png", "Is this hateful? yes or no")
    assert (rows[0]["prediction"], rows[0]["p_yes"]) == (single[0], pytest.approx(single[1], abs=1e-5))
    # A dataset directory works too (split test by default), with the same rows.
    code, _ = _predict("--model", str(models["export"]), "--data", str(root), "--output", str(tmp_path / "b.jsonl"))
    assert code == 0 and (tmp_path / "b.jsonl").read_text() == out.read_text()


def test_sampling_flags_and_seed(models: dict[str, Path], page: Path) -> None:
    assert generation_settings() == {"do_sample": False}
    assert generation_settings(temperature=0) == {"do_sample": False}
    assert generation_settings(top_p=0.9) == {"do_sample": True, "top_p": 0.9}
    assert generation_settings(do_sample=True, temperature=1.5) == {"do_sample": True, "temperature": 1.5}
    args = ["--model", str(models["full"]), "--image", str(page), "--temperature", "5", "--max-new-tokens", "6"]
    first, second = _predict(*args, "--seed", "3", QUESTION), _predict(*args, "--seed", "3", QUESTION)
    assert first[0] == 0 and first == second
    greedy = {_predict("--model", str(models["full"]), "--image", str(page), QUESTION)[1] for _ in range(2)}
    assert len(greedy) == 1


def test_predict_refuses_unclear_requests_with_a_message(page: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert _predict("--model", "m", "--image", str(page))[0] == 2  # no question
    code, output = _predict("--model", "m", "--data", str(page), QUESTION)
    assert code == 2 and "give either a QUESTION" in output
    code, output = _predict("--model", "m", "--data", str(page))
    assert code == 2 and "drop --image, give --out" in output  # the documented spelling (--output works too)
    code, output = _predict("--model", str(tmp_path / "nope"), "--image", str(page), QUESTION)
    assert code == 1 and f"{tmp_path / 'nope'}: no such model directory, and not a Hub id (org/name)" in output
    from phi3v_train.model import Phi3VForCausalLM

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(Phi3VForCausalLM, "from_pretrained", offline)
    code, output = _predict("--model", "someone/phi35v-memes", "--image", str(page), QUESTION)
    assert code == 1 and "someone/phi35v-memes: cannot load this Hub model" in output
    assert "must be in the local Hugging Face cache" in output


def test_device_and_precision_defaults_and_the_flash_attention_rule() -> None:
    from phi3v_train.loading import device_and_precision

    # a GPU's default precision is bf16, which flash attention needs: no refusal (predict used to refuse this)
    assert device_and_precision("cuda", None, "flash_attention_2") == ("cuda", "bf16")
    assert device_and_precision("cpu", None, "sdpa") == ("cpu", "fp32")
    with pytest.raises(ValueError, match=r"needs --precision bf16 \(got fp32\)"):
        device_and_precision("cpu", None, "flash_attention_2")
    with pytest.raises(ValueError, match=r"\(got fp16\)"):
        device_and_precision("cuda", "fp16", "flash_attention_2")
