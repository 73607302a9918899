"""One short line for a config that does not match workflow/schemas/config.schema.yaml.

Snakemake's `validate` prints the whole schema and the whole config; what a user needs is the
key, the value, what is allowed and, for a typo, the name meant (common.smk calls `explain`).
"""

from __future__ import annotations

import difflib

from jsonschema.exceptions import ValidationError, best_match

BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
JSON_TYPES = {"integer": "an integer", "number": "a number", "string": "a string",
              "boolean": "true or false", "array": "a list", "object": "a mapping"}


def key_path(error: ValidationError) -> str:
    """experiments.foo.keep_shots[0]; `config` for the top level."""
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "config"


def cause(exc: BaseException | None) -> ValidationError | None:
    """The jsonschema error behind Snakemake's WorkflowError (raised while handling it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ValidationError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def explain(error: ValidationError) -> str:
    """`<key path>: <value> <what is wrong>; allowed: <what is>` on one line."""
    error = best_match([error])  # into oneOf/anyOf: the alternative the value was meant for
    where, value, schema, kind = key_path(error), error.instance, error.schema, error.validator
    shown = _show(value)
    reason = f" ({schema['description']})" if "then" in error.absolute_schema_path and \
        "description" in schema else ""
    if "propertyNames" in error.absolute_schema_path:
        if kind == "not":
            return f"{where}: the name {shown} is reserved"
        return f"{where}: the name {shown} is not allowed; names must match {schema['pattern']}"
    if kind == "additionalProperties":
        return _unknown_keys(where, value, schema)
    if kind == "required":
        missing = [k for k in schema["required"] if k not in value]
        return f"{where}: missing required key {', '.join(map(repr, missing))}"
    if kind in ("enum", "const"):
        allowed = schema["enum"] if kind == "enum" else [schema["const"]]
        # a value allowed elsewhere (then-clause) is no typo
        hint = reason or _did_you_mean(value, allowed)
        if value == 124 and "2:4" in allowed:
            hint = " (YAML reads an unquoted 2:4 as the base-60 number 124: write \"2:4\")"
        return f"{where}: {shown} is not allowed; allowed: {_alternatives(allowed)}{hint}"
    if kind == "type":
        expected = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return (f"{where}: {shown} is not {' or '.join(JSON_TYPES.get(t, t) for t in expected)}"
                f"{reason}")
    if kind in BOUNDS:
        return f"{where}: {shown} is out of range; allowed: {_range(schema)}{reason}"
    if kind in ("oneOf", "anyOf"):
        options = " or ".join(_describe(s) for s in schema[kind])
        if not error.context:
            return f"{where}: {shown} matches more than one of: {options}; give only one"
        return f"{where}: {shown} is not allowed; allowed: {options}"
    if kind == "pattern":
        return f"{where}: {shown} does not match {schema['pattern']}{reason}"
    if kind in ("minProperties", "minItems"):
        return f"{where}: {shown} needs at least {schema[kind]} entries"
    if kind == "uniqueItems":
        return f"{where}: {shown} lists a value twice"
    return f"{where}: {error.message[:120]}{reason}"  # rare kinds: jsonschema's words


def _unknown_keys(where: str, value: dict, schema: dict) -> str:
    allowed = sorted(schema.get("properties", {}))
    unknown = [k for k in value if k not in allowed]
    first, more = unknown[0], f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    key = f"{where}.{first}" if where != "config" else str(first)
    hint = _did_you_mean(first, allowed) or f"; allowed: {', '.join(allowed)}"
    return f"{key}: unknown key{more}{hint}"


def _did_you_mean(value, allowed) -> str:
    names = [a for a in allowed if isinstance(a, str)]
    match = difflib.get_close_matches(value, names, n=1) if isinstance(value, str) else []
    return f" (did you mean {match[0]!r}?)" if match else ""


def _show(value, width: int = 60) -> str:
    """repr, cut: a whole experiment's mapping would make the line unreadable."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _alternatives(values) -> str:
    return ", ".join(map(repr, values))


def _range(schema: dict) -> str:
    return " and ".join(f"{op} {schema[k]}" for k, op in BOUNDS.items() if k in schema)


def _describe(schema: dict) -> str:
    """A oneOf/anyOf alternative in words."""
    if "enum" in schema or "const" in schema:
        return _alternatives(schema.get("enum", [schema.get("const")]))
    if "required" in schema and len(schema) == 1:
        return f"a mapping with {', '.join(schema['required'])}"
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        item = schema["items"]
        kind = JSON_TYPES.get(item.get("type"), "values")
        bound = f" {_range(item)}" if any(k in item for k in BOUNDS) else ""
        return f"a list of {kind.removeprefix('an ').removeprefix('a ')}s{bound}"
    return JSON_TYPES.get(schema.get("type"), "another form")


def normalise(config: dict) -> list[str]:
    """Fix what YAML 1.1 did to a value before validation; a warning line per fix.

    An unquoted `structure: 2:4` is the base-60 integer 124 to YAML 1.1 (PyYAML, Snakemake).
    """
    warnings = []
    experiments = config.get("experiments") if isinstance(config, dict) else None
    for name, exp in (experiments or {}).items() if isinstance(experiments, dict) else ():
        if isinstance(exp, dict) and type(exp.get("structure")) is int and exp["structure"] == 124:
            exp["structure"] = "2:4"
            warnings.append(f"experiments.{name}.structure: read as 124 (YAML's base-60 reading "
                            "of an unquoted 2:4), taken as \"2:4\"; quote it to silence this")
    return warnings
