"""Validation against the component schemas of the official OpenAI spec (OpenAPI 3.1).

The spec still uses OpenAPI 3.0's `nullable: true` in places; JSON Schema has no such keyword, so
those schemas are rewritten to also accept null before validating."""

import copy

import jsonschema
import yaml


def _nullable_to_json_schema(node):
    if isinstance(node, dict):
        node = {k: _nullable_to_json_schema(v) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable_to_json_schema(v) for v in node]
    return node


class Schemas:
    def __init__(self, path):
        with open(path) as f:
            spec = yaml.safe_load(f)
        self._root = {"components": _nullable_to_json_schema(spec["components"])}
        self._validators = {}

    def validate(self, name, instance):
        if name not in self._validators:
            assert name in self._root["components"]["schemas"], f"no schema {name}"
            schema = copy.copy(self._root)
            schema["$ref"] = f"#/components/schemas/{name}"
            self._validators[name] = jsonschema.Draft202012Validator(schema)
        errors = sorted(self._validators[name].iter_errors(instance), key=lambda e: list(e.path))
        assert not errors, f"{name} violations: " + "; ".join(
            f"{list(e.path)}: {e.message[:200]}" for e in errors[:5]
        )
