"""Arguments for exploration calls: drawn from a tool's JSON schema and from values that
earlier calls returned.

A third-party server is explored blind: a call with made-up strings mostly fails ("no such
file"), while a path or a name the server itself printed a moment ago usually works. So every
output feeds a `ValuePool` (strings, paths, names it mentions), and a string argument is picked
from the pool, preferring values that fit the property's name (a `path` gets something
path-like, a `query` a word). A listing printed by a call that was given a path also yields
that path joined with each listed name, which is how a directory listing's bare file names
become readable paths.

A value not yet given to a tool's property is preferred to one already given, so the calls
spread over what there is (every file read once before any twice). Which kind of value suits
which tool is learnt as exploration goes: values have a shape (a file name, a path to a file,
a path without an extension, a URI, a word, a phrase), and each (tool, property, shape) keeps
its successes and failures; a shape is drawn with weight (successes + 1) / (tries + 2), other
tools' property of the same name counting half. A listing tool soon stops being handed file
names, a reading tool directories.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any

MAX_VALUE_CHARS = 200
MAX_POOL = 2000
OPTIONAL_SHARE = 0.2  # how often an optional property is filled in
_PATH_HINTS = ("path", "file", "dir", "folder", "uri", "url", "source", "destination", "root")
_WORD_HINTS = ("query", "pattern", "search", "text", "term", "keyword", "topic", "message", "q")
_NAME_HINTS = ("name", "id", "entity", "key", "title", "label")
_PATHLIKE = re.compile(
    r"(?<![\w/:.~-])[~.]{0,2}/?(?:[\w.-]+/)+[\w.-]+/?|\b[\w-]+\.[A-Za-z0-9]{1,6}\b"
)
_EXTENSION = re.compile(r"[\w-]+\.[A-Za-z0-9]{1,6}")
_PATH_VALUE = re.compile(r"(?:[a-z][a-z0-9+.-]*://)?[~.]{0,2}/?[\w.@+-]+(?:/[\w.@+-]+)*/?")
_QUOTED = re.compile(r"\"([^\"\n]{1,120})\"|'([^'\n]{1,120})'")
_NAMEISH = re.compile(r"\b[A-Z][\w'-]+(?:\s+[A-Z][\w'-]+)*")
_WORD = re.compile(r"\b[A-Za-z][A-Za-z-]{3,}\b")
_LISTING_PREFIX = re.compile(r"^[\s\-*•|]*(?:\[[A-Z]+\]\s*)?")


def schema_problem(schema: Any) -> str | None:
    """Why arguments cannot be made from a tool's input schema, or None when they can.
    Checked before exploring, so one broken tool is skipped with a warning, not a crash."""
    if not isinstance(schema, dict):
        return f"the input schema is a {type(schema).__name__}, not a JSON object"
    kind = schema.get("type", "object")
    if kind != "object":
        return f"the input schema's type is {kind!r}, not 'object'"
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return "the input schema's properties are not an object"
    bad = [name for name, sub in properties.items() if not isinstance(sub, dict | bool)]
    if bad:
        return f"the schema of property {bad[0]!r} is not an object"
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return "the input schema's required is not a list of names"
    return None


class ValuePool:
    """Strings seen in outputs so far, in the order first seen (so draws are reproducible)."""

    def __init__(self) -> None:
        self.strings: dict[str, None] = {}  # an ordered set

    def __len__(self) -> int:
        return len(self.strings)

    def add(self, value: str) -> None:
        value = value.strip().strip(".,;:")
        if value and len(value) <= MAX_VALUE_CHARS and len(self.strings) < MAX_POOL:
            self.strings.setdefault(value, None)

    def harvest(self, text: str, arguments: dict[str, Any]) -> None:
        """Take what `text` (one output) mentions; `arguments` are the call's, for joining
        listed names onto the directory path the call was given."""
        strings = _json_strings(text)
        for value in strings if strings is not None else _text_values(text):
            self.add(value)
        bases = [v.rstrip("/") for v in arguments.values() if isinstance(v, str)]
        bases = [b for b in bases if shape(b) == "path" and _PATH_VALUE.fullmatch(b)]
        named = _json_strings(text, keys=("name", "path", "file"))
        names = named if named is not None else _listed_names(text)
        names = [n for n in names if re.fullmatch(r"[\w.-]+", n) and len(n) <= 100]
        for base in bases[:1]:
            for name in names[:200]:
                self.add(f"{base}/{name}")

    def pick(
        self,
        rng: random.Random,
        hint: str,
        weight: Callable[[str], float] = lambda _: 1.0,
        used: frozenset[str] = frozenset(),
    ) -> str | None:
        """A string for a property called `hint`: one that fits its name when any does, of a
        shape drawn with `weight(shape)`, not in `used` while that shape has others."""
        values = list(self.strings)
        if not values:
            return None
        fitting = [v for v in values if _fits(v, hint.lower())] or values
        by_shape: dict[str, list[str]] = {}
        for value in fitting:
            by_shape.setdefault(shape(value), []).append(value)
        shapes = list(by_shape)
        chosen = rng.choices(shapes, weights=[weight(s) for s in shapes])[0]
        fresh = [v for v in by_shape[chosen] if v not in used]
        return rng.choice(fresh or by_shape[chosen])


def shape(value: str) -> str:
    """The kind of a value, for learning which kinds a tool accepts."""
    if "://" in value:
        return "uri"
    if "/" in value:
        last = value.rstrip("/").rsplit("/", 1)[-1]
        return "path_to_file" if _EXTENSION.fullmatch(last) else "path"
    if _EXTENSION.fullmatch(value):
        return "file_name"
    return "phrase" if " " in value else "word"


def _json_strings(text: str, keys: tuple[str, ...] = ()) -> list[str] | None:
    """Every string value of a JSON output (with `keys`, only those under a key containing one
    of them, e.g. "name"), or None when it is not JSON."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        data = json.loads(stripped)
    except ValueError:
        return None
    found: list[str] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                walk(value, str(name).lower())
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif isinstance(node, str) and (not keys or any(k in key for k in keys)):
            found.append(node)

    walk(data, "")
    return found


