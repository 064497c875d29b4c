"""Which part of Phi-3.5-vision a parameter or module belongs to: the vision tower, the projector or the language
model. One rule for the strategies (what to freeze or adapt), the start-up summary and the FLOP count.

Names may carry peft's prefixes (``base_model.model.``): only the part inside the model is matched.
"""

from __future__ import annotations

VISION, PROJECTOR, LANGUAGE = "vision", "projector", "language"
VISION_TOWER = "vision_embed_tokens.img_processor."
PROJECTOR_PREFIXES = ("vision_embed_tokens.img_projection.", "vision_embed_tokens.glb_GN", "vision_embed_tokens.sub_GN")
TOKEN_EMBEDDINGS = ".embed_tokens."  # the language model's; "vision_embed_tokens." does not contain it


def part_of(name: str) -> str:
    """``"vision"``, ``"projector"`` or ``"language"`` for a parameter or module name.

    >>> part_of("model.vision_embed_tokens.img_projection.0.weight"), part_of("lm_head.weight")
    ('projector', 'language')
    """
    if VISION_TOWER in name:
        return VISION
    if any(prefix in name for prefix in PROJECTOR_PREFIXES):
        return PROJECTOR
    return LANGUAGE
