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
    assert set(exported["properties"]) == {"id", "source", "task", "conversations"}
