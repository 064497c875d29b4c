"""The committed JSON Schema must be exactly what the pydantic models export."""

import json

import schemas


def test_committed_json_schema_matches_models() -> None:
    committed = json.loads(schemas.SCHEMA_PATH.read_text(encoding="utf-8"))
    assert committed == schemas.json_schema(), (
        f"{schemas.SCHEMA_PATH} is out of date with schemas/__init__.py: run `python -m schemas` and commit the result"
    )


def test_exported_schema_describes_the_record() -> None:
    exported = schemas.json_schema()
    assert exported["title"] == "Record"
    assert exported["required"] == ["id", "conversations"]
    assert set(exported["properties"]) == {"id", "source", "source_split", "task", "conversations"}


def test_unlabeled_turns_are_written_with_assistant_null() -> None:
    """docs/format.md shows `"assistant": null`; the writer leaves other None fields out but keeps this one."""
    record = schemas.Record.model_validate({"id": "t", "conversations": [{"images": ["a.png"], "user": "Q?"}]})
    assert record.model_dump(mode="json", exclude_none=True) == {
        "id": "t", "task": "chat", "conversations": [{"images": ["a.png"], "user": "Q?", "assistant": None}]
    }
