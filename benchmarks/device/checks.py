"""The in-process checks of the device run, one per subcommand; ``run_device.py`` runs each as its own process.

Every subcommand writes one JSON object to ``--result``: ``{"ok": bool, "reason": str, ...details}``. A check that
runs but finds a problem (logits that disagree) is ``ok: false`` with the reason; an exception is caught here, its
traceback printed to stderr (the step's log) and its one-line form written as the reason. Run from the repository
root with the project importable (``run_device.py`` sets ``PYTHONPATH``).

    python benchmarks/device/checks.py env --result env.json
    python benchmarks/device/checks.py sample --out SRC --result sample.json
    python benchmarks/device/checks.py build --preset phi-3.5-vision --out CKPT --result build.json
    python benchmarks/device/checks.py attention --model CKPT --num-crops 16 --result attention.json
    python benchmarks/device/checks.py bench --model CKPT --strategy lora --result bench-lora.json
    python benchmarks/device/checks.py export --merged MERGED --adapter RUN/final --data DATA.jsonl --result export.json
    python benchmarks/device/checks.py table --result table.json bench-*.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FIXTURE_CONFIG = REPO / "tests" / "fixtures" / "phi-3.5-vision-instruct" / "config.json"

# sdpa and eager run the same weights; they may differ only by rounding. In fp32 that is the order of additions
# (≤ 1e-4 relative). In bf16 (8 significant bits) both differ from the exact result by about as much as bf16 differs
# from fp32, so the bar is twice the eager bf16 run's distance from an fp32 run of the same weights, and at least 1e-2.
FP32_TOLERANCE = 1e-4
BF16_FLOOR = 1e-2


PACKAGES = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "pydantic", "pydantic-core",
            "bitsandbytes", "flash-attn", "deepspeed", "numpy", "pillow", "click", "rich", "pyyaml", "tensorboard",
            "huggingface-hub")


class CheckFailed(Exception):
    """The check ran and found a problem; the message is the row's reason."""


MODULES = {"pydantic-core": "pydantic_core", "flash-attn": "flash_attn", "pillow": "PIL", "pyyaml": "yaml",
           "huggingface-hub": "huggingface_hub"}


def _version(name: str) -> str | None:
    """The installed version, or None when the package's module cannot be found (missing, or hidden)."""
    try:
        if importlib.util.find_spec(MODULES.get(name, name)) is None:
            return None
        return importlib.metadata.version(name)
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        return None


def env(args: argparse.Namespace) -> dict[str, Any]:
    """Versions of what the run uses, and what torch sees of the accelerator."""
    import platform

    import torch

    versions = {name: _version(name) for name in PACKAGES}
    info: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "versions": versions, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "flash_attn_importable": importlib.util.find_spec("flash_attn") is not None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    memory_gb=round(props.total_memory / 1e9, 1), multiprocessors=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version())
    else:
        info["device"] = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    missing = [name for name in ("torch", "transformers", "peft", "accelerate", "pydantic") if versions[name] is None]
    if missing:
        raise CheckFailed(f"missing: {', '.join(missing)}")
    info["summary"] = f"{info['device']}; torch {versions['torch']}, transformers {versions['transformers']}"
    return info


# Questions in the official DocVQA annotation layout (spdocvqa_qas/*_v1.0_withQT.json), one per synthetic page.
SAMPLE_QUESTIONS = [
    ("What is the total amount due?", ["$1,234.56", "1,234.56"], ["table/list"]),
    ("What is the date on the invoice?", ["March 3, 1998", "3/3/98"], ["form"]),
    ("Who is the invoice addressed to?", ["R. J. Reynolds"], ["layout"]),
    ("What is the invoice number?", ["4471-B"], ["form"]),
    ("What is the page number?", ["2"], ["others"]),
]


