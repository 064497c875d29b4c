"""schemas.errors and the one path rule: a user's mistake is raised, rendered and judged one way everywhere."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

import schemas
from phi3v_data.cli.errors import describe, translate
from phi3v_data.io import UnsafePathError, iter_jsonl, parse_json, resolve_inside
from phi3v_data.validate import validate_file
from schemas.errors import (UserError, error_message, first_validation_line, json_error, json_file_error, render_loc,
                            validation_lines, validation_problems)


def _error(value: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        schemas.Record.model_validate(value)
    return caught.value


# --- the pydantic renderer -----------------------------------------------------------------------------------------


def test_a_nested_loc_renders_as_the_records_field_path() -> None:
    exc = _error({"id": "r", "extra": 1, "conversations": [
        {"images": ["a.png"], "user": "Q", "assistant": "A"},
        {"images": ["b.png", 7], "assistant": "B", "reference": {"label": 2}},
    ]})
    assert validation_lines(exc) == [
        "conversations[1].images[1]: Input should be a valid string (got 7)",
        "conversations[1].user: required field is missing",
        "conversations[1].reference.label: Input should be 0 or 1 (got 2)",
        "extra: is not a known field (misspelt?)",
    ]
    assert validation_problems(exc)[1] == ("conversations[1].user", "required field is missing")
    assert first_validation_line(exc) == "conversations[1].images[1]: Input should be a valid string (got 7)"


def test_render_loc_indexes_lists_and_dots_names() -> None:
    assert render_loc(("conversations", 0, "images", 2)) == "conversations[0].images[2]"
    assert render_loc(("lora", "rank")) == "lora.rank"
    assert render_loc(()) == ""


def test_containers_are_named_only_where_their_kind_is_the_mistake() -> None:
    assert validation_lines(_error({"id": "", "conversations": []})) == [
        'id: String should have at least 1 character (got "")',
        "conversations: List should have at least 1 item after validation, not 0",  # no "(got an array)": it says
    ]
    assert validation_lines(_error({"id": "r", "conversations": [{"user": ["a"]}]})) == [
        "conversations[0].user: Input should be a valid string (got an array)"]
    assert validation_lines(_error([1])) == [
        "(record): Input should be a valid dictionary or instance of Record (got an array)"]


def test_value_errors_lose_pydantics_prefix_and_keep_their_own_words() -> None:
    exc = _error({"id": "r", "conversations": [{"user": "Q", "assistant": "A"}, {"user": "Q2"}]})
    assert validation_lines(exc) == [
        "(record): either every turn has an assistant reply or none does (unlabeled record)"]


def test_floats_show_as_flags_spell_them_and_a_caller_may_show_values_its_own_way() -> None:
    error = {"type": "greater_than", "loc": ("lr",), "msg": "Input should be greater than 0", "input": float("inf")}
    assert error_message(error) == "Input should be greater than 0 (got inf)"
    assert error_message(error, show=lambda value: f"<{value}>") == "Input should be greater than 0 (got <inf>)"


# --- the one JSON wording ------------------------------------------------------------------------------------------


def test_json_error_wording() -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads('{"a": 1,\n "b": }')
    assert json_error(caught.value) == "invalid JSON: Expecting value (column 7)"
    assert (json_file_error(Path("conf/x.json"), caught.value)
            == "conf/x.json:2: invalid JSON: Expecting value (column 7)")
    assert json_error(RecursionError()) == "invalid JSON: nested too deeply"
    with pytest.raises(ValueError) as digits:
        json.loads("1" * 5000)
    assert json_error(digits.value) == (
        "invalid JSON: Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits")


def test_validate_preview_and_export_word_a_broken_line_alike(tmp_path: Path) -> None:
    """validate's own parser and iter_jsonl (preview, export, training) give the identical message."""
    path = tmp_path / "d_train.jsonl"
    path.write_bytes(b'  {"id": "r2", \n[' + b"[" * 100_000 + b'\n{"id": "\xff"}\n')
    report = validate_file(path)
    assert [(f.code, f.line, f.message) for f in report.findings] == [
        ("invalid_json", 1, "invalid JSON: Expecting property name enclosed in double quotes (column 16)"),
        ("invalid_json", 2, "invalid JSON: nested too deeply"),
        ("not_utf8", 3, "not valid UTF-8 at byte 8 (invalid start byte); save the file as UTF-8"),
    ]  # columns count from the line's start, leading blanks included
    assert [line.error for line in iter_jsonl(path)] == [f.message for f in report.findings]
    assert parse_json('  {"id": "r2", ')[1] == report.findings[0].message


# --- the one path rule ---------------------------------------------------------------------------------------------


