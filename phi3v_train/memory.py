"""How much GPU memory a Phi-3.5-vision finetuning run needs, per GPU, from sizes alone (no torch).

Per GPU, in GB (10⁹ bytes), for one micro-batch of ``seq_len`` tokens whose images are ``crops`` 336-px crops:

=================  ====================================================================================================
weights            every parameter at the dtype it is held in (4-bit NF4 = 0.5 B + 1/64 B of absmax per parameter,
                   1/256 B with double quantization); ZeRO-3 divides by the GPU count and adds the gathered layers
gradients          trainable × (4 B in fp32, 2 B under DeepSpeed, which casts the model to bf16/fp16), twice under
                   DDP (its buckets copy them); ZeRO-2/3: the 2-byte partition and the 4-byte fp32 one of the step
optimizer          AdamW m and v, 8 B per trainable parameter (+ 4 B fp32 master weights under DeepSpeed), divided by
                   the GPU count under ZeRO-2/3; plus the step's fp32 temporaries (4 B / parameter of the shard)
buffers            DeepSpeed's reduce and all-gather buckets: 2 B × (reduce_bucket_size + allgather_bucket_size),
                   × 4.5 with overlap_comm (DeepSpeed's documented footprint: 9 GB for the 5e8 buckets)
activations        with checkpointing: every decoder layer's input (H per token) + one layer recomputed with its
                   gradients (1.5 × (24·H + 8·I) B per token); without: all layers' (24·H + 8·I) B per token; eager
                   attention adds 8 B × heads × S² per layer held (scores, fp32 softmax, cast back); logits
                   10 B × S × vocab (bf16 logits, fp32 copy for the loss, its gradient). CLIP the same way over
                   crops × 577 tokens, only when gradients flow into it (it or its adapters train)
runtime            CUDA context, cuBLAS workspaces and allocator slack: a constant 1.5 GB
=================  ====================================================================================================

The 24·H + 8·I bytes a decoder layer keeps per token (bf16): RMSNorm in/out 4H twice, q/k after RoPE 4H, flash
attention's q/k/v/out 8H, o_proj input 2H, gate_up output 4I, SiLU·up output 2I, down_proj input 2I — Korthikanti et
al.'s "34·s·b·h" count redone for Phi-3's fused qkv and gated MLP. ``benchmarks/plan_vs_original.md`` compares these
estimates with the original's measured peaks and says where and why they are off.

Parameter counts come from the official ``config.json`` (hidden size, layers, vocabulary); the CLIP ViT-L/14-336 tower
that config only names (``openai/clip-vit-large-patch14-336``) is written out in :data:`CLIP_L_336`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

GB = 1e9
RUNTIME_GB = 1.5
CLIP_L_336 = {"hidden": 1024, "layers": 24, "intermediate": 4096, "heads": 16, "tokens": 577, "patch": 14}
"""openai/clip-vit-large-patch14-336: 24 layers of width 1024 (MLP 4096, 16 heads); a 336-px crop is 24×24 patches
plus the class token. Phi-3.5-vision reads layer -2, so the last layer and post_layernorm never reach the loss."""

Strategy = Literal["full", "frozen-vision", "lora", "qlora"]


@dataclass(frozen=True)
class Architecture:
    """The sizes that decide memory; :meth:`from_config` reads them from a Phi-3.5-vision ``config.json``."""

    hidden: int = 3072
    layers: int = 32
    intermediate: int = 8192
    vocab: int = 32064
    heads: int = 32
    kv_heads: int = 32
    vision: dict[str, int] = field(default_factory=lambda: dict(CLIP_L_336))
    feature_layer: int = -2

    @classmethod
    def from_config(cls, config: dict) -> "Architecture":
        img = config.get("img_processor") or {}
        spelled = img.get("vision_config") or {}  # tiny checkpoints spell their tower out; the official one names it
        vision = {key: spelled.get(name, CLIP_L_336[key]) for key, name in (
            ("hidden", "hidden_size"), ("layers", "num_hidden_layers"), ("intermediate", "intermediate_size"),
            ("heads", "num_attention_heads"), ("tokens", "tokens"), ("patch", "patch_size"))}
        return cls(hidden=config["hidden_size"], layers=config["num_hidden_layers"],
                   intermediate=config["intermediate_size"], vocab=config["vocab_size"],
                   heads=config["num_attention_heads"],
                   kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
                   vision=vision, feature_layer=img.get("layer_idx", -2))

    @property
    def used_vision_layers(self) -> int:
        layers = self.vision["layers"]
        return self.feature_layer if self.feature_layer >= 0 else layers + 1 + self.feature_layer

    def linears(self) -> dict[str, list[tuple[int, int]]]:
        """(in, out) of every linear layer, by part: ``language`` (per decoder layer × layers), ``lm_head``,
        ``vision`` (used CLIP layers only), ``projector``."""
        h, i, v = self.hidden, self.intermediate, self.vision
        head_dim = h // self.heads
        layer = [(h, h + 2 * self.kv_heads * head_dim), (h, h), (h, 2 * i), (i, h)]  # qkv, o, gate_up, down
        clip = [(v["hidden"], v["hidden"])] * 4 + [(v["hidden"], v["intermediate"]), (v["intermediate"], v["hidden"])]
        return {"language": layer * self.layers, "lm_head": [(h, self.vocab)],
                "vision": clip * self.used_vision_layers, "projector": [(4 * v["hidden"], h), (h, h)]}

    def params(self) -> dict[str, int]:
        """Parameters by part, biases and norms included (the unused CLIP tail counted apart)."""
        h, v = self.hidden, self.vision
        lin = self.linears()
        decoder = sum(a * b for a, b in lin["language"]) + self.layers * 2 * h + h  # + RMSNorm weights
        vd = v["hidden"]
        clip_layer = sum(a * b + b for a, b in lin["vision"][:6]) + 4 * vd  # weights, biases, two LayerNorms
        grid = (336 // v["patch"]) ** 2
        clip_embed = 3 * v["patch"] ** 2 * vd + vd + (grid + 1) * vd + 2 * vd  # patch conv, class, positions, pre-LN
        return {
            "language": decoder, "embeddings": self.vocab * h, "lm_head": self.vocab * h,
            "vision": clip_embed + clip_layer * self.used_vision_layers,
            "vision_unused": clip_layer * (v["layers"] - self.used_vision_layers) + 2 * vd,
            "projector": sum(a * b + b for a, b in lin["projector"]) + 2 * 4 * vd,  # + glb_GN, sub_GN
        }


@dataclass(frozen=True)
class Lora:
    rank: int
    lm_head: bool = False
    vision: bool = False
    projector: bool = False


def lora_params(arch: Architecture, lora: Lora) -> int:
    """Adapter parameters: rank × (in + out) per adapted linear (all four decoder linears are assumed adapted)."""
    lin = arch.linears()
    parts = ["language"] + ["lm_head"] * lora.lm_head + ["vision"] * lora.vision + ["projector"] * lora.projector
    return lora.rank * sum(a + b for part in parts for a, b in lin[part])


@dataclass(frozen=True)
class MemorySetup:
    """Everything about a run that moves its memory."""

    strategy: Strategy
    gpus: int = 1
    seq_len: int = 2443
    crops: int = 17
    micro_batch: int = 1
    precision: str = "bf16"
    attention: str = "sdpa"  # eager materialises S×S scores; sdpa and flash do not
    checkpointing: bool = True
    zero: int = 0  # DeepSpeed ZeRO stage; 0 = none (DDP or one GPU)
    reduce_bucket: float = 3072**2  # elements; transformers sets "auto" to hidden²
    allgather_bucket: float = 2e8
    overlap_comm: bool = True
    base_bytes: float = 4.0  # bytes per weight of the (unquantized) base as held during training
    lora: Lora | None = None
    adapter_bytes: float = 4.0
    frozen: frozenset[str] = frozenset()  # parts frozen by frozen-vision
    quantize: frozenset[str] = frozenset()  # qlora: parts in 4 bit
    double_quant: bool = True
    other_bytes: float | None = None  # qlora: bytes of the parts left unquantized (default: base_bytes)
    foreach_step: bool = True  # CUDA AdamW steps all tensors at once (fp32 temporaries of the whole shard)


@dataclass
class Estimate:
    parts: dict[str, float]  # GB per component

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def estimate(arch: Architecture, setup: MemorySetup) -> Estimate:
    """Peak memory per GPU of ``setup`` (see the module docstring for every term)."""
    params = arch.params()
    g = setup.gpus if setup.zero >= 2 else 1
    trainable = _trainable(arch, params, setup)
    weights = _weights(arch, params, setup)
    if setup.zero == 3:
        largest = max(a * b for a, b in arch.linears()["language"]) * 4  # a few layers gathered ahead of use
        weights = weights / setup.gpus + largest * setup.base_bytes
    if setup.zero >= 2:
        grads = trainable * (2 + 4) / g
        optimizer = trainable * (8 + 4) / g
    else:
        held = setup.adapter_bytes if setup.lora else setup.base_bytes
        grads = trainable * held * (2 if setup.gpus > 1 else 1)
        optimizer = trainable * 8
    step = trainable * 4 / g if setup.foreach_step else 0.0
    buffers = 0.0
    if setup.zero >= 2:
        # DeepSpeed's documented footprint: "overlap_comm uses 4.5x the allgather_bucket_size and
        # reduce_bucket_size values" (5e8 each → 9 GB in 2-byte elements); without overlap, one bucket of each
        buckets = setup.reduce_bucket + setup.allgather_bucket
        buffers = 2 * buckets * (4.5 if setup.overlap_comm else 1)
    return Estimate({
        "weights": weights / GB, "gradients": grads / GB, "optimizer": (optimizer + step) / GB,
        "buffers": buffers / GB, "activations": _activations(arch, setup) / GB, "runtime": RUNTIME_GB,
    })


def _trainable(arch: Architecture, params: dict[str, int], setup: MemorySetup) -> float:
    if setup.lora:
        return lora_params(arch, setup.lora)
    used = sum(count for part, count in params.items() if part != "vision_unused")
    return used - sum(params[part] for part in setup.frozen)


def _weights(arch: Architecture, params: dict[str, int], setup: MemorySetup) -> float:
    total = sum(params.values()) * setup.base_bytes
    if setup.quantize:
        per_param = 0.5 + (1 / 256 if setup.double_quant else 1 / 64)
        linear = {part: sum(a * b for a, b in arch.linears()[part]) for part in setup.quantize}
        other = setup.other_bytes if setup.other_bytes is not None else setup.base_bytes
        total = sum(linear.values()) * per_param + (sum(params.values()) - sum(linear.values())) * other
    if setup.lora:
        total += lora_params(arch, setup.lora) * setup.adapter_bytes
    return total


def _activations(arch: Architecture, setup: MemorySetup) -> float:
    b, s = setup.micro_batch, setup.seq_len
    # fp32 weights keep an fp32 residual stream under bf16 autocast (the embedding output is fp32)
    residual = 4 if setup.base_bytes == 4 and setup.precision != "fp16" else 2
    lm = _stack(arch.hidden, arch.intermediate, arch.heads, arch.layers, tokens=b * s, seq=s, sequences=b,
                setup=setup, residual=residual)
    logits = 10 * b * s * arch.vocab
    v = arch.vision
    vision_trains = (setup.lora and setup.lora.vision) or (not setup.lora and "vision" not in setup.frozen)
    crops = b * setup.crops
    if vision_trains:
        vision = _stack(v["hidden"], v["intermediate"], v["heads"], arch.used_vision_layers, tokens=crops * v["tokens"],
                        seq=v["tokens"], sequences=crops, setup=setup, residual=2)
    else:  # forward only: one layer's tensors at a time
        vision = (crops * v["tokens"] * (24 * v["hidden"] + 8 * v["intermediate"])
                  + _scores(v["heads"], v["tokens"], crops, setup))
    return lm + logits + vision


def _stack(hidden: int, inter: int, heads: int, layers: int, *, tokens: int, seq: int, sequences: int,
           setup: MemorySetup, residual: int) -> float:
    wide = 2 if setup.precision == "fp32" else 1  # the 24·H + 8·I count is for 2-byte activations
    per_layer = wide * tokens * (24 * hidden + 8 * inter) + _scores(heads, seq, sequences, setup)
    if not setup.checkpointing:
        return layers * per_layer
    return layers * tokens * hidden * residual + 1.5 * per_layer


def _scores(heads: int, seq: int, sequences: int, setup: MemorySetup) -> float:
    return 8.0 * heads * seq * seq * sequences if setup.attention == "eager" else 0.0


def setup_for(config: object, *, gpus: int, seq_len: int, crops: int) -> MemorySetup:
    """The MemorySetup of a phi3v TrainConfig: how phi3v loads and wraps the model for each strategy."""
    from phi3v_train.config import TrainConfig  # noqa: PLC0415

    assert isinstance(config, TrainConfig)
    zero = 0
    reduce, allgather = 3072.0**2, 2e8
    if config.deepspeed:
        zero = 3 if "zero3" in config.deepspeed else 2
        if config.deepspeed == "zero2-original":
            reduce = allgather = 5e8
    half = config.precision in ("bf16", "fp16")
    common = dict(gpus=gpus, seq_len=seq_len, crops=crops, micro_batch=config.batch_size, precision=config.precision,
                  attention="flash" if config.attention == "flash_attention_2" else config.attention,
                  checkpointing=config.gradient_checkpointing, zero=zero, reduce_bucket=reduce,
                  allgather_bucket=allgather)
    if config.strategy in ("full", "frozen-vision"):
        frozen: set[str] = set()
        if config.strategy == "frozen-vision":
            frozen = {"vision"}
            if config.vision_freeze == "original":
                frozen |= {"projector", "embeddings"}
            elif not config.train_projector:
                frozen.add("projector")
        # fp32 weights under autocast; DeepSpeed casts the module to bf16/fp16 and keeps fp32 masters itself
        return MemorySetup(config.strategy, base_bytes=2 if (zero and half) else 4, frozen=frozenset(frozen), **common)
    lora = Lora(config.lora.rank, lm_head=config.lora.lm_head or "lm_head" in config.lora.targets,
                vision=config.lora.vision, projector=config.lora.projector)
    if config.strategy == "lora":
        return MemorySetup("lora", base_bytes=2 if half else 4, lora=lora, **common)
    quantize = {"language", "vision", "projector"} if config.lora.quantize_vision else {"language"}
    # prepare_model_for_kbit_training casts every unquantized parameter to fp32
    return MemorySetup("qlora", base_bytes=2, lora=lora, quantize=frozenset(quantize),
                       double_quant=config.lora.double_quant, other_bytes=4, **common)


# The original's speed benchmark (FineTuning_Vision.md, "Speed benchmarking (NOTE: Phi-3-vision)"): DocVQA, 2443.23
# tokens on average at num_crops 16, effective batch 64, one sample per GPU. (strategy, flash, GPUs) → peak GB.
ORIGINAL_PEAKS_A100 = {
    ("full", False, 8): 42, ("full", True, 8): 36, ("full", True, 16): 29, ("full", True, 32): 26,
    ("frozen-vision", False, 8): 29, ("frozen-vision", True, 8): 27,
    ("lora", False, 8): 50, ("lora", True, 8): 16, ("qlora", False, 8): 32, ("qlora", True, 8): 10,
}
ORIGINAL_PEAKS_V100 = {  # 8x V100-32GB (Volta: fp16, no flash attention)
    ("full", False, 8): 32, ("full", False, 16): 32, ("full", False, 32): 32,
    ("frozen-vision", False, 8): 27, ("lora", False, 8): 30,
}


def original_setup(strategy: Strategy, *, flash: bool, gpus: int = 8, seq_len: int = 2443,
                   crops: int = 17) -> MemorySetup:
    """How the original scripts held the model in that benchmark.

    ``--use_flash_attention`` loads the weights in bf16 and trains in bf16; without it they load in fp32 and train
    in fp16 with eager attention. Full and frozen-vision runs use DeepSpeed ZeRO-2 with 5e8-element buckets (it
    casts the model to 16 bit); LoRA runs use plain DDP with adapters (script defaults: rank 64) on the language
    model, lm_head, CLIP and the projector, stored in the weights' dtype; QLoRA quantizes every linear but lm_head
    (no double quantization) and leaves the rest in the load dtype.
    """
    common = dict(gpus=gpus, seq_len=seq_len, crops=crops, precision="bf16" if flash else "fp16",
                  attention="flash" if flash else "eager")
    if strategy in ("full", "frozen-vision"):
        frozen = frozenset({"vision", "projector", "embeddings"} if strategy == "frozen-vision" else ())
        return MemorySetup(strategy, zero=2, reduce_bucket=5e8, allgather_bucket=5e8, base_bytes=2, frozen=frozen,
                           **common)
    load = 2 if flash else 4
    lora = Lora(64, lm_head=True, vision=True, projector=True)
    if strategy == "lora":
        return MemorySetup("lora", base_bytes=load, lora=lora, adapter_bytes=load, **common)
    return MemorySetup("qlora", base_bytes=load, lora=lora, adapter_bytes=load, other_bytes=load, double_quant=False,
                 quantize=frozenset({"language", "vision", "projector"}), **common)