def sample(args: argparse.Namespace) -> dict[str, Any]:
    """A small DocVQA source in the official layout: train (4 pages, one question each) and val (1), with pages
    drawn like ``phi3v-train bench``'s synthetic documents, for ``phi3v-data convert docvqa``."""
    from phi3v_train.bench import synthetic_page

    width, height = _page(args.page)
    qas, documents = args.out / "spdocvqa_qas", args.out / "documents"
    qas.mkdir(parents=True, exist_ok=True)
    documents.mkdir(parents=True, exist_ok=True)
    splits = {"train": SAMPLE_QUESTIONS[:4], "val": SAMPLE_QUESTIONS[4:]}
    question_id = 49150
    for split, questions in splits.items():
        data = []
        for index, (question, answers, types) in enumerate(questions):
            question_id += 1
            stem = f"{split}{index:04d}_{index + 1}"
            synthetic_page(width, height, seed=question_id).save(documents / f"{stem}.png")
            data.append({"questionId": question_id, "question": question, "question_types": types,
                         "image": f"documents/{stem}.png", "docId": 14000 + question_id, "ucsf_document_id": stem[:-2],
                         "ucsf_document_page_no": str(index + 1), "answers": answers, "data_split": split})
        (qas / f"{split}_v1.0_withQT.json").write_text(
            json.dumps({"dataset_name": "docvqa", "dataset_version": "1.0", "dataset_split": split, "data": data}),
            encoding="utf-8")
    return {"summary": f"DocVQA layout: {len(splits['train'])} train + {len(splits['val'])} val questions, "
                       f"{width}×{height} pages"}


def build(args: argparse.Namespace) -> dict[str, Any]:
    """A random-weight checkpoint of ``--preset``, initialised on ``--device`` (4.15B parameters init in seconds on a
    GPU, minutes on CPU) and written in the official format; the phi-3.5-vision preset is the official config."""
    import torch

    from phi3v_train.model import create_tiny_checkpoint
    from phi3v_train.model.tiny import official_config_dict

    start = time.perf_counter()
    note = ""
    try:
        with torch.device(args.device):
            out = create_tiny_checkpoint(args.out, preset=args.preset, seed=0)
    except Exception as exc:  # noqa: BLE001 - the bench rows need a checkpoint: build it on CPU instead (slower)
        if args.device == "cpu":
            raise
        traceback.print_exc()
        note = f"; built on CPU: on {args.device} {type(exc).__name__}: {str(exc)[:120]}"
        out = create_tiny_checkpoint(args.out, preset=args.preset, seed=0)
    official = official_config_dict() == json.loads(FIXTURE_CONFIG.read_text(encoding="utf-8"))
    size = sum(path.stat().st_size for path in out.glob("*.safetensors"))
    params = sum(json.loads(path.read_text()).get("metadata", {}).get("total_parameters", 0)
                 for path in out.glob("*.safetensors.index.json"))
    return {"summary": f"{args.preset}: {size / 1e9:.2f} GB of weights in {time.perf_counter() - start:.0f} s"
                       + ("; official config = tests/fixtures config.json" if official else "") + note,
            "weights_gb": round(size / 1e9, 3), "parameters": params or None, "official_config": official}


def _workload(model: Path, args: argparse.Namespace, device: str) -> Any:
    from phi3v_train.bench import BenchOptions, make_workload

    options = BenchOptions(model=model, num_crops=args.num_crops, seq_len=args.seq_len, page=_page(args.page))
    return make_workload(model, options, device)


def attention(args: argparse.Namespace) -> dict[str, Any]:
    """sdpa vs eager logits of one checkpoint on one DocVQA-shaped sample (``phi3v_train.bench``'s workload)."""
    import torch

    from phi3v_train.model import Phi3VForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    work = _workload(args.model, args, device)
    inputs = {key: value for key, value in work.inputs.items() if key != "labels"}
    logits = {}
    for implementation in ("sdpa", "eager"):
        # straight onto the GPU (no 8 GB stop in host memory); on CPU it loads where it is used
        model = Phi3VForCausalLM.from_pretrained(args.model, attn_implementation=implementation, dtype=dtype,
                                                 device_map=device if device == "cuda" else None)
        tower = model.model.vision_embed_tokens.img_processor.vision_model
        if tower.config._attn_implementation != implementation:
            raise CheckFailed(f"the vision tower runs {tower.config._attn_implementation}, not {implementation}")
        with torch.no_grad():
            logits[implementation] = model.eval()(**inputs).logits.float()
            if implementation == "eager" and dtype != torch.float32:  # the same weights in fp32: bf16's own error
                logits["fp32"] = model.float()(**inputs).logits.float()
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    sdpa, eager = logits["sdpa"], logits["eager"]
    relative = _relative(sdpa, eager)
    details: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."), "tokens": work.seq_len, "crops": work.crops,
        "relative_l2": relative,
        "max_abs_diff": float((sdpa - eager).abs().max()), "max_abs_logit": float(eager.abs().max()),
        "argmax_agreement": float((sdpa.argmax(-1) == eager.argmax(-1)).float().mean()),
    }
    if dtype == torch.float32:
        details["tolerance"] = FP32_TOLERANCE
        bar = f"≤ {FP32_TOLERANCE:g}"
    else:
        details["bf16_vs_fp32"] = _relative(eager, logits["fp32"])
        details["tolerance"] = max(BF16_FLOOR, 2 * details["bf16_vs_fp32"])
        bar = f"≤ {details['tolerance']:.2g} = max(1e-2, 2 × bf16-vs-fp32 {details['bf16_vs_fp32']:.2e})"
    details["summary"] = (f"{details['dtype']}, {work.seq_len} tokens, {work.crops} crops: relative L2 {relative:.2e} "
                          f"({bar}), max |Δ| {details['max_abs_diff']:.3g} "
                          f"of |logit| ≤ {details['max_abs_logit']:.3g}, "
                          f"argmax agrees on {details['argmax_agreement']:.1%}")
    if not relative <= details["tolerance"]:
        raise CheckFailed(details["summary"], details)
    return details


