"""Native Phi-3.5-vision (model, config, processor) on transformers 5.x — no ``trust_remote_code``.

Importing this package registers ``model_type "phi3_v"`` with ``AutoConfig``, ``AutoModelForCausalLM``,
``AutoImageProcessor`` and ``AutoProcessor``, so official checkpoint directories load through the Auto classes; the
``auto_map`` entries of an official ``config.json`` are ignored.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

# From its own module: transformers 5.17 (the GPU machine's) resolves the top-level name to a placeholder that demands
# torchvision, which phi3v does not use.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from .configuration_phi3v import Phi3VConfig
from .image_processing_phi3v import Phi3VImageProcessor
from .modeling_phi3v import QUANT_SKIP_MODULES, Phi3VForCausalLM, Phi3VModel
from .processing_phi3v import Phi3VProcessor, TextEncoder, bos_id, text_encoding
from .tiny import count_parameters, create_tiny_checkpoint, preset_config

AutoConfig.register("phi3_v", Phi3VConfig, exist_ok=True)
AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
AutoImageProcessor.register(Phi3VConfig, slow_image_processor_class=Phi3VImageProcessor, exist_ok=True)
AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)

__all__ = [
    "Phi3VConfig",
    "Phi3VForCausalLM",
    "Phi3VModel",
    "QUANT_SKIP_MODULES",
    "Phi3VImageProcessor",
    "Phi3VProcessor",
    "TextEncoder",
    "bos_id",
    "text_encoding",
    "create_tiny_checkpoint",
    "count_parameters",
    "preset_config",
]
