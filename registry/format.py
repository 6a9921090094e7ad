"""`python -m registry.format`: rewrite recipes.json canonically and regenerate its JSON Schema."""

from __future__ import annotations

import json

from registry.recipes import SCHEMA_PATH, canonical_text, json_schema, load_recipes, recipes_path


def main() -> None:
    path = recipes_path()
    load_recipes(path)  # refuse to format an invalid file
    path.write_text(canonical_text(json.loads(path.read_text(encoding="utf-8"))), encoding="utf-8")
    SCHEMA_PATH.write_text(canonical_text(json_schema()), encoding="utf-8")
    print(f"formatted {path}; wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
