"""A small JSON Schema validator for tool arguments: the subset tools need, checked in the
supervisor before a call reaches Deno. Pure code.

Supported: ``type`` (string or list; object, array, string, number, integer, boolean,
null), ``properties``, ``required``, ``additionalProperties`` (bool or schema),
``items``, ``enum``, ``const``, ``minimum``/``maximum``, ``exclusiveMinimum``/
``exclusiveMaximum``, ``minLength``/``maxLength``, ``minItems``/``maxItems``,
``pattern``, ``description``/``title``/``default`` (ignored). Anything else in a schema
is refused when the tool is registered, so a schema never silently checks less than its
author meant.

Threat: a schema is agent-written, and validation runs on the supervisor's one thread.
A ``pattern`` such as ``^(a+)+$`` takes Python's backtracking ``re`` exponential time
on ``"aaaa...b"``. Patterns therefore run in RE2 (google-re2), whose time is linear in
the input; a pattern RE2 cannot take (look-around, back-references) or one longer than
:data:`MAX_PATTERN_LEN` is refused with :class:`InvalidArgument` when the schema is
checked, and again, should an unchecked schema reach :func:`validate`, there.
"""

from __future__ import annotations

import operator
from functools import lru_cache
from typing import Any, Final

import re2

from agentlibos.errors import InvalidArgument

KNOWN: Final = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "enum", "const",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "minItems", "maxItems", "pattern", "description", "title", "default", "$schema",
})
TYPES: Final = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
MAX_DEPTH: Final = 32
MAX_PATTERN_LEN: Final = 1024
# RE2's memory for one compiled pattern: a pattern whose automaton needs more (say
# "a{1000}{1000}") fails to compile and is refused rather than growing the supervisor.
_RE2_MAX_MEM: Final = 8 << 20


@lru_cache(maxsize=256)
def _compile(pattern: str) -> Any:
    opts = re2.Options()
    opts.log_errors = False  # the refusal is the caller's error, not a log line
    opts.max_mem = _RE2_MAX_MEM
    return re2.compile(pattern, opts)


def compile_pattern(pattern: object, where: str) -> Any:
    """A schema ``pattern`` compiled by RE2 (linear-time), or :class:`InvalidArgument`."""
    if not isinstance(pattern, str):
        raise InvalidArgument(f"{where}: pattern must be a string")
    if len(pattern) > MAX_PATTERN_LEN:
        raise InvalidArgument(f"{where}: pattern longer than {MAX_PATTERN_LEN} characters")
    try:
        return _compile(pattern)
    except (re2.error, UnicodeEncodeError, TypeError, ValueError) as e:
        detail = e.args[0] if e.args else e
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise InvalidArgument(
            f"{where}: pattern {pattern[:80]!r} cannot be used: {detail} (patterns run in "
            "a linear-time engine without look-around or back-references)"
        ) from None


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
        compile_pattern(schema["pattern"], where)


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
        if "pattern" in schema:
            rx = compile_pattern(schema["pattern"], where)
            try:
                found = rx.search(value) is not None
            except UnicodeEncodeError:
                raise InvalidArgument(f"{where}: not valid text (a lone surrogate)") from None
            if not found:
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