def _listed_names(text: str) -> list[str]:
    """Names a listing shows: the first word of lines marked as entries ("[FILE] a.txt",
    "- notes") and words that look like file names ("ada.txt   41 B")."""
    names = []
    for line in text.splitlines()[:500]:
        entry = _LISTING_PREFIX.sub("", line).strip()
        if not entry:
            continue
        first = entry.split()[0]
        if entry != line.strip() or _EXTENSION.fullmatch(first):
            names.append(first)
    return names


def _text_values(text: str) -> list[str]:
    """Paths, quoted strings, listed lines, capitalised names and words of a text."""
    found: list[str] = []
    for line in text.splitlines()[:500]:
        entry = _LISTING_PREFIX.sub("", line).strip()
        if 0 < len(entry) <= 80:
            found.append(entry)
    found += _PATHLIKE.findall(text)
    found += [a or b for a, b in _QUOTED.findall(text)]
    found += _NAMEISH.findall(text)
    found += _WORD.findall(text)[:200]
    return found


def _fits(value: str, hint: str) -> bool:
    if any(h in hint for h in _PATH_HINTS):
        return bool(_PATH_VALUE.fullmatch(value)) and ("/" in value or shape(value) != "word")
    if any(hint == h or hint.startswith(h) for h in _WORD_HINTS):
        return bool(re.fullmatch(r"[\w' -]{2,40}", value)) and "/" not in value
    if any(h in hint for h in _NAME_HINTS):
        return bool(re.fullmatch(r"[\w .'-]{1,60}", value))
    return True


