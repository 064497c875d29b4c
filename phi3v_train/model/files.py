"""Checkpoint files: Hub-or-directory resolution, the official tokenizer/processor files, and plain permissions.

Every component (config, weights, tokenizer, processor configs) is found the way ``from_pretrained`` finds it: a local
directory as is, anything else as a Hub id through the Hugging Face cache (``HF_HUB_CACHE``/``HF_HOME``), so an
offline machine (``HF_HUB_OFFLINE=1``) with a populated cache works like a local download.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from phi3v_data.io import write_json

# The files of microsoft/Phi-3.5-vision-instruct that hold no weights and no code, byte for byte (tests compare them
# with tests/fixtures/phi-3.5-vision-instruct/); init-tiny builds its checkpoint from them.
OFFICIAL_DIR = Path(__file__).with_name("official")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")  # fmt: skip
PROCESSOR_CONFIG = "processor_config.json"
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_phi3_v.Phi3VProcessor"}
IMAGE_PROCESSOR_AUTO_MAP = {
    "AutoImageProcessor": "processing_phi3_v.Phi3VImageProcessor",
    "AutoProcessor": "processing_phi3_v.Phi3VProcessor",
}
# The official remote code; copied along when the base checkpoint has it, so trust_remote_code loads our output.
REMOTE_CODE_FILES = ("configuration_phi3_v.py", "modeling_phi3_v.py", "image_embedding_phi3_v.py",
                     "processing_phi3_v.py")  # fmt: skip
# What the official tokenizer_config.json says, and what both transformers 4.4x and 5.x need to read the tokenizer:
# a class name both know (with tokenizer.json present 4.4x picks LlamaTokenizerFast), BOS on, the template inline.
OFFICIAL_TOKENIZER_KEYS: dict[str, Any] = {
    "tokenizer_class": "LlamaTokenizer",
    "add_bos_token": True,
    "add_eos_token": False,
    "legacy": False,
}
_FIVE_ONLY_TOKENIZER_KEYS = ("backend", "is_local", "local_files_only", "extra_special_tokens")


def resolve_file(source: str | Path, filename: str, **hub_kwargs: Any) -> Path | None:
    """``filename`` of a checkpoint directory or Hub repo (downloaded into / read from the HF cache), or None."""
    local = Path(source)
    if local.is_dir():
        path = local / filename
        return path if path.is_file() else None
    from transformers.utils import cached_file

    found = cached_file(
        str(source), filename, _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False, **hub_kwargs,
    )  # fmt: skip
    return Path(found) if found else None


def checkpoint_dir(source: str | Path, **hub_kwargs: Any) -> Path:
    """The local directory that holds ``source``'s config/tokenizer files (the snapshot folder for a Hub id)."""
    local = Path(source)
    if local.is_dir():
        return local
    for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json"):
        found = resolve_file(source, name, **hub_kwargs)
        if found is not None:
            return found.parent
    offline = " (HF_HUB_OFFLINE is set: is it in the cache?)" if os.environ.get("HF_HUB_OFFLINE") else ""
    raise OSError(f"{source}: not a local directory and not a reachable Hub model{offline}")


def plain_permissions(*paths: Path) -> None:
    """Give files 0666 and directories 0777 minus the umask, as ``open()``/``mkdir`` would (not recursive).

    safetensors and ``tempfile`` create 0600 files and 0700 directories, which another user or a serving container
    cannot read.
    """
    mask = os.umask(0)
    os.umask(mask)
    for path in paths:
        if path.exists() and not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def copy_files(source: Path, out: Path, names: Iterable[str]) -> list[str]:
    """Copy the ``names`` that exist in ``source`` to ``out``; returns the copied names."""
    copied = []
    for name in names:
        if (source / name).is_file() and source.resolve() != out.resolve():
            shutil.copyfile(source / name, out / name)
            copied.append(name)
    return copied


def officialise_tokenizer_config(path: Path, *, chat_template: str | None) -> None:
    """Make ``tokenizer_config.json`` readable by transformers 4.4x and 5.x (see OFFICIAL_TOKENIZER_KEYS).

    Leaves an official file untouched; rewrites one saved by transformers 5.x (``TokenizersBackend``, template only in
    ``chat_template.jinja``, no ``add_bos_token``).
    """
    settings = json.loads(path.read_text(encoding="utf-8"))
    wanted = {**settings, **OFFICIAL_TOKENIZER_KEYS}
    jinja = path.with_name("chat_template.jinja")
    template = chat_template or (jinja.read_text(encoding="utf-8") if jinja.is_file() else None)
    if template:
        wanted["chat_template"] = template
    extra = settings.get("extra_special_tokens")
    if isinstance(extra, list) and "additional_special_tokens" not in settings:
        wanted["additional_special_tokens"] = extra
    for key in _FIVE_ONLY_TOKENIZER_KEYS:
        wanted.pop(key, None)
    if wanted != settings:
        write_json(path, wanted)
    if jinja.is_file():
        jinja.unlink()  # one template, where 4.4x reads it too

