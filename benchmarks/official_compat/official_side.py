"""Load a phi3v checkpoint with transformers 4.45 the way the official remote code does, and compare logits.

Usage, in a separate venv with transformers==4.45.2, torch and safetensors; PHI3V_REMOTE_CODE names a folder holding
image_embedding_phi3_v.py from the official model repository (not shipped here):
    PHI3V_REMOTE_CODE=remote python official_side.py CKPT_DIR inputs.npz
The model mirrors the official Phi3VForCausalLM layout: transformers 4.45's Phi3 decoder (the code the official
modeling_phi3_v.py copies, same su/longrope rotary) with the official Phi3ImageEmbedding (verbatim) as
model.vision_embed_tokens sharing wte with model.embed_tokens.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, Phi3Config
from transformers.models.phi3.modeling_phi3 import Phi3ForCausalLM

sys.path.insert(0, os.environ.get("PHI3V_REMOTE_CODE", "remote"))  # holds the official image_embedding_phi3_v.py
from image_embedding_phi3_v import Phi3ImageEmbedding  # noqa: E402


def official_config_checks(cfg: dict) -> None:
    """The official configuration_phi3_v.Phi3VConfig._rope_scaling_validation, as written there."""
    rs = cfg.get("rope_scaling")
    if rs is not None:
        assert isinstance(rs, dict) and len(rs) == 3, f"rope_scaling must have exactly 3 fields, got {list(rs)}"
        assert rs.get("type") in ["su", "yarn"], f"rope_scaling type must be su/yarn, got {rs.get('type')}"
        hd = cfg["hidden_size"] // cfg["num_attention_heads"] // 2
        assert len(rs["short_factor"]) == hd and len(rs["long_factor"]) == hd
    assert cfg["model_type"] == "phi3_v"
    assert isinstance(cfg.get("embd_layer"), dict) and isinstance(cfg.get("img_processor"), dict)
    print("official config rules: OK; torch_dtype", cfg.get("torch_dtype"), "use_cache", cfg.get("use_cache"),
          "auto_map", cfg.get("auto_map"))


def main(ckpt: str, inputs: str) -> None:
    raw = json.load(open(f"{ckpt}/config.json"))
    official_config_checks(raw)
    cfg = Phi3Config(**{k: v for k, v in raw.items() if k not in ("model_type", "auto_map", "architectures")})
    cfg._attn_implementation = "eager"
    cfg.img_processor = raw["img_processor"]
    model = Phi3ForCausalLM(cfg)
    model.model.vision_embed_tokens = Phi3ImageEmbedding(cfg, wte=model.model.embed_tokens, **raw["embd_layer"])
    import glob
    sd = {}
    for f in sorted(glob.glob(f"{ckpt}/*.safetensors")):
        sd.update(load_file(f))
    dtypes = {str(v.dtype) for v in sd.values()}
    print("saved tensor dtypes:", dtypes)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # wte is the same module as embed_tokens, so its key is an alias
    missing = [k for k in missing if not k.startswith("model.vision_embed_tokens.wte.")]
    print("missing:", missing[:10], len(missing), "unexpected:", unexpected[:10], len(unexpected))
    model = model.float().eval()
    data = np.load(inputs)
    ids = torch.from_numpy(data["input_ids"]).clone()
    with torch.no_grad():
        emb = model.model.vision_embed_tokens(ids.clone(), torch.from_numpy(data["pixel_values"]).float(),
                                              torch.from_numpy(data["image_sizes"]))
        out = model(inputs_embeds=emb, attention_mask=torch.ones_like(ids)).logits.numpy()
    ref = data["logits"]
    print("logits shape", out.shape, "max |diff| vs phi3v:", float(np.abs(out - ref).max()),
          "max |logit|", float(np.abs(ref).max()))
    tok = AutoTokenizer.from_pretrained(ckpt)
    print("tokenizer:", type(tok).__name__, "bos", tok.add_bos_token if hasattr(tok, "add_bos_token") else None)
    msgs = [{"role": "user", "content": "<|image_1|>\nWhat is shown?"}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    print("chat template:", repr(prompt))
    print("ids:", tok("What is shown?<|end|>\n<|assistant|>\n")["input_ids"])
    if "text_ids" in data.files:
        same = tok(str(data["text"]))["input_ids"] == data["text_ids"].tolist()
        print("tokenizer ids equal to phi3v's:", same)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