class ArgumentMaker:
    """Arguments for one call of a tool, from its schema and the pool (seeded); told how each
    call went (`outcome`), it learns which shapes of value each tool's properties take."""

    def __init__(self, pool: ValuePool, rng: random.Random) -> None:
        self.pool = pool
        self.rng = rng
        self.tried: dict[tuple[str, str, str], list[int]] = {}  # -> [successes, failures]
        self.used: dict[tuple[str, str], set[str]] = {}  # (tool, property) -> values given
        self._tool = ""
        self._picked: list[tuple[str, str, str]] = []  # (property, shape, value), last call

    def arguments(self, tool: str, schema: dict[str, Any]) -> dict[str, Any]:
        self._tool, self._picked = tool, []
        return self._object(schema, depth=0)

    def outcome(self, ok: bool) -> None:
        """How the call made from the last `arguments` went (they were used)."""
        for prop, kind, value in self._picked:
            tally = self.tried.setdefault((self._tool, prop, kind), [0, 0])
            tally[0 if ok else 1] += 1
            self.used.setdefault((self._tool, prop), set()).add(value)

    def _weight(self, prop: str) -> Callable[[str], float]:
        """(successes + 1) / (tries + 2) for this tool's property, with what other tools'
        property of the same name did counting half (tools of one server that take a `path`
        tend to take the same kind of path)."""

        def weight(kind: str) -> float:
            wins = losses = 0.0
            for (tool, name, shape_), (won, lost) in self.tried.items():
                if name == prop and shape_ == kind:
                    share = 1.0 if tool == self._tool else 0.5
                    wins, losses = wins + share * won, losses + share * lost
            return (wins + 1) / (wins + losses + 2)

        return weight

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties") or {}
        required = list(dict.fromkeys(schema.get("required") or []))  # in the schema's order
        out: dict[str, Any] = {}
        for name in required + [p for p in properties if p not in required]:
            if name not in required and self.rng.random() >= OPTIONAL_SHARE:
                continue
            sub = properties.get(name, {})
            out[name] = self.value(sub if isinstance(sub, dict) else {}, name, depth)
        return out

    def value(self, schema: dict[str, Any], hint: str, depth: int = 0) -> Any:
        """A value for one property (an unknown type gets a string)."""
        if schema.get("enum"):
            return self.rng.choice(list(schema["enum"]))
        if "const" in schema:
            return schema["const"]
        for key in ("anyOf", "oneOf"):
            options = [o for o in schema.get(key) or [] if isinstance(o, dict)]
            if options:
                return self.value(self.rng.choice(options), hint, depth)
        kind = schema.get("type", "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "string")
        if kind in ("integer", "number"):
            return self._number(schema, integer=kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "array":
            items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
            count = max(int(schema.get("minItems", 1) or 1), self.rng.randint(1, 2))
            return [self.value(items or {}, hint, depth + 1) for _ in range(count)]
        if kind == "object":
            return self._object(schema, depth + 1) if depth < 3 else {}
        return self._string(schema, hint)

    def _number(self, schema: dict[str, Any], integer: bool) -> int | float:
        if "default" in schema and isinstance(schema["default"], int | float):
            return schema["default"]
        low = schema.get("minimum", 1)
        high = schema.get("maximum", max(low, 5) if isinstance(low, int | float) else 5)
        value = self.rng.randint(int(low), int(max(low, high)))
        return value if integer else float(value)

    def _string(self, schema: dict[str, Any], hint: str) -> str:
        used = frozenset(self.used.get((self._tool, hint), ()))
        picked = self.pool.pick(self.rng, hint, self._weight(hint), used)
        if picked is not None:
            self._picked.append((hint, shape(picked), picked))
            return picked
        for key in ("default", "examples"):
            given = schema.get(key)
            if isinstance(given, str):
                return given
            if isinstance(given, list) and given and isinstance(given[0], str):
                return str(given[0])
        return hint
