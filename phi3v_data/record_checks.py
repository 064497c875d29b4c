"""What can be wrong with one record, each as (code, field path, plain-English message); no IO except the tokenizer.

Schema errors come from pydantic (every error, ``loc`` rendered as ``conversations[0].images[2]``); the content checks
cover what the schema cannot express (empty texts, binary answers, ``<|image_k|>`` tags against the turns' images);
:func:`length_problem` measures the exact sequence length with :func:`phi3v_data.prompt.encode_record`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from phi3v_data.prompt import IGNORE_INDEX, encode_record
from phi3v_data.tokens import elongation_problem, num_image_tokens
from schemas import BINARY_ANSWERS, IMAGE_TAG_RE, Record, Turn, image_path_problem
from schemas.errors import UserError, error_message, render_loc, shown_value

Problem = tuple[str, str, str]
"""(code, field, message): a finding before its file, line and record id are attached."""


class LengthSpecError(UserError, ValueError):
    """The processor directory given for length checks cannot be used (missing or unreadable tokenizer)."""


_ENCODERS: dict[str, tuple[Callable[[str], list[int]], int | None]] = {}


def load_text_encoder(directory: Path) -> tuple[Callable[[str], list[int]], int | None]:
    """``encode`` (text → ids, no special tokens) and the BOS id from ``DIR/tokenizer.json``, without torch.

    The BOS id follows ``tokenizer_config.json``'s ``add_bos_token`` when it says; otherwise whatever the tokenizer's
    own post-processor prepends to a text. Cached per directory (worker processes load it once).
    """
    key = str(directory)
    if key not in _ENCODERS:
        try:
            from tokenizers import Tokenizer  # noqa: PLC0415 - optional: only length checks need it
        except ImportError as exc:
            raise LengthSpecError("length checks need the 'tokenizers' package: pip install 'phi3v[train]'") from exc
        path = Path(directory, "tokenizer.json")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own exception type for unreadable files
            raise LengthSpecError(f"cannot load {path}: {exc}") from None
        _ENCODERS[key] = (lambda text: tokenizer.encode(text, add_special_tokens=False).ids,
                          _bos_id(tokenizer, Path(directory, "tokenizer_config.json")))
    return _ENCODERS[key]


def _bos_id(tokenizer: Any, config_path: Path) -> int | None:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if isinstance(config, dict) and "add_bos_token" in config:
        if not config["add_bos_token"]:
            return None
        token = config.get("bos_token") or "<s>"
        token = token.get("content") if isinstance(token, dict) else token
        bos = tokenizer.token_to_id(str(token))
        if bos is None:
            raise LengthSpecError(f"{config_path}: add_bos_token is true but {token!r} is not in the vocabulary")
        return bos
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    special = tokenizer.encode("a").ids
    return special[0] if len(special) == len(plain) + 1 and special[1:] == plain else None


@dataclass(frozen=True)
class LengthSpec:
    """How to measure each record's exact sequence length: tokenizer, ``num_crops`` and the length limit.

    Give ``processor`` (a directory with ``tokenizer.json``) or your own ``encode``/``bos_id`` (then keep
    ``workers=1`` unless ``encode`` can be pickled).
    """

    num_crops: int
    max_length: int | None = None
    processor: Path | None = None
    encode: Callable[[str], list[int]] | None = None
    bos_id: int | None = None

    def text_encoder(self) -> tuple[Callable[[str], list[int]], int | None]:
        if self.encode is not None:
            return self.encode, self.bos_id
        if self.processor is None:
            raise LengthSpecError("LengthSpec needs a processor directory or an encode function")
        return load_text_encoder(self.processor)


_EMPTY_USER = "user text is empty"
_EMPTY_ASSISTANT = "assistant text is empty (use null for unlabeled records)"


def _path_code(path: str) -> tuple[str, str] | None:
    """The schema's path rule as (finding code, message)."""
    problem = image_path_problem(path)
    if problem is None:
        return None
    kind, message = problem
    return ("image_path_unsafe" if kind == "unsafe" else "schema"), message


def schema_problems(exc: ValidationError, value: Any) -> list[Problem]:
    """Every pydantic error of a record as (code, field, message) in :func:`schemas.errors.error_message`'s words;
    a turn's refused images become one finding per bad path (the schema reports the list as one error)."""
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc, kind = error["loc"], error["type"]
        if kind == "value_error" and len(loc) == 3 and loc[2] == "images":
            try:
                images = list(value["conversations"][loc[1]]["images"])
            except (KeyError, IndexError, TypeError):
                images = []
            found = [(code, f"{render_loc(loc)}[{j}]", msg) for j, path in enumerate(images)
                     if isinstance(path, str) and (rule := _path_code(path)) for code, msg in [rule]]
            if found:
                problems += found
                continue
        problems.append(("schema", render_loc(loc), error_message(error)))
    return problems


def raw_text_problems(value: dict[str, Any], flagged: set[str]) -> list[Problem]:
    """Empty texts of a record the schema rejected, so one run reports both (fields already flagged are skipped)."""
    turns = value.get("conversations")
    if not isinstance(turns, list):
        return []
    problems: list[Problem] = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict):
            continue
        for name, message in (("user", _EMPTY_USER), ("assistant", _EMPTY_ASSISTANT)):
            field, text = f"conversations[{t}].{name}", turn.get(name)
            if isinstance(text, str) and not text.strip() and field not in flagged:
                problems.append(("empty_text", field, message))
    return problems


