"""Answers from a trained model: one question about a few images, or every record of a file, without scoring.

The prompt is built by :class:`phi3v_train.generate.Generator`, the same code evaluation uses, so an answer here is
the answer ``phi3v-train eval`` would score. Any model ``eval`` reads works: a run's ``final/`` (full checkpoint or
LoRA adapter over its base), a merged export, or a Hub id (from the local cache when offline). Every answer comes with
``p_yes``: P("yes") against P("no") at the first answer token, the score binary tasks (Hateful Memes, NLVR2) are
ranked by for AUROC.

>>> predictor = Predictor.load("runs/memes-lora/final", num_crops=4)  # doctest: +SKIP
>>> predictor.answer("Is this meme hateful? Answer yes or no.", images=["img/42953.png"])  # doctest: +SKIP
Answer(text='no', p_yes=0.0731)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi3v_train.loading import device_and_precision, load_for_inference
from schemas import Record


@dataclass(frozen=True)
class Answer:
    """The generated text, and P(yes) among yes/no at its first token."""

    text: str
    p_yes: float


def generation_settings(*, do_sample: bool = False, temperature: float | None = None,
                        top_p: float | None = None) -> dict[str, Any]:
    """``generate`` keyword arguments: greedy unless asked; a temperature > 0 or a top-p implies sampling.

    >>> generation_settings(temperature=0.7)
    {'do_sample': True, 'temperature': 0.7}
    """
    sample = do_sample or (temperature is not None and temperature > 0) or top_p is not None
    if not sample:
        return {"do_sample": False}
    settings: dict[str, Any] = {"do_sample": True}
    if temperature:
        settings["temperature"] = temperature
    if top_p is not None:
        settings["top_p"] = top_p
    return settings


class Predictor:
    """A loaded model and processor that answer questions about images (greedy unless ``generation`` says so)."""

    def __init__(self, model: Any, processor: Any, *, max_new_tokens: int = 64,
                 generation: dict[str, Any] | None = None, fmt: Any = None) -> None:
        from phi3v_data.prompt import DEFAULT_FORMAT
        from phi3v_train.generate import Generator

        self.model, self.processor, self.fmt = model, processor, fmt or DEFAULT_FORMAT
        self.num_crops = processor.image_processor.num_crops
        self.max_new_tokens, self.generation = max_new_tokens, generation
        self.generator = Generator(model, processor, images_root=Path("."), num_crops=self.num_crops,
                                   max_new_tokens=max_new_tokens, generation=generation, fmt=self.fmt)

    @classmethod
    def load(cls, source: str | Path, *, base: str | None = None, device: str | None = None,
             precision: str | None = None, attention: str = "sdpa", num_crops: int | None = None,
             max_new_tokens: int = 64, generation: dict[str, Any] | None = None, image_tags: str | None = None,
             turns: str | None = None) -> "Predictor":
        """Load ``source`` with :func:`phi3v_train.loading.load_for_inference` (device and precision defaults as
        :func:`phi3v_train.loading.device_and_precision`); ``image_tags``/``turns`` default to the training run's
        (:func:`phi3v_train.loading.recorded_prompt_format`). Raises LoadError with what to pass instead."""
        from phi3v_train.loading import recorded_prompt_format

        device, precision = device_and_precision(device, precision, attention)
        model, processor = load_for_inference(source, base=base, dtype=precision, attn_implementation=attention,
                                              device=device, num_crops=num_crops)
        return cls(model, processor, max_new_tokens=max_new_tokens, generation=generation,
                   fmt=recorded_prompt_format(source, image_tags=image_tags, turns=turns))

    def answer(self, question: str, images: Sequence[str | Path] = ()) -> Answer:
        """Answer ``question`` about ``images`` (they go first, unless the question places ``<|image_k|>`` tags).

        Raises ValueError naming an image that is missing or does not decode, or a prompt too long for the model.
        """
        paths = [Path(image) for image in images]
        record = Record.model_validate({"id": "question", "conversations": [
            {"images": [f"image-{k}" for k in range(1, len(paths) + 1)], "user": question}]})
        prepared = self.generator.prepare(record, turn=0, image_paths=paths)
        (text, p_yes), = self.generator.generate([prepared], [self.generator.load_images(prepared)])
        return Answer(text=text, p_yes=p_yes)

    def predict_records(
        self, records: Sequence[Record], *, images_root: str | Path, batch_size: int = 8, progress: bool = True,
    ) -> list[dict[str, Any]]:
        """One row per turn: id, turn, task, prediction (or error), and ``p_yes`` for binary tasks; nothing scored."""
        from phi3v_train.evaluate import evaluate

        result = evaluate(self.model, self.processor, records, images_root=images_root, num_crops=self.num_crops,
                          batch_size=batch_size, max_new_tokens=self.max_new_tokens, progress=progress, score=False,
                          generation=self.generation, fmt=self.fmt)
        return result.rows
