"""Record → Phi-3 chat text → token ids and labels. The one place that decides what the model sees.

Validation (``--processor``), the length-grouped sampler and the training collator all call :func:`encode_record`,
so the sequence length the validator reports is the length training uses, by construction.

Each turn becomes ``<|user|>\\n{images}{user}<|end|>\\n<|assistant|>\\n`` (not trained on) followed by
``{assistant}<|end|>\\n`` (trained on); the last answer also ends with ``<|endoftext|>``. Images whose tags the user
text does not place come first, laid out by ``image_tags``: ``lines`` (the default, the model card's multi-image
layout) puts one ``<|image_k|>\\n`` per image; ``joined`` writes every tag and then one ``\\n`` —
``<|image_1|><|image_2|>\\n{user}``, the layout of the original Phi-3 cookbook scripts (``phi3v_dataset.py``:
``image_tag_text = ''.join([f'<|image_{i}|>' ...])`` then ``f'{image_tag_text}\\n{user_text}'``), which the
recipes use. ``turns`` says how a multi-turn record is laid out: ``together`` (the default) as one conversation,
one BOS and ``<|endoftext|>`` after the last answer only; ``separate`` encodes every turn as its own chat, each with
its BOS and ``<|end|>\\n<|endoftext|>`` (``finetune_hf_trainer_nlvr2.py``: a turn after the first is
``processor(prompt, None)``, which starts with BOS, and every answer is ``f'{answer}<|end|>\\n<|endoftext|>'``).
Both settings travel together as a :class:`PromptFormat`.

Each piece of text between image tags is encoded separately, as the official processor does, and every tag expands
to ``num_tokens`` copies of ``-k`` — the official placeholder id of image ``k`` that the model replaces with image
features. The official processor tokenizes every piece with special tokens, so BOS starts the text *and* follows
every image; we do the same, so a single-turn prompt encodes exactly as ``Phi3VProcessor`` encodes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from schemas import IMAGE_TAG_RE, Record

IGNORE_INDEX = -100

CONTROL_TEXT_RE = re.compile(r"<\|(?!image_\d+\|>)[^<>|\s]*\|>|</?s>|<unk>")
"""Text shaped like one of the model's control tokens: ``<|user|>``, ``<|end|>``, ``<|assistant|>``,
``<|endoftext|>``, ``<|system|>``, ``<|placeholderN|>``, ``<|image|>``, ``<s>``, ``</s>``, ``<unk>`` — every added
token of the Phi-3(.5)-vision tokenizers (``<|image_k|>`` tags are ours and handled apart). In text from data these
are encoded as plain text, never as the token: an answer holding ``<|end|><|user|>`` cannot forge a turn."""

ImageTags = Literal["lines", "joined"]
"""Where the images of a turn whose text has no tags go: ``lines`` ``<|image_1|>\\n<|image_2|>\\n{text}``, ``joined``
``<|image_1|><|image_2|>\\n{text}`` (the original recipe's)."""
Turns = Literal["together", "separate"]
"""A multi-turn record as one conversation, or each turn as its own chat (BOS … ``<|endoftext|>``), as the NLVR2
script encodes the_cauldron's rows."""


@dataclass(frozen=True, slots=True)
class PromptFormat:
    """How records become chat text beyond their own words; one value per run (saved in ``RUN/config.yaml``)."""

    image_tags: ImageTags = "lines"
    turns: Turns = "together"


DEFAULT_FORMAT = PromptFormat()


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of chat text; ``data`` is the (start, end) of the part that came from the record (user or assistant
    text), whose control-token look-alikes are encoded as plain text; the rest is the chat template."""

    text: str
    train: bool
    data: tuple[int, int] | None = None
    bos: bool = False  # a BOS goes before it (a turn that starts its own chat)


def user_content(text: str, first_image: int, num_images: int, *, image_tags: ImageTags = "lines") -> str:
    """User text with its images placed: as tagged, or all in front (laid out by ``image_tags``) when it has no tags.

    >>> user_content("Same?", 1, 2), user_content("Same?", 1, 2, image_tags="joined")
    ('<|image_1|>\\n<|image_2|>\\nSame?', '<|image_1|><|image_2|>\\nSame?')
    """
    if IMAGE_TAG_RE.search(text) or not num_images:
        return text
    numbers = range(first_image, first_image + num_images)
    if image_tags == "joined":
        return "".join(f"<|image_{k}|>" for k in numbers) + "\n" + text
    return "".join(f"<|image_{k}|>\n" for k in numbers) + text


def chat_segments(record: Record, *, upto: int | None = None, fmt: PromptFormat = DEFAULT_FORMAT) -> list[Segment]:
    """Chat text of a record as alternating prompt/answer segments.

    With ``upto=t`` the result stops after the prompt of turn ``t`` (0-based), ready for generating its answer;
    earlier turns keep their reference answers. ``fmt`` lays out untagged images (:func:`user_content`) and turns.
    """
    segments: list[Segment] = []
    next_image = 1
    last = len(record.conversations) - 1
    separate = fmt.turns == "separate"
    for index, turn in enumerate(record.conversations):
        content = user_content(turn.user, next_image, len(turn.images), image_tags=fmt.image_tags)
        next_image += len(turn.images)
        start = len(content) - len(turn.user) + len("<|user|>\n")  # the image tags put in front are template
        segments.append(Segment(f"<|user|>\n{content}<|end|>\n<|assistant|>\n", train=False,
                                data=(start, start + len(turn.user)), bos=separate and index > 0))
        if upto is not None and index == upto:
            return segments
        if turn.assistant is None:
            break
        ending = "<|end|>\n<|endoftext|>" if index == last or separate else "<|end|>\n"
        segments.append(Segment(turn.assistant + ending, train=True, data=(0, len(turn.assistant))))
    return segments


@dataclass
class Encoded:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def control_text_spans(segment: Segment, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Spans of control-token look-alikes (:data:`CONTROL_TEXT_RE`) in the data part of ``segment.text[start:end]``."""
    if segment.data is None:
        return []
    end = len(segment.text) if end is None else end
    low, high = max(start, segment.data[0]), min(end, segment.data[1])
    if low >= high:
        return []
    return [(low + m.start(), low + m.end()) for m in CONTROL_TEXT_RE.finditer(segment.text[low:high])]


def _encode_chunk(segment: Segment, start: int, end: int, encode: Callable[[str], list[int]]) -> list[int]:
    """Ids of ``segment.text[start:end]``. A control-token look-alike from data is cut right after its ``<``, so no
    piece holds an added token and the tokenizer reads it as plain text (each cut starts a new word: ``▁|end|>``).
    Text without one (all real data) is encoded in one call, exactly as the official processor encodes it."""
    cuts = [low + 1 for low, _ in control_text_spans(segment, start, end)]
    ids: list[int] = []
    for low, high in zip([start, *cuts], [*cuts, end]):
        ids += encode(segment.text[low:high])
    return ids


def encode_segments(
    segments: Sequence[Segment],
    *,
    encode: Callable[[str], list[int]],
    image_tokens: Sequence[int],
    bos_id: int | None = None,
) -> Encoded:
    """Token ids and labels for chat segments.

    ``encode`` maps text to ids without special tokens; ``image_tokens[k-1]`` is the token count of image ``k``
    (see :func:`phi3v_data.tokens.num_image_tokens`). ``bos_id``, when the tokenizer adds one, starts the sequence
    and follows every image (as in the official processor). Labels are ``-100`` outside trained segments.
    """
    out = Encoded()
    if bos_id is not None:
        out.input_ids.append(bos_id)
        out.labels.append(IGNORE_INDEX)
    for segment in segments:
        if segment.bos and bos_id is not None:
            out.input_ids.append(bos_id)
            out.labels.append(IGNORE_INDEX)
        position = 0
        for match in [*IMAGE_TAG_RE.finditer(segment.text), None]:
            end = match.start() if match else len(segment.text)
            chunk = segment.text[position:end]
            if chunk:
                ids = _encode_chunk(segment, position, end, encode)
                out.input_ids += ids
                out.labels += ids if segment.train else [IGNORE_INDEX] * len(ids)
            if match is None:
                break
            k = int(match.group(1))
            if not 1 <= k <= len(image_tokens):
                raise ValueError(f"<|image_{k}|> refers to an image the record does not have "
                                 f"({len(image_tokens)} images)")
            out.input_ids += [-k] * image_tokens[k - 1]
            out.labels += [IGNORE_INDEX] * image_tokens[k - 1]
            if bos_id is not None:
                out.input_ids.append(bos_id)
                out.labels.append(IGNORE_INDEX)
            position = match.end()
    return out


def encode_record(
    record: Record,
    *,
    encode: Callable[[str], list[int]],
    image_tokens: Sequence[int],
    bos_id: int | None = None,
    upto: int | None = None,
    fmt: PromptFormat = DEFAULT_FORMAT,
) -> Encoded:
    """:func:`chat_segments` then :func:`encode_segments`."""
    return encode_segments(chat_segments(record, upto=upto, fmt=fmt), encode=encode,
                           image_tokens=image_tokens, bos_id=bos_id)
