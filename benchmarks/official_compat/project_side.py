"""phi3v side of the official-code check (see README.md beside this file).

The official image embedding hard-codes CLIP ViT-L/14-336, so the base here has the official vision tower and a small
language model (width 192, 2 layers, the official 48 rope factors).

    python project_side.py base BASE_DIR          # then phi3v-train run / export from it as usual
    python project_side.py dump CKPT_DIR out.npz  # a base, a run's final/ or an export: inputs and phi3v's logits
"""
import sys
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, GenerationConfig
from phi3v_train.model.tiny import official_config_dict
from phi3v_train.model.configuration_phi3v import Phi3VConfig
from phi3v_train.model.modeling_phi3v import Phi3VForCausalLM
from phi3v_train.model.files import OFFICIAL_DIR, plain_permissions
from phi3v_train.model.image_processing_phi3v import Phi3VImageProcessor
from phi3v_train.model.processing_phi3v import Phi3VProcessor


def make_base(out: Path) -> None:
    s = official_config_dict()
    s.update({"hidden_size": 192, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "initializer_range": 0.1})
    s.pop("_name_or_path", None)
    cfg = Phi3VConfig.from_dict(s)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    model = Phi3VForCausalLM(cfg).eval()
    torch.set_default_dtype(prev)
    # non-zero separators so they matter
    with torch.no_grad():
        model.model.vision_embed_tokens.glb_GN.normal_()
        model.model.vision_embed_tokens.sub_GN.normal_()
    model.generation_config = GenerationConfig.from_pretrained(str(OFFICIAL_DIR))
    model.save_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(OFFICIAL_DIR))
    Phi3VProcessor(Phi3VImageProcessor(num_crops=4), tok, source=OFFICIAL_DIR).save_pretrained(out)
    plain_permissions(out)


def dump(ckpt: Path, npz: Path) -> None:
    from phi3v_train.loading import load_for_inference
    loaded = load_for_inference(ckpt)
    model, processor = loaded
    model = model.float().eval()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (500, 700, 3), dtype=np.uint8))
    prompt = "<|user|>\n<|image_1|>\nWhat is shown?<|end|>\n<|assistant|>\n"
    batch = processor(text=prompt, images=[img], return_tensors="pt")
    with torch.no_grad():
        inputs = ("input_ids", "pixel_values", "image_sizes", "attention_mask")
        logits = model(**{k: v for k, v in batch.items() if k in inputs}).logits
    text = "What is shown?<|end|>\n<|assistant|>\n"
    np.savez(npz, input_ids=batch["input_ids"].numpy(), pixel_values=batch["pixel_values"].float().numpy(),
             image_sizes=batch["image_sizes"].numpy(), logits=logits.float().numpy(),
             text=np.array(text), text_ids=np.array(processor.tokenizer(text)["input_ids"]))
    print("ids head", batch["input_ids"][0, :8].tolist(), "n", batch["input_ids"].shape,
          "images tokens", int((batch["input_ids"] < 0).sum()))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "base":
        make_base(Path(sys.argv[2]))
    else:
        dump(Path(sys.argv[2]), Path(sys.argv[3]))