def content_problems(record: Record) -> list[Problem]:
    """Empty texts, binary answers and <|image_k|> tags that do not match the images."""
    problems: list[Problem] = []
    for t, turn in enumerate(record.conversations):
        problems += _text_problems(record, turn, f"conversations[{t}]")
    if any("<|image_" in turn.user for turn in record.conversations):
        problems += _tag_problems(record)
    return problems


def _tag_problems(record: Record) -> list[Problem]:
    owner: dict[int, tuple[int, int]] = {}  # global image number → (turn, index in that turn)
    for t, turn in enumerate(record.conversations):
        for j in range(len(turn.images)):
            owner[len(owner) + 1] = (t, j)
    problems: list[Problem] = []
    seen: set[int] = set()
    first = 1
    for t, turn in enumerate(record.conversations):
        where = f"conversations[{t}]"
        own = range(first, first + len(turn.images))
        first += len(turn.images)
        tags = [int(k) for k in IMAGE_TAG_RE.findall(turn.user)]
        for k in tags:
            if k in seen:
                problems.append(("image_tag_duplicate", f"{where}.user", f"<|image_{k}|> appears more than once"))
            elif k not in owner:
                problems.append(("image_tag_unknown", f"{where}.user",
                                 f"<|image_{k}|> refers to image {k} but the record has {len(owner)} image(s)"))
            elif k not in own:
                t2, j2 = owner[k]
                problems.append(("image_tag_wrong_turn", f"{where}.user", f"<|image_{k}|> is placed in turn {t} but "
                                 f"image {k} belongs to turn {t2} (conversations[{t2}].images[{j2}])"))
            seen.add(k)
        for k in own if tags else ():
            if k not in tags:
                problems.append(("image_tag_missing", f"{where}.images[{owner[k][1]}]", f"image {k} has no "
                                 f"<|image_{k}|> tag; this turn places tags, so it must place one for each of its "
                                 "images"))
    return problems


def _text_problems(record: Record, turn: Turn, where: str) -> list[Problem]:
    problems: list[Problem] = []
    if not turn.user.strip():
        problems.append(("empty_text", f"{where}.user", _EMPTY_USER))
    if turn.assistant is None:
        return problems
    if not turn.assistant.strip():
        problems.append(("empty_text", f"{where}.assistant", _EMPTY_ASSISTANT))
    elif "<|image_" in turn.assistant and IMAGE_TAG_RE.search(turn.assistant):
        problems.append(("image_tag_in_answer", f"{where}.assistant",
                         "assistant text contains an <|image_k|> tag; tags belong in user text"))
    if record.task == "binary":
        problems += _binary_problems(turn, where)
    return problems


def _binary_problems(turn: Turn, where: str) -> list[Problem]:
    if turn.assistant not in BINARY_ANSWERS:
        return [("binary_answer", f"{where}.assistant",
                 f"binary answers must be 'yes' or 'no', got {shown_value(turn.assistant)}")]
    label = turn.reference.label if turn.reference else None
    if label is not None and BINARY_ANSWERS[label] != turn.assistant:
        return [("binary_answer", f"{where}.reference.label",
                 f"label {label} means {BINARY_ANSWERS[label]!r} but the answer is {turn.assistant!r}")]
    return []


def aspect_problems(record: Record, sizes: list[tuple[int, int]], num_crops: int) -> list[Problem]:
    """An ``image_aspect`` problem for each image too elongated for the HD transform at ``num_crops``.

    The token formula still counts such an image, but the training pre-flight refuses it (same rule:
    :func:`phi3v_data.tokens.elongation_problem`), so it is reported here instead of measured.
    ``sizes`` are the (width, height) of the record's images in global order.
    """
    places = [f"conversations[{t}].images[{j}]" for t, turn in enumerate(record.conversations)
              for j in range(len(turn.images))]
    return [("image_aspect", place, f"{path}: {why}; crop or pad the image, or drop the record")
            for place, path, (w, h) in zip(places, record.images, sizes, strict=True)
            if (why := elongation_problem(w, h, num_crops))]


def length_problem(record: Record, sizes: list[tuple[int, int]], spec: LengthSpec) -> tuple[int, Problem | None]:
    """The record's exact sequence length (image tokens included) and a ``too_long`` problem when it exceeds the limit.

    ``sizes`` are the (width, height) of the record's images in global order.
    """
    encode, bos_id = spec.text_encoder()
    image_tokens = [num_image_tokens(w, h, spec.num_crops) for w, h in sizes]
    encoded = encode_record(record, encode=encode, image_tokens=image_tokens, bos_id=bos_id)
    length, limit = len(encoded), spec.max_length
    if limit is None or length <= limit:
        return length, None
    cut_ids, cut_labels = encoded.input_ids[limit:], encoded.labels[limit:]
    images = sorted({-i for i in cut_ids if i < 0})
    message = f"{length} tokens, over --max-length {limit} by {length - limit}: truncating it "
    if images:
        message += f"would cut through image tokens (image {', '.join(map(str, images))})"
    else:
        answer = sum(label != IGNORE_INDEX for label in cut_labels)
        message += f"would drop {answer} answer token(s)" if answer else "would drop prompt tokens"
    hint = "; lower --num-crops, use fewer or smaller images, or raise --max-length"
    return length, ("too_long", "", message + hint)