def _relative(a: Any, b: Any) -> float:
    """‖a − b‖ / ‖b‖ over all logits."""
    return float((a - b).norm() / b.norm())


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """One strategy of ``phi3v-train bench`` (every attention kernel asked for), with ``plan``'s memory estimate."""
    from dataclasses import asdict

    import torch

    from phi3v_train.bench import BenchOptions, run_bench
    from phi3v_train.memory import Architecture
    from phi3v_train.plan import GPUS, make_plan
    from phi3v_data.tokens import hd_grid

    options = BenchOptions(
        model=args.model, strategies=[args.strategy], attention=args.attention, batch=args.batch, steps=args.steps,
        warmup=args.warmup, num_crops=args.num_crops, seq_len=args.seq_len, page=_page(args.page),
        gradient_checkpointing=True,
    )
    if args.strategy == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise CheckFailed("bitsandbytes is not installed (its wheel did not travel): no QLoRA row", {"skip": True})
    report = run_bench(options)
    width, height = hd_grid(*options.page, options.num_crops)
    crops = (width // 336) * (height // 336) + 1
    gpu = GPUS["h200"] if "H200" in report.device.upper() else GPUS["h100"]
    arch = Architecture.from_config(json.loads((args.model / "config.json").read_text(encoding="utf-8")))
    plan = make_plan(gpus=1, gpu=gpu, strategy=args.strategy, seq_len=options.seq_len, crops=crops, arch=arch)
    estimate = next(row.estimate for row in plan.rows if row.strategy == args.strategy)
    result = {
        "report": asdict(report), "plan_estimate_gb": estimate.total, "plan_parts_gb": estimate.parts,
        "plan_command": f"phi3v-train plan --gpus 1 --gpu {gpu.name.lower()} --strategy {args.strategy} "
                        f"--seq-len {options.seq_len} --crops {crops}",
        "cuda": torch.cuda.is_available(),
    }
    done = [row for row in report.rows if row.images_per_s]
    cells = [f"{row.attention}: {row.images_per_s:.3g} img/s, {row.peak_memory_gb:.1f} GB" if row.images_per_s
             else f"{row.attention}: failed ({row.note})" for row in report.rows]
    result["summary"] = "; ".join(cells + [f"skipped {note}" for note in report.skipped])
    if not done:
        raise CheckFailed(result["summary"] or "no configuration ran", result)
    return result


def export(args: argparse.Namespace) -> dict[str, Any]:
    """The merged export loads through the Auto classes and gives the unmerged adapter's logits on a dataset record."""
    import torch
    from PIL import Image
    from transformers import AutoModelForCausalLM

    import phi3v_train.model  # noqa: F401 - registers the model with the Auto classes
    from phi3v_train.loading import load_model, load_processor, resolve_model_dir

    device = "cuda" if torch.cuda.is_available() else "cpu"
    record = json.loads(args.data.read_text(encoding="utf-8").splitlines()[0])
    turn = record["conversations"][0]
    images = [Image.open(args.data.parent / "images" / path).convert("RGB") for path in turn["images"]]
    adapter_dir = resolve_model_dir(args.adapter)
    adapted, base = load_model(adapter_dir, dtype="fp32", merge=False)  # base + LoRA layers, as trained
    processor = load_processor(adapter_dir, base, num_crops=args.num_crops)
    adapted = adapted.to(device).eval()
    merged = AutoModelForCausalLM.from_pretrained(args.merged, dtype=torch.float32).to(device).eval()
    user = turn["user"] if "<|image_1|>" in turn["user"] else "<|image_1|>\n" + turn["user"]  # images go first
    prompt = processor.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True)
    inputs = processor(prompt, images=images).to(device)
    with torch.no_grad():
        a, b = adapted(**inputs).logits, merged(**inputs).logits
        with adapted.disable_adapter():
            plain = adapted(**inputs).logits
    relative, moved = _relative(b, a), _relative(plain, a)
    details = {"relative_l2": relative, "tolerance": 1e-3, "adapter_moves_logits": moved,
               "class": type(merged).__name__,
               "summary": f"{type(merged).__name__} from {args.merged.name}/ (Auto classes): logits match the unmerged "
                          f"adapter's within {relative:.1e} (≤ 1e-3, fp32); the adapter moves them by {moved:.1e}"}
    if not relative <= 1e-3:
        raise CheckFailed(details["summary"], details)
    if not moved > 10 * relative:
        raise CheckFailed(f"the adapter changes nothing to compare: {details['summary']}", details)
    return details