PATHS = [
    ("1:x", None),  # a legal POSIX file name: a drive is one ASCII letter
    ("C:x", "'C:x' starts with a drive letter; paths in data files must be relative"),
    ("C:\\x", "'C:\\\\x' starts with a drive letter; paths in data files must be relative"),
    ("../x", "'../x' climbs out with '..'"),
    ("/x", "'/x' is absolute; paths in data files must be relative"),
    ("a/../../x", "'a/../../x' climbs out with '..'"),
    ("\\\\server\\x", "'\\\\\\\\server\\\\x' is absolute; paths in data files must be relative"),
    ("a\x00b", "'a\\x00b' contains a NUL byte"),
    ("", "the path is empty"),
]


@pytest.mark.parametrize(("path", "problem"), PATHS)
def test_one_path_rule_for_the_schema_and_resolve_inside(tmp_path: Path, path: str, problem: str | None) -> None:
    assert schemas.path_text_problem(path) == problem
    if problem is None:
        assert resolve_inside(tmp_path, path) == tmp_path / path
        assert schemas.image_path_problem(path) is None
    else:
        with pytest.raises(UnsafePathError) as caught:
            resolve_inside(tmp_path, path)
        assert str(caught.value) == problem
        if path:  # the schema calls an empty path a form problem, alike for every field
            assert schemas.image_path_problem(path) == ("unsafe", problem)


def test_the_schema_accepts_1_colon_x_and_refuses_a_drive() -> None:
    turn = {"user": "Q", "assistant": "A"}
    record = schemas.Record.model_validate({"id": "r", "conversations": [{**turn, "images": ["1:x.png"]}]})
    assert record.images == ["1:x.png"]
    assert validation_lines(_error({"id": "r", "conversations": [{**turn, "images": ["C:x.png"]}]})) == [
        "conversations[0].images: image path 'C:x.png' starts with a drive letter; "
        "paths in data files must be relative"]


# --- one UserError -------------------------------------------------------------------------------------------------


USER_ERRORS = [
    ("phi3v_data.io", "UnsafePathError"), ("phi3v_data.io", "OutputOverlapError"),
    ("phi3v_data.io", "OutputLockedError"),
    ("phi3v_data.export", "ExportError"), ("phi3v_data.export", "ExportUsageError"),
    ("phi3v_data.synthetic", "SampleOutputError"), ("phi3v_data.plugins", "PluginError"),
    ("phi3v_data.record_checks", "LengthSpecError"), ("phi3v_data.images", "ImageProblem"),
    ("phi3v_train.config", "ConfigError"), ("phi3v_train.recipes", "RecipeError"), ("phi3v_train.dataset", "DataError"),
    ("phi3v_train.run_dir", "RunError"), ("phi3v_train.loading", "LoadError"),
    ("phi3v_train.checkpointing", "CheckpointError"), ("phi3v_train.bench", "BenchError"),
    ("phi3v_train.report", "ReportError"), ("phi3v_train.model.modeling_phi3v", "MissingWeightsError"),
]


@pytest.mark.parametrize(("module", "name"), USER_ERRORS)
def test_every_user_error_derives_from_user_error(module: str, name: str) -> None:
    assert issubclass(getattr(importlib.import_module(module), name), UserError)


def test_value_errors_stay_value_errors_for_callers_that_catch_them() -> None:
    from phi3v_data.io import OutputOverlapError
    from phi3v_train.config import ConfigError

    assert issubclass(UnsafePathError, ValueError) and issubclass(ConfigError, ValueError)
    assert issubclass(OutputOverlapError, ValueError)


def test_the_cli_edge_shows_any_user_error_with_its_exit_code() -> None:
    class NewError(UserError):
        """Defined here: the edge knows it by its base, not by a list of names."""

    class NewUsageError(UserError):
        exit_code = 2

    assert (describe(NewError("bad --thing")).message, describe(NewError("x")).exit_code) == ("bad --thing", 1)
    assert describe(NewUsageError("--out overlaps")).exit_code == 2
    assert describe(ValueError("a bug")) is None
    assert translate(ValueError("a bug"), program="phi3v-data").message.startswith(
        "unexpected error: ValueError: a bug")


@pytest.mark.parametrize(("text", "missing", "hint"), [
    ("\nAutoImageProcessor requires the Torchvision library but it was not found in your environment.",
     "torchvision", "pip install 'phi3v[train]'"),
    ("Using `bitsandbytes` 4-bit quantization requires bitsandbytes: `pip install -U bitsandbytes>=0.46.1`",
     "bitsandbytes", "pip install 'phi3v[qlora]'"),
    ("FlashAttention2 has been toggled on, but it cannot be used: the package flash_attn seems to be not installed.",
     "flash_attn", "pip install 'phi3v[flash]'"),
])
def test_an_import_error_without_a_module_name_names_the_package_its_text_names(text: str, missing: str,
                                                                                hint: str) -> None:
    error = describe(ImportError(text))
    assert (error.message, error.exit_code) == (f"{missing} is not installed, and this command needs it: {hint}", 2)
