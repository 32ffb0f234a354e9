"""A small JSON Schema validator for tool arguments: the subset tools need, checked in the
supervisor before a call reaches Deno. Pure code.

Supported: ``type`` (string or list; object, array, string, number, integer, boolean,
null), ``properties``, ``required``, ``additionalProperties`` (bool or schema),
``items``, ``enum``, ``const``, ``minimum``/``maximum``, ``exclusiveMinimum``/
``exclusiveMaximum``, ``minLength``/``maxLength``, ``minItems``/``maxItems``,
``pattern``, ``description``/``title``/``default`` (ignored). Anything else in a schema
is refused when the tool is registered, so a schema never silently checks less than its
author meant.
"""

from __future__ import annotations

import operator
import re
from typing import Any, Final

from agentlibos.errors import InvalidArgument

KNOWN: Final = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "enum", "const",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "minItems", "maxItems", "pattern", "description", "title", "default", "$schema",
})
TYPES: Final = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
MAX_DEPTH: Final = 32


def check_schema(schema: object, where: str = "schema", depth: int = 0) -> None:
    """Refuse a schema that uses keywords this validator does not implement."""
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"{where}: nested too deeply")
    if not isinstance(schema, dict):
        raise InvalidArgument(f"{where}: a schema must be an object")
    unknown = set(schema) - KNOWN
    if unknown:
        raise InvalidArgument(f"{where}: unsupported keyword(s) {', '.join(sorted(unknown))}")
    t = schema.get("type")
    types = t if isinstance(t, list) else [t] if t is not None else []
    for x in types:
        if x not in TYPES:
            raise InvalidArgument(f"{where}: unknown type {x!r}")
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise InvalidArgument(f"{where}: properties must be an object")
    for k, sub in props.items():
        check_schema(sub, f"{where}.properties.{k}", depth + 1)
    req = schema.get("required", [])
    if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
        raise InvalidArgument(f"{where}: required must be a list of names")
    ap = schema.get("additionalProperties", True)
    if isinstance(ap, dict):
        check_schema(ap, f"{where}.additionalProperties", depth + 1)
    elif not isinstance(ap, bool):
        raise InvalidArgument(f"{where}: additionalProperties must be a boolean or a schema")
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items", depth + 1)
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as e:
            raise InvalidArgument(f"{where}: bad pattern: {e}") from None


def _type_ok(value: Any, t: str) -> bool:
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if t == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, int | float)  # number


def validate(value: Any, schema: dict[str, Any], where: str = "args") -> None:
    """Raise InvalidArgument naming the first place ``value`` breaks ``schema``."""
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_type_ok(value, x) for x in types):
            raise InvalidArgument(f"{where}: expected {' or '.join(types)}, "
                                  f"got {type(value).__name__}")
    if "enum" in schema and value not in schema["enum"]:
        raise InvalidArgument(f"{where}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        raise InvalidArgument(f"{where}: must be {schema['const']!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        for key, op in (("minimum", operator.ge), ("maximum", operator.le),
                        ("exclusiveMinimum", operator.gt), ("exclusiveMaximum", operator.lt)):
            if key in schema and not op(value, schema[key]):
                raise InvalidArgument(f"{where}: {value} breaks {key} {schema[key]}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise InvalidArgument(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise InvalidArgument(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise InvalidArgument(f"{where}: does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise InvalidArgument(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise InvalidArgument(f"{where}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        props: dict[str, Any] = schema.get("properties", {})
        for r in schema.get("required", []):
            if r not in value:
                raise InvalidArgument(f"{where}: missing required property {r!r}")
        for k, v in value.items():
            if k in props:
                validate(v, props[k], f"{where}.{k}")
            else:
                ap = schema.get("additionalProperties", True)
                if ap is False:
                    raise InvalidArgument(f"{where}: unexpected property {k!r}")
                if isinstance(ap, dict):
                    validate(v, ap, f"{where}.{k}")
