"""BACKWARD compatibility of Avro schemas, with reasons: can a new version (the reader) read every record an older
version (the writer) wrote? This is the one statement of the rule; the file registry applies it to `registry.yaml`
at load, the Confluent adapter before it registers a version, `k2 schemas check` to a candidate file, and the batch
decoder to decide which writer schemas its block path may read.

The rules are Avro's schema resolution (the specification's "Schema Resolution"), checked statically:

* records match by full name (or a reader alias); every reader field the writer lacks needs a default, valid for
  its type; writer fields the reader lacks are skipped;
* primitives match, or promote: int -> long, float, double; long -> float, double; float -> double;
  string <-> bytes;
* enums match by name, and every writer symbol is a reader symbol unless the reader has a default symbol; fixed
  types match by name and size; arrays by items, maps by values;
* a writer union is readable when each of its branches is; a reader union reads a writer type one of its branches
  reads.

K2 is stricter than Avro in one place: logical types change meaning, not just bytes. A `timestamp-millis` read as
`timestamp-micros`, or a decimal read at another scale, decodes without error and means something else, so a
logical type must stay as it was (a decimal may widen its precision at the same scale).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})
# writer type -> reader types that read it (besides itself)
PROMOTIONS: Mapping[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}

Schema = Any  # Avro schema JSON: a name, a list (union) or an object


@dataclass(frozen=True)
class VersionVerdict:
    """Whether a candidate reads the records of one registered version, and why not."""

    version: int  # 1-based, within the subject
    schema_id: int
    reasons: tuple[str, ...]

    @property
    def compatible(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class SubjectVerdict:
    """A candidate checked against every registered version of a subject."""

    subject: str
    verdicts: tuple[VersionVerdict, ...] = field(default_factory=tuple)

    @property
    def compatible(self) -> bool:
        return all(v.compatible for v in self.verdicts)

    def explain(self) -> str:
        """One line per incompatible version, each reason on its own indented line."""
        lines = []
        for v in self.verdicts:
            if v.reasons:
                lines.append(f"cannot read version {v.version} (schema id {v.schema_id}) of {self.subject}:")
                lines.extend(f"  - {reason}" for reason in v.reasons)
        return "\n".join(lines)


def backward_reasons(reader: Schema, writer: Schema) -> list[str]:
    """Why `reader` cannot read every record `writer` wrote; empty when it can."""
    reader, writer = _qualified(reader), _qualified(writer)
    return _Resolver(_names(reader), _names(writer)).check(reader, writer, _root_name(reader))


def is_backward_compatible(reader: Schema, writer: Schema) -> bool:
    return not backward_reasons(reader, writer)


def check_subject(subject: str, candidate: Schema, versions: Sequence[tuple[int, Schema]]) -> SubjectVerdict:
    """`candidate` against every registered version of `subject` (`versions`: (schema id, schema), oldest first).
    A version identical to the candidate is trivially readable."""
    return SubjectVerdict(
        subject,
        tuple(
            VersionVerdict(n, schema_id, tuple(backward_reasons(candidate, schema)))
            for n, (schema_id, schema) in enumerate(versions, start=1)
        ),
    )


def check_history(subject: str, versions: Sequence[tuple[int, Schema]]) -> list[str]:
    """Every version of a subject against all the ones before it: the reasons a registered history breaks the rule
    (empty when each version reads every earlier version's data)."""
    problems: list[str] = []
    for i in range(1, len(versions)):
        verdict = check_subject(subject, versions[i][1], versions[:i])
        if not verdict.compatible:
            problems.append(f"version {i + 1} (schema id {versions[i][0]}) {verdict.explain()}")
    return problems


# --- named types --------------------------------------------------------------------------------------------------


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _root_name(schema: Schema) -> str:
    if isinstance(schema, dict) and schema.get("type") in NAMED and isinstance(schema.get("name"), str):
        return _full_name(schema["name"], schema.get("namespace"))
    return "<root>"


def _qualified(schema: Schema) -> Schema:
    """A copy of `schema` in which every named type's name, and every reference to one, is its full name (a name
    without a dot takes the namespace of the type around it, as Avro says)."""
    defined: set[str] = set()

    def walk(node: Schema, namespace: str | None) -> Schema:
        if isinstance(node, list):
            return [walk(branch, namespace) for branch in node]
        if isinstance(node, str):
            if node in PRIMITIVES or "." in node or not namespace:
                return node
            full = _full_name(node, namespace)
            return full if full in defined else node
        if not isinstance(node, dict):
            return node
        kind = node.get("type")
        out = dict(node)
        if kind in NAMED and isinstance(node.get("name"), str):
            full = _full_name(node["name"], node.get("namespace", namespace))
            defined.add(full)
            out["name"] = full
            out.pop("namespace", None)
            namespace = full.rpartition(".")[0] or None
            if namespace:
                out["namespace"] = namespace  # kept for aliases, which are relative to it
            if kind in ("record", "error"):
                out["fields"] = [{**f, "type": walk(f.get("type"), namespace)} for f in node.get("fields", [])]
        elif kind == "array":
            out["items"] = walk(node.get("items"), namespace)
        elif kind == "map":
            out["values"] = walk(node.get("values"), namespace)
        elif isinstance(kind, dict | list | str):
            out["type"] = walk(kind, namespace)
        return out

    return walk(schema, None)


def _names(schema: Schema) -> dict[str, dict[str, Any]]:
    """Every named type defined in `schema`, by full name, with its namespace resolved (so a later reference by
    name, which Avro allows, can be followed)."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Schema, namespace: str | None) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch, namespace)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind in NAMED and isinstance(node.get("name"), str):
            full = _full_name(node["name"], node.get("namespace", namespace))
            found[full] = {**node, "name": full}
            namespace = full.rpartition(".")[0] or None
            for f in node.get("fields", []) if kind in ("record", "error") else []:
                walk(f.get("type"), namespace)
        elif kind == "array":
            walk(node.get("items"), namespace)
        elif kind == "map":
            walk(node.get("values"), namespace)
        elif isinstance(kind, dict | list):
            walk(kind, namespace)

    walk(schema, None)
    return found


def _describe(schema: Schema) -> str:
    if isinstance(schema, list):
        return "union [" + ", ".join(_describe(b) for b in schema) + "]"
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind in NAMED:
            return f"{kind} {schema.get('name')}"
        if kind == "array":
            return f"array of {_describe(schema.get('items'))}"
        if kind == "map":
            return f"map of {_describe(schema.get('values'))}"
        logical = schema.get("logicalType")
        return f"{_describe(kind)} ({logical})" if logical else _describe(kind)
    return str(schema)


class _Resolver:
    def __init__(self, reader_names: dict[str, dict[str, Any]], writer_names: dict[str, dict[str, Any]]) -> None:
        self.reader_names = reader_names
        self.writer_names = writer_names
        self._seen: set[tuple[str, str]] = set()  # recursive record pairs already being checked

    def _deref(self, schema: Schema, names: dict[str, dict[str, Any]]) -> Schema:
        """A type by name -> its definition; {"type": "long"} -> "long" (when no logical type sits on it)."""
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return names.get(schema) or next((d for n, d in names.items() if n.rpartition(".")[2] == schema), schema)
        if isinstance(schema, dict) and schema.get("type") in PRIMITIVES and "logicalType" not in schema:
            return schema["type"]
        if isinstance(schema, dict) and isinstance(schema.get("type"), dict | list):
            return self._deref(schema["type"], names)
        return schema

    def check(self, reader: Schema, writer: Schema, path: str) -> list[str]:
        reader = self._deref(reader, self.reader_names)
        writer = self._deref(writer, self.writer_names)
        if isinstance(writer, list):
            reasons: list[str] = []
            for branch in writer:
                reasons += self.check(reader, branch, path)
            return reasons
        if isinstance(reader, list):
            tried = [(branch, self.check(branch, writer, path)) for branch in reader]
            if any(not reasons for _, reasons in tried):
                return []
            w_kind = _kind(writer)
            alike = [reasons for branch, reasons in tried if _kind(self._deref(branch, self.reader_names)) == w_kind]
            if alike:  # the branch meant to read it, and why it cannot
                return alike[0]
            return [f"{path}: {_describe(reader)} has no branch that reads the old {_describe(writer)}"]
        r_kind, w_kind = _kind(reader), _kind(writer)
        if r_kind in PRIMITIVES or w_kind in PRIMITIVES:
            return self._primitive(reader, writer, r_kind, w_kind, path)
        if r_kind != w_kind:
            return [f"{path}: type changed from {_describe(writer)} to {_describe(reader)}"]
        if r_kind in ("record", "error"):
            return self._record(reader, writer, path)
        if r_kind == "enum":
            return self._enum(reader, writer, path)
        if r_kind == "fixed":
            return self._fixed(reader, writer, path)
        if r_kind == "array":
            return self.check(reader.get("items"), writer.get("items"), f"{path}[]")
        if r_kind == "map":
            return self.check(reader.get("values"), writer.get("values"), f"{path}{{}}")
        return [f"{path}: unknown type {_describe(reader)}"]

    def _primitive(self, reader: Schema, writer: Schema, r_kind: str, w_kind: str, path: str) -> list[str]:
        if r_kind != w_kind and r_kind not in PROMOTIONS.get(w_kind, frozenset()):
            return [f"{path}: type changed from {_describe(writer)} to {_describe(reader)}, which Avro cannot promote"]
        r_logical = reader.get("logicalType") if isinstance(reader, dict) else None
        w_logical = writer.get("logicalType") if isinstance(writer, dict) else None
        if r_logical != w_logical:
            return [
                f"{path}: logical type changed from {w_logical or 'none'} to {r_logical or 'none'}: old values would "
                "decode but mean something else"
            ]
        if r_logical == "decimal":
            r_scale, w_scale = reader.get("scale", 0), writer.get("scale", 0)
            if r_scale != w_scale:
                return [
                    f"{path}: decimal scale changed from {w_scale} to {r_scale}: old values would read scaled wrong"
                ]
            if reader.get("precision", 0) < writer.get("precision", 0):
                return [
                    f"{path}: decimal precision narrowed from {writer.get('precision')} to {reader.get('precision')}"
                ]
        return []

    def _record(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[str]:
        r_name, w_name = reader.get("name", ""), writer.get("name", "")
        if not _same_name(r_name, w_name, reader.get("aliases", ()), reader.get("namespace")):
            return [f"{path}: record name changed from {w_name} to {r_name} (add the old name as an alias)"]
        if (r_name, w_name) in self._seen:
            return []  # a recursive type: already being checked further up
        self._seen.add((r_name, w_name))
        by_name = {f["name"]: f for f in writer.get("fields", [])}
        reasons: list[str] = []
        for f in reader.get("fields", []):
            here = f"{path}.{f['name']}"
            old = next((by_name[n] for n in (f["name"], *f.get("aliases", ())) if n in by_name), None)
            if old is not None:
                reasons += self.check(f["type"], old["type"], here)
            elif "default" not in f:
                reasons.append(
                    f"{here}: field added without a default ({_describe(f['type'])}): records written before have "
                    "no value for it; give it a default (a nullable union with default null)"
                )
            else:
                reasons += self._default(f["type"], f["default"], here)
        self._seen.discard((r_name, w_name))
        return reasons

    def _default(self, schema: Schema, default: Any, path: str) -> list[str]:
        """Avro fills a missing field with its default, read as the field's type (a union's first branch)."""
        schema = self._deref(schema, self.reader_names)
        if isinstance(schema, list):
            if not schema:
                return [f"{path}: an empty union has no value"]
            first = schema[0]
            if not _default_fits(self._deref(first, self.reader_names), default):
                return [
                    f"{path}: default {default!r} is not a {_describe(first)}, the union's first branch (put the "
                    "default's type first)"
                ]
            return []
        if not _default_fits(schema, default):
            return [f"{path}: default {default!r} is not a {_describe(schema)}"]
        return []

    def _enum(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[str]:
        r_name, w_name = reader.get("name", ""), writer.get("name", "")
        if not _same_name(r_name, w_name, reader.get("aliases", ()), reader.get("namespace")):
            return [f"{path}: enum name changed from {w_name} to {r_name} (add the old name as an alias)"]
        missing = [s for s in writer.get("symbols", []) if s not in reader.get("symbols", [])]
        if missing and "default" not in reader:
            return [f"{path}: enum {r_name} dropped symbols {missing} without a default symbol to read them as"]
        return []

    def _fixed(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[str]:
        r_name, w_name = reader.get("name", ""), writer.get("name", "")
        if not _same_name(r_name, w_name, reader.get("aliases", ()), reader.get("namespace")):
            return [f"{path}: fixed name changed from {w_name} to {r_name} (add the old name as an alias)"]
        if reader.get("size") != writer.get("size"):
            return [f"{path}: fixed {r_name} size changed from {writer.get('size')} to {reader.get('size')}"]
        return []


def _kind(schema: Schema) -> str:
    if isinstance(schema, dict):
        kind = schema.get("type")
        return kind if isinstance(kind, str) else "?"
    return schema if isinstance(schema, str) else "?"


def _same_name(reader: str, writer: str, aliases: Iterable[str], namespace: str | None) -> bool:
    """Full names equal, or the writer's is one of the reader's aliases (relative to the reader's namespace)."""
    if reader == writer:
        return True
    space = namespace or reader.rpartition(".")[0] or None
    return writer in {_full_name(a, space) for a in aliases}


def _default_fits(schema: Schema, default: Any) -> bool:
    """Whether a JSON default value is one of `schema`'s values (Avro's JSON encoding of defaults)."""
    kind = _kind(schema)
    if kind == "null":
        return default is None
    if kind == "boolean":
        return isinstance(default, bool)
    if kind in ("int", "long"):
        return isinstance(default, int) and not isinstance(default, bool)
    if kind in ("float", "double"):
        return isinstance(default, int | float) and not isinstance(default, bool)
    if kind in ("bytes", "string", "fixed"):
        return isinstance(default, str)
    if kind == "enum":
        return isinstance(default, str) and default in schema.get("symbols", [])
    if kind == "array":
        return isinstance(default, list)
    if kind in ("map", "record", "error"):
        return isinstance(default, dict)
    return True  # a reference this module cannot follow: Avro's own parser judges it
