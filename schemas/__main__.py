"""``python -m schemas`` regenerates the committed JSON Schema from the pydantic models."""

from schemas import SCHEMA_PATH, write_json_schema

write_json_schema()
print(f"wrote {SCHEMA_PATH}")
