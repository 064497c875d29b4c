"""Random-weight checkpoints in the official Phi-3.5-vision layout, built offline (the Hub is unreachable here).

``tiny``: a few-MB model (2-layer Phi-3 LM, 2-layer CLIP tower at 336 px so the 24×24 → 12×12 grid holds) with a
small BPE tokenizer trained on a built-in corpus; it runs a forward pass in well under a second on CPU.
``phi-3.5-vision``: the real architecture (≈4.15B parameters) with random weights, for speed benchmarks on a GPU;
it is only materialised when written — :func:`preset_config` + the meta device give its size without memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from .configuration_phi3v import Phi3VConfig
from .image_processing_phi3v import Phi3VImageProcessor
from .modeling_phi3v import Phi3VForCausalLM
from .processing_phi3v import Phi3VProcessor

PRESETS = ("tiny", "phi-3.5-vision")

# The official Phi-3.5-vision chat template (tokenizer_config.json).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- '<|assistant|>\n' -}}"
    "{% endif %}"
)
# Phi-3's added tokens in their official order (ids 32000… in the real vocabulary); <|image_k|> tags are NOT tokens.
CHAT_TOKENS = (
    "<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
    "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>", "<|image|>",
)  # fmt: skip
BASE_SPECIALS = ("<unk>", "<s>", "</s>")

_WORDS = """
the a an of to in on at for with and or not is are was were be this that these those it its there here what which
who how many much where when why does do did can could would should will yes no true false answer question image
picture photo video frame document page text table chart figure diagram scene person people man woman child boy
girl dog cat bird horse cow sheep car truck bus bicycle motorcycle airplane boat train street road building house
room kitchen table chair bed sofa window door tree grass sky water sea beach mountain snow food pizza cake apple
banana orange red green blue yellow black white brown gray pink purple small large big little left right top bottom
front back middle one two three four five six seven eight nine ten first second third number total value year date
name title describe caption short long word letter sentence says shows contains holding wearing sitting standing
walking running playing eating looking color shape count label class category hateful meme not_hateful true_false
please give single final output hello world assistant user system end of line
"""
_CLASS_NAMES = "airplane automobile bird cat deer dog frog horse ship truck apply_eye_makeup archery basketball"
# UCF-101 names as the video converter writes them (the demo's classes among them): whole-word tokens let a tiny
# model learn to spell an answer in a few steps instead of character by character.
_UCF_NAMES = (
    "ApplyEyeMakeup ApplyLipstick Archery BabyCrawling BalanceBeam BandMarching BaseballPitch Basketball "
    "BasketballDunk BenchPress HandstandPushups JumpingJack PlayingGuitar Rowing Surfing YoYo"
)


def _corpus() -> list[str]:
    words = _WORDS.split() + _CLASS_NAMES.split() + _UCF_NAMES.split() * 20
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [" ".join(str(n) for n in range(start, start + 25)) for start in range(0, 1000, 25)]
    lines += [f"What is in the image? The answer is {w}." for w in words]
    lines += ["Is this a " + w + "? Answer yes or no." for w in words[:80]]
    return lines


def build_tokenizer(vocab_size: int = 800) -> PreTrainedTokenizerFast:
    """A Llama-style BPE (▁ word marker, byte fallback) with Phi-3's special tokens and chat template."""
    alphabet = [chr(code) for code in range(32, 127)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(BASE_SPECIALS), initial_alphabet=alphabet, show_progress=False
    )
    probe = Tokenizer(models.BPE(unk_token="<unk>"))
    probe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    probe.train_from_iterator(_corpus(), trainer=trainer)
    trained = json.loads(probe.to_str())["model"]
    vocab = {token: index for index, token in enumerate(BASE_SPECIALS)}
    vocab.update({f"<0x{byte:02X}>": len(BASE_SPECIALS) + byte for byte in range(256)})
    for token in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in BASE_SPECIALS])
    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in CHAT_TOKENS])
    bos = vocab["<s>"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        padding_side="right",
        model_max_length=131072,
        chat_template=CHAT_TEMPLATE,
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )


def preset_config(preset: str, *, vocab_size: int = 32064, pad_token_id: int = 32000) -> Phi3VConfig:
    """The :class:`Phi3VConfig` of a preset (no weights)."""
    if preset == "phi-3.5-vision":
        return Phi3VConfig(
            vocab_size=vocab_size, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=131072,
            original_max_position_embeddings=4096, sliding_window=262144, bos_token_id=1, eos_token_id=2,
            pad_token_id=pad_token_id, rope_scaling=_longrope(48), dtype="bfloat16",
        )  # fmt: skip
    if preset == "tiny":
        tower = {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": 336, "patch_size": 14, "hidden_act": "quick_gelu", "projection_dim": 32,
        }  # fmt: skip
        return Phi3VConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=131072,
            original_max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=pad_token_id,
            img_processor={"image_dim_out": 32, "vision_config": tower}, dtype="float32",
            # random weights at the usual 0.02 give near-uniform logits at hidden size 64, and LoRA (which cannot
            # rescale lm_head) then needs hundreds of steps before the demo learns anything
            initializer_range=0.1,
        )  # fmt: skip
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def _longrope(half_dim: int) -> dict:
    """Long-context RoPE factors in the official layout (values shaped like the published ones, not copied)."""
    short = [1.0 + 2.0 * i / (half_dim - 1) for i in range(half_dim)]
    long = [1.0 + 63.0 * (i / (half_dim - 1)) ** 2 for i in range(half_dim)]
    return {"type": "longrope", "short_factor": short, "long_factor": long}


def count_parameters(preset: str) -> int:
    """Parameter count of a preset, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = Phi3VForCausalLM(preset_config(preset))
    return sum(parameter.numel() for parameter in model.parameters())


def create_tiny_checkpoint(out_dir: str | Path, *, preset: str = "tiny", seed: int = 0, num_crops: int = 4) -> Path:
    """Write a complete random-weight checkpoint (official format: config, safetensors, tokenizer, preprocessor)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    if preset == "tiny":
        vocab = -(-len(tokenizer) // 64) * 64
        config = preset_config(preset, vocab_size=vocab, pad_token_id=tokenizer.pad_token_id)
        config.bos_token_id = tokenizer.bos_token_id
    else:
        config = preset_config(preset)
    end_ids = tokenizer.convert_tokens_to_ids(["<|end|>", "<|endoftext|>"])
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if preset == "phi-3.5-vision" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = Phi3VForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=end_ids, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(str(out), max_shard_size="2GB")
    Phi3VProcessor(Phi3VImageProcessor(num_crops=num_crops), tokenizer).save_pretrained(out)
    _officialise_tokenizer_config(out / "tokenizer_config.json")
    return out


def _officialise_tokenizer_config(path: Path) -> None:
    """Name a tokenizer class every transformers release knows and keep the official keys (BOS on, template inline)."""
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings.update(
        tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True, add_eos_token=False, chat_template=CHAT_TEMPLATE
    )
    settings.pop("backend", None)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