def table(args: argparse.Namespace) -> dict[str, Any]:
    """The speed table of all bench results, rendered by ``phi3v_train.bench`` (one table, one speed-up column)."""
    from phi3v_train.bench import BenchReport, BenchRow, render_markdown

    reports = [json.loads(Path(path).read_text(encoding="utf-8")).get("report") for path in args.inputs]
    reports = [report for report in reports if report]
    if not reports:
        raise CheckFailed("no bench step produced rows", {"skip": True})
    first = reports[0]
    merged = BenchReport(**{**first, "rows": [], "skipped": []})
    for report in reports:
        merged.rows += [BenchRow(**row) for row in report["rows"]]
        merged.skipped += [note for note in report["skipped"] if note not in merged.skipped]
    return {"markdown": render_markdown(merged), "summary": f"{len(merged.rows)} rows"}


def _page(value: str) -> tuple[int, int]:
    width, height = (int(part) for part in value.lower().split("x"))
    return width, height


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="check", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], dict[str, Any]]) -> argparse.ArgumentParser:
        command = sub.add_parser(name)
        command.set_defaults(handler=handler)
        command.add_argument("--result", type=Path, required=True, help="JSON file the outcome is written to.")
        return command

    def shape(command: argparse.ArgumentParser) -> None:
        command.add_argument("--num-crops", type=int, default=16)
        command.add_argument("--seq-len", type=int, default=2443)
        command.add_argument("--page", default="1320x2200")

    add("env", env)
    command = add("sample", sample)
    command.add_argument("--out", type=Path, required=True)
    command.add_argument("--page", default="660x1100")
    command = add("build", build)
    command.add_argument("--preset", default="phi-3.5-vision")
    command.add_argument("--out", type=Path, required=True)
    command.add_argument("--device", default="cpu")
    command = add("attention", attention)
    command.add_argument("--model", type=Path, required=True)
    command.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    shape(command)
    command = add("bench", bench)
    command.add_argument("--model", type=Path, required=True)
    command.add_argument("--strategy", required=True, choices=("full", "frozen-vision", "lora", "qlora"))
    command.add_argument("--attention", nargs="+", default=["sdpa", "flash_attention_2"])
    command.add_argument("--batch", type=int, default=1)
    command.add_argument("--steps", type=int, default=5)
    command.add_argument("--warmup", type=int, default=2)
    shape(command)
    command = add("export", export)
    command.add_argument("--merged", type=Path, required=True)
    command.add_argument("--adapter", type=Path, required=True)
    command.add_argument("--data", type=Path, required=True)
    command.add_argument("--num-crops", type=int, default=4)
    command = add("table", table)
    command.add_argument("inputs", nargs="*")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        result = {"ok": True, "reason": "", **args.handler(args)}
    except CheckFailed as exc:
        details = exc.args[1] if len(exc.args) > 1 else {}
        result = {**details, "ok": False, "reason": str(exc.args[0])}
    except BaseException as exc:  # noqa: BLE001 - any failure becomes the row's reason; the traceback goes to the log
        traceback.print_exc()
        result = {"ok": False, "reason": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
        if isinstance(exc, KeyboardInterrupt):
            raise
    result["seconds"] = round(time.perf_counter() - started, 2)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    temp = args.result.with_suffix(".tmp")
    temp.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    temp.replace(args.result)
    print(result.get("summary") or result["reason"], flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
