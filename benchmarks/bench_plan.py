"""``phi3v-train plan``'s memory estimate against the original's measured peaks and against peaks measured here on CPU.

Part 1 (instant): the estimate of :func:`phi3v_train.memory.original_setup` for every row of the original guide's
speed benchmark (8x A100-80GB and 8x V100-32GB, DocVQA shapes: 2443 tokens, 17 crops), next to the peak it reports.

Part 2 (about a minute on 2 cores): a mid-size model (hidden 768, 4 decoder layers, vocabulary 32064; CLIP width
256, 4 layers) runs one training step per strategy on CPU in fp32 — one 672x672 image at num_crops 4 (5 crops, 757
image tokens) in a ``--seq-len`` token sample — each in a fresh process: one step, then one step of two accumulated
micro-batches (optimizer states and gradients alive during a forward pass, as in training with accumulation).
Measured = the process's peak resident set minus its resident set before the model was built; estimate = the same
formula without the 1.5 GB GPU runtime term, and without the foreach AdamW temporaries (CPU steps tensor by tensor).
Run::

    .venv/bin/python benchmarks/bench_plan.py [--seq-len 1024] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phi3v_train.memory import (  # noqa: E402
    ORIGINAL_PEAKS_A100, ORIGINAL_PEAKS_V100, RUNTIME_GB, Architecture, Lora, MemorySetup, estimate, original_setup,
)

MID = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 8,
       "num_key_value_heads": 8}
MID_TOWER = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8,
             "image_size": 336, "patch_size": 14, "hidden_act": "quick_gelu", "projection_dim": 256}
CPU_RUNS = [("full", True), ("full", False), ("frozen-vision", True), ("lora", True)]  # (strategy, checkpointing)


def original_rows() -> list[list[str]]:
    rows = []
    for machine, peaks in (("8x A100-80GB", ORIGINAL_PEAKS_A100), ("8x V100-32GB", ORIGINAL_PEAKS_V100)):
        for (strategy, flash, gpus), measured in peaks.items():
            total = estimate(Architecture(), original_setup(strategy, flash=flash, gpus=gpus)).total
            rows.append([machine, strategy, "flash, bf16" if flash else "eager, fp16", str(gpus), f"~{measured}",
                         f"{total:.1f}", f"{total / measured - 1:+.0%}"])
    return rows


def _mid_config() -> object:
    from phi3v_train.model.configuration_phi3v import Phi3VConfig
    from phi3v_train.model.tiny import preset_config

    settings = preset_config("phi-3.5-vision").to_dict()
    settings.update(MID)
    settings["img_processor"] = {**settings["img_processor"], "image_dim_out": MID_TOWER["hidden_size"],
                                 "vision_config": MID_TOWER}
    return Phi3VConfig(**{k: v for k, v in settings.items() if k not in ("transformers_version", "architectures")})


def _rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e9
    return 0.0


def measure(strategy: str, checkpointing: bool, seq_len: int) -> dict:
    """One training step in this process; peak RSS growth in GB (run it in a fresh process)."""
    import torch
    from PIL import Image

    from phi3v_train.config import load_config
    from phi3v_train.model import Phi3VForCausalLM, Phi3VImageProcessor
    from phi3v_train.model.compat import enable_checkpointing
    from phi3v_train.strategies import apply_strategy

    torch.manual_seed(0)
    torch.set_num_threads(2)
    images = Phi3VImageProcessor(num_crops=4)([Image.new("RGB", (672, 672), (200, 180, 160))], return_tensors="pt")
    image_tokens = 757
    ids = [1] + [-1] * image_tokens + [(7 * i) % 30000 + 100 for i in range(seq_len - image_tokens - 1)]
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, seq_len, dtype=torch.long),
              "pixel_values": images["pixel_values"], "image_sizes": images["image_sizes"],
              "labels": torch.tensor([[-100] * (image_tokens + 1) + ids[image_tokens + 1:]])}
    config = _mid_config()
    before = _rss_gb()
    model = Phi3VForCausalLM(config)
    settings = load_config(flags={"data": ".", "model": "m", "output": ".", "strategy": strategy, "precision": "fp32",
                                  "attention": "sdpa", "lora": {"rank": 16}})
    model = apply_strategy(model, settings)
    model.train()
    if checkpointing:
        enable_checkpointing(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    for micro_batches in (1, 2):  # the second step accumulates two micro-batches, as training does (states exist)
        for _ in range(micro_batches):
            model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return {"measured": peak - before, "config": config.to_dict()}


def cpu_rows(seq_len: int) -> list[list[str]]:
    rows = []
    for strategy, checkpointing in CPU_RUNS:
        out = subprocess.run([sys.executable, __file__, "--measure", strategy, "--seq-len", str(seq_len)]
                             + ([] if checkpointing else ["--no-checkpointing"]),
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        arch = Architecture.from_config(result["config"])
        lora = Lora(16) if strategy == "lora" else None
        frozen = frozenset({"vision"}) if strategy == "frozen-vision" else frozenset()
        setup = MemorySetup(strategy, seq_len=seq_len, crops=5, precision="fp32", attention="sdpa",
                      checkpointing=checkpointing, base_bytes=4, lora=lora, frozen=frozen,
                      foreach_step=False)  # CPU AdamW steps tensor by tensor
        est = estimate(arch, setup)
        total = est.total - RUNTIME_GB
        rows.append([strategy, "on" if checkpointing else "off", f"{result['measured']:.2f}", f"{total:.2f}",
                     f"{total / result['measured'] - 1:+.0%}",
                     f"{est.parts['weights'] + est.parts['gradients'] + est.parts['optimizer']:.2f}",
                     f"{est.parts['activations']:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--skip-cpu", action="store_true", help="Only the comparison with the original.")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--no-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, not args.no_checkpointing, args.seq_len)))
        return
    console = Console(width=120)
    table = Table(title="Estimate vs the original's measured peak GPU memory (GB per GPU, DocVQA shapes)")
    for column in ("machine", "strategy", "attention", "GPUs", "original", "estimate", "off by"):
        table.add_column(column)
    for row in original_rows():
        table.add_row(*row)
    console.print(table)
    if args.skip_cpu:
        return
    cpu = Table(title=f"Estimate vs measured on CPU, fp32, mid-size model, {args.seq_len} tokens + 5 crops (GB)")
    for column in ("strategy", "checkpointing", "measured", "estimate", "off by", "static part", "activations"):
        cpu.add_column(column)
    rows = cpu_rows(args.seq_len)
    for row in rows:
        cpu.add_row(*row)
    console.print(cpu)
    worst = max(rows, key=lambda r: abs(float(r[4].rstrip("%"))))
    console.print(f"CPU: estimates within {abs(float(worst[4].rstrip('%'))):.0f}% of measured peaks "
                  f"(worst: {worst[0]}, checkpointing {worst[1]})")


if __name__ == "__main__":
    main()
