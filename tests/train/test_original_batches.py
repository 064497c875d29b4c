"""The batch ``--recipe`` trains on equals the one the original Phi-3 cookbook scripts build for the same example.

The original's code is transcribed below, line for line where it builds ``input_ids``/``labels``
(microsoft/Phi-3CookBook, ``code/04.Finetuning/vision_finetuning/``), and run with the real Phi-3.5-vision tokenizer
and chat template (tests/fixtures/phi-3.5-vision-instruct/). Its processor call is the official
``processing_phi3_v.py`` rule::

    prompt_chunks = [self.tokenizer(chunk).input_ids for chunk in re.split(pattern, texts)]
    image_ids_pad = [[-iid]*num_img_tokens[iid-1] for iid in image_ids]
    offset = 0
    for x in insert_separator(prompt_chunks, image_ids_pad):
        input_ids.extend(x[offset:])

(every chunk keeps the BOS the tokenizer adds, so BOS starts the prompt and follows every image), and without images
``self.tokenizer(texts)``. The image token counts are derived by hand from the HD transform.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from phi3v_data.prompt import IGNORE_INDEX, PromptFormat
from phi3v_train.collator import Collator
from phi3v_train.model.processing_phi3v import TextEncoder
from phi3v_train.dataset import load_split
from phi3v_train.model import Phi3VProcessor, bos_id
from phi3v_train.recipes import get_recipe

FIXTURES = Path(__file__).parents[1] / "fixtures" / "phi-3.5-vision-instruct"
TAG = re.compile(r"<\|image_\d+\|>")  # processing_phi3_v.py: pattern = r"<\|image_\d+\|>"


def _processor(num_crops: int) -> Phi3VProcessor:
    return Phi3VProcessor.from_pretrained(FIXTURES, num_crops=num_crops)


def _official_prompt_ids(tokenizer, prompt: str, num_img_tokens: list[int]) -> list[int]:
    """``processor(prompt, images)['input_ids']`` of the official processor (module docstring)."""
    chunks = [tokenizer(chunk).input_ids for chunk in TAG.split(prompt)]
    image_ids = [int(tag.split("|")[1].split("_")[-1]) for tag in TAG.findall(prompt)]
    image_ids_pad = [[-iid] * num_img_tokens[iid - 1] for iid in image_ids] + [[]]
    return [token for chunk, pad in zip(chunks, image_ids_pad) for token in chunk + pad]


def _chat(tokenizer, content: str) -> str:
    # prompt = self.processor.tokenizer.apply_chat_template([prompt_message], tokenize=False, add_generation_prompt=True)  # noqa: E501
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def _answer_ids(tokenizer, answer: str) -> list[int]:
    # answer = f'{answer}<|end|>\n<|endoftext|>'
    # answer_input_ids = self.processor.tokenizer(answer, add_special_tokens=False, return_tensors='pt')['input_ids']
    return tokenizer(f"{answer}<|end|>\n<|endoftext|>", add_special_tokens=False).input_ids


def _phi3v_batch(tmp_path: Path, record: dict, images: dict[str, Image.Image], recipe: str) -> dict:
    """What ``phi3v-train run --recipe RECIPE`` feeds the model for a dataset holding only ``record``."""
    settings = get_recipe(recipe).settings
    for rel, image in images.items():
        (tmp_path / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / "images" / rel)
    (tmp_path / "d_train.jsonl").write_text(json.dumps(record) + "\n")
    processor = _processor(settings["num_crops"])
    encode, bos = TextEncoder(processor.tokenizer), bos_id(processor.tokenizer)
    fmt = PromptFormat(image_tags=settings.get("image_tags", "lines"), turns=settings.get("turns", "together"))
    samples, _ = load_split(tmp_path, "train", encode=encode, bos_id=bos, num_crops=settings["num_crops"],
                            max_length=131072, fmt=fmt)
    collate = Collator(image_processor=processor.image_processor, encode=encode, bos_id=bos,
                       pad_id=processor.tokenizer.pad_token_id, images_root=tmp_path / "images", fmt=fmt)
    batch = collate([samples[0]])
    return {key: value[0].tolist() for key, value in batch.items() if key in ("input_ids", "labels")}


def test_ucf101_eight_frames_match_phi3v_dataset(tmp_path: Path) -> None:
    # convert_ucf101.py: prompt = f'Classify the video into one of the following classes: {", ".join(class_labels)}.'
    # (phi3v-data convert video writes the same text); 8 frames of 320x240, as UCF-101 clips are.
    user = "Classify the video into one of the following classes: ApplyEyeMakeup, ApplyLipstick, Archery."
    paths = [f"train/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.{k}.jpg" for k in range(8)]
    record = {"id": "train-0", "source": "ucf101", "task": "classification",
              "conversations": [{"images": paths, "user": user, "assistant": "ApplyEyeMakeup"}]}
    frames = {path: Image.new("RGB", (320, 240), (10 * k, 80, 160)) for k, path in enumerate(paths)}
    ours = _phi3v_batch(tmp_path, record, frames, "ucf101-full")

    tokenizer = _processor(4).tokenizer
    # 320x240 at num_crops 4: HD scale 2 (2*ceil(2/(4/3)) = 4 <= 4) → 672x504, padded to 672x672: a 2x2 grid;
    # tokens = rows*12*(cols*12 + 1) + 1 + 12*13 = 2*12*25 + 1 + 156 = 757 per frame
    num_img_tokens = [757] * 8
    # phi3v_dataset.py, Phi3VDataset._get_inputs / __getitem__:
    #   image_tag_text = ''.join([f'<|image_{i}|>' for i in range(1, len(images) + 1)])
    #   prompt_message = {'role': 'user', 'content': f'{image_tag_text}\n{user_text}'}
    #   response = f'{assistant_text}<|end|>\n<|endoftext|>'
    #   labels = torch.cat([torch.tensor([IGNORE_INDEX] * len(prompt_input_ids[0])), response_input_ids.squeeze(0)])
    image_tag_text = "".join(f"<|image_{i}|>" for i in range(1, 9))
    prompt_ids = _official_prompt_ids(tokenizer, _chat(tokenizer, f"{image_tag_text}\n{user}"), num_img_tokens)
    response_ids = _answer_ids(tokenizer, "ApplyEyeMakeup")
    assert ours["input_ids"] == prompt_ids + response_ids
    assert ours["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids
    # by hand: BOS, "<|user|>\n" = 32010 13, then the frames each followed by BOS, then "\nClassify…" (29871 13 …)
    ids = ours["input_ids"]
    assert ids[:3] == [1, 32010, 13] and ids[3:760] == [-1] * 757 and ids[760] == 1
    assert ids[761 + 7 * 758 - 1] == 1 and ids[761 + 7 * 758: 761 + 7 * 758 + 2] == [29871, 13]
    assert len(prompt_ids) == 3 + 8 * 758 + len(tokenizer(f"\n{user}<|end|>\n<|assistant|>\n").input_ids) - 1
    assert response_ids[-3:] == [32007, 13, 32000]  # <|end|> \n <|endoftext|>


def test_ucf101_one_tag_per_line_is_the_difference_the_setting_removes(tmp_path: Path) -> None:
    """image_tags lines (phi3v's default outside recipes) adds "\\n" after every tag: 2 tokens (29871 13) each."""
    paths = [f"train/c/v.{k}.jpg" for k in range(8)]
    record = {"id": "v", "conversations": [{"images": paths, "user": "Which class?", "assistant": "c"}]}
    frames = {path: Image.new("RGB", (320, 240)) for path in paths}
    processor = _processor(4)
    (tmp_path / "j").mkdir()
    joined = _phi3v_batch(tmp_path / "j", record, frames, "ucf101-full")["input_ids"]
    from phi3v_data.prompt import encode_record

    lines = encode_record(_record(record), encode=TextEncoder(processor.tokenizer), image_tokens=[757] * 8,
                          bos_id=1, fmt=PromptFormat(image_tags="lines")).input_ids
    assert len(lines) - len(joined) == 7 * 2
    after_first = lines[3 + 757:3 + 757 + 3]
    assert after_first == [1, 29871, 13]  # BOS then "\n" before <|image_2|>


def _record(raw: dict):
    from schemas import Record

    return Record.model_validate(raw)


def test_nlvr2_two_images_match_finetune_hf_trainer_nlvr2(tmp_path: Path) -> None:
    # A real NLVR2 statement (dev.json), as the nlvr2 / cauldron converters keep it: one turn, two images.
    user = 'Is this statement about the pair true? "One image shows exactly two brown acorns."\nAnswer yes or no.'
    record = {"id": "dev-850-0-0", "source": "nlvr2", "task": "binary",
              "conversations": [{"images": ["dev/dev-850-0-img0.png", "dev/dev-850-0-img1.png"], "user": user,
                                 "assistant": "no", "reference": {"label": 0}}]}
    images = {"dev/dev-850-0-img0.png": Image.new("RGB", (400, 300), (200, 30, 30)),
              "dev/dev-850-0-img1.png": Image.new("RGB", (300, 400), (30, 200, 30))}
    ours = _phi3v_batch(tmp_path, record, images, "nlvr2-full")

    processor = _processor(16)
    tokenizer = processor.tokenizer
    num_img_tokens = [int(n) for n in processor.image_processor(list(images.values()))["num_img_tokens"]]
    # 400x300 at 16 crops: scale 4 (4*ceil(3) = 12 <= 16; 5*ceil(3.75) = 20 > 16) → 1344x1008: a 3x4 grid →
    # 3*12*(4*12 + 1) + 157 = 1921; 300x400 is its transpose: 4*12*(3*12 + 1) + 157 = 1933
    assert num_img_tokens == [1921, 1933]
    # finetune_hf_trainer_nlvr2.py, DataCollator.__call__ (i == 0, the only turn):
    #   'content': f'<|image_1|><|image_2|>\n{question}' if i == 0 else question,
    #   answer = f'{answer}<|end|>\n<|endoftext|>'
    #   images = [image_1, image_2] if i == 0 else None
    #   ex_label_ids.extend([torch.tensor([IGNORE_INDEX] * len(prompt_input_ids[0])), answer_input_ids.squeeze(0)])
    prompt_ids = _official_prompt_ids(tokenizer, _chat(tokenizer, f"<|image_1|><|image_2|>\n{user}"), num_img_tokens)
    answer_ids = _answer_ids(tokenizer, "no")
    assert ours["input_ids"] == prompt_ids + answer_ids
    assert ours["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    ids = ours["input_ids"]
    # by hand: BOS <|user|> \n, image 1, BOS (the empty chunk between the tags), image 2, BOS, "\nIs…"
    assert ids[:3] == [1, 32010, 13] and ids[3 + 1921] == 1 and ids[4 + 1921: 4 + 1921 + 1933] == [-2] * 1933
    assert ids[4 + 1921 + 1933: 4 + 1921 + 1933 + 3] == [1, 29871, 13]
    assert answer_ids == [694, 32007, 13, 32000]  # "no" <|end|> \n <|endoftext|>


def test_nlvr2_row_with_two_questions_encodes_each_turn_alone(tmp_path: Path) -> None:
    # A the_cauldron nlvr2 row with two statements, as `phi3v-data convert cauldron --subset nlvr2 --task chat`
    # keeps it: both images on the first turn, the answers verbatim.
    first, second = ("The left image shows two acorns. True or false?",
                     "The right image shows a squirrel. True or false?")
    record = {"id": "train-0000000", "source": "cauldron", "task": "chat",
              "conversations": [{"images": ["train/0000000_0.png", "train/0000000_1.png"], "user": first,
                                 "assistant": "False"},
                                {"images": [], "user": second, "assistant": "True"}]}
    images = {"train/0000000_0.png": Image.new("RGB", (400, 300)), "train/0000000_1.png": Image.new("RGB", (300, 400))}
    ours = _phi3v_batch(tmp_path, record, images, "nlvr2-full")

    tokenizer = _processor(16).tokenizer
    # DataCollator.__call__, for i, text_dict in enumerate(example['texts']):
    #   'content': f'<|image_1|><|image_2|>\n{question}' if i == 0 else question,
    #   images = [image_1, image_2] if i == 0 else None
    #   inputs = self.processor(prompt, images, return_tensors='pt')      # no images: self.tokenizer(prompt), BOS first
    #   ex_input_ids.extend([prompt_input_ids, answer_input_ids])
    prompt_1 = _official_prompt_ids(tokenizer, _chat(tokenizer, f"<|image_1|><|image_2|>\n{first}"), [1921, 1933])
    answer_1 = _answer_ids(tokenizer, "False")
    prompt_2 = tokenizer(_chat(tokenizer, second)).input_ids
    answer_2 = _answer_ids(tokenizer, "True")
    assert ours["input_ids"] == prompt_1 + answer_1 + prompt_2 + answer_2
    assert ours["labels"] == [IGNORE_INDEX] * len(prompt_1) + answer_1 + [IGNORE_INDEX] * len(prompt_2) + answer_2
    second_turn = len(prompt_1) + len(answer_1)
    assert ours["input_ids"][second_turn - 3: second_turn + 3] == [32007, 13, 32000, 1, 32010, 13]  # <|endoftext|>, BOS


def test_docvqa_page_matches_finetune_hf_trainer_docvqa(tmp_path: Path) -> None:
    # phi3v-data convert docvqa writes "{question}\nAnswer briefly." (its docstring's val_v1.0_withQT.json entry)
    question = "What is the ‘actual’ value per 1000, during the year 1975?"
    record = {"id": "val-q49153", "source": "docvqa", "task": "vqa",
              "conversations": [{"images": ["val/pybv0228_81.png"], "user": f"{question}\nAnswer briefly.",
                                 "assistant": "0.28", "reference": {"answers": ["0.28"]}}]}
    page = {"val/pybv0228_81.png": Image.new("RGB", (340, 440), (250, 250, 250))}
    ours = _phi3v_batch(tmp_path, record, page, "docvqa-full")

    processor = _processor(16)
    tokenizer = processor.tokenizer
    num_img_tokens = [int(n) for n in processor.image_processor(list(page.values()))["num_img_tokens"]]
    # 340x440 at 16 crops (portrait, so transposed: ratio 440/340 = 1.294): 4*ceil(4/1.294) = 16 <= 16 and
    # 5*ceil(5/1.294) = 20 > 16 → scale 4: 1344 high, 1038 wide → padded to 1344: a 4x4 grid → 4*12*49 + 157 = 2509
    assert num_img_tokens == [2509]
    # finetune_hf_trainer_docvqa.py, MiniDocVQADataCollator.__call__ (nielsr/docvqa_1200_examples):
    #   question = example['query']['en']
    #   answer = random.choice(example['answers'])          # one answer here: no choice to make
    #   'content': f'<|image_1|>\n{question}\nAnswer briefly.',
    #   answer = f'{answer}<|end|>\n<|endoftext|>'
    #   labels = torch.cat([torch.tensor([ignore_index] * len(prompt_input_ids[0])).unsqueeze(0), answer_input_ids])
    prompt_ids = _official_prompt_ids(tokenizer, _chat(tokenizer, f"<|image_1|>\n{question}\nAnswer briefly."),
                                      num_img_tokens)
    answer_ids = _answer_ids(tokenizer, "0.28")
    assert ours["input_ids"] == prompt_ids + answer_ids
    assert ours["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    assert ours["input_ids"][:3] == [1, 32010, 13] and ours["input_ids"][3 + 2509] == 1
    assert answer_ids[-3:] == [32007, 13, 32000]


@pytest.mark.parametrize("name", ["ucf101-full", "nlvr2-full", "docvqa-lora", "hateful-memes-qlora"])
def test_recipes_lay_out_tags_as_the_original(name: str) -> None:
    assert get_recipe(name).settings["image_tags"] == "joined"
