"""The three tools, implemented once. HTTP and MCP are thin adapters over `Toolbox`.

Each tool is a typed async method whose docstring is the description the model reads, and
whose signature is the JSON Schema of its arguments. `run_tool` validates a call against that
signature and runs it; a schema violation or a `ToolInputError` comes back as one `Error: ...`
line the model can read and act on, worded the same whichever transport carried the call.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from toolservers.corpus import Corpus
from toolservers.errors import ToolInputError
from toolservers.search import Searcher
from toolservers.snippets import snippet

MAX_TOP_K = 50
MAX_QUERY_CHARS = 2_000
MAX_PATH_CHARS = 1_000
DEFAULT_READ_BUDGET = 8_000
LIST_PAGE_SIZE = 100


@dataclass(frozen=True)
class ToolLimits:
    read_budget: int = DEFAULT_READ_BUDGET  # characters of document text per read
    list_page_size: int = LIST_PAGE_SIZE


class Toolbox:
    """search, list and read over one corpus and its index."""

    def __init__(self, corpus: Corpus, searcher: Searcher, limits: ToolLimits | None = None):
        self.corpus = corpus
        self.searcher = searcher
        self.limits = limits or ToolLimits()

    async def search(
        self,
        query: Annotated[str, Field(description="What to look for, in plain words.")],
        top_k: Annotated[
            int, Field(ge=1, le=MAX_TOP_K, description="How many documents to return.")
        ] = 5,
    ) -> str:
        """Search the filings corpus. Returns the best-matching documents, best first, each as
        `path (score S)` with a snippet; pass a path to `read` to see the whole document."""
        query = query.strip()
        if not query:
            raise ToolInputError("query is empty. Describe what you are looking for.")
        if len(query) > MAX_QUERY_CHARS:
            raise ToolInputError(f"query is longer than {MAX_QUERY_CHARS} characters. Shorten it.")
        hits = await self.searcher.search(query, top_k)
        if not hits:
            return f"No results for {query!r}. Try other words, or list('filings/') to browse."
        lines = []
        for hit in hits:
            lines.append(f"{hit.chunk.path} (score {hit.score:.3f})")
            lines.append(f"  {snippet(hit.chunk, query)} [offset {hit.chunk.offset}]")
        return "\n".join(lines)

    async def list(
        self,
        prefix: Annotated[
            str, Field(description="Path prefix, e.g. 'filings/' or 'filings/henderson'.")
        ] = "",
        page: Annotated[int, Field(ge=1, description="Page number, from 1.")] = 1,
    ) -> str:
        """List document paths that start with a prefix, sorted, one page at a time."""
        if "\x00" in prefix or len(prefix) > MAX_PATH_CHARS:
            raise ToolInputError("prefix must be a plain path prefix such as 'filings/'.")
        start, stop = self.corpus.under(prefix.lstrip("/"))
        total = stop - start
        if total == 0:
            return f"No documents under {prefix!r}. Try a shorter prefix, or list('') for all."
        size = self.limits.list_page_size
        pages = (total + size - 1) // size
        if page > pages:
            raise ToolInputError(f"page {page} is past the last page ({pages}) for {prefix!r}.")
        first = start + (page - 1) * size
        shown = self.corpus.paths[first : min(first + size, stop)]
        header = f"{total} documents under {prefix!r}"
        if pages > 1:
            header += f" (page {page} of {pages}, {size} per page)"
        lines = [header + ":", *shown]
        if page < pages:
            lines.append(f"[More: call list(prefix={prefix!r}, page={page + 1}).]")
        return "\n".join(lines)

    async def read(
        self,
        path: Annotated[str, Field(description="Document path, as shown by search or list.")],
        offset: Annotated[
            int, Field(ge=0, description="Character offset to start from (0 = beginning).")
        ] = 0,
    ) -> str:
        """Read a document's text from a character offset. Long documents come in parts; the
        end of each part says which offset to pass to read the next one."""
        if len(path) > MAX_PATH_CHARS:
            raise ToolInputError(f"path is longer than {MAX_PATH_CHARS} characters.")
        known = self.corpus.resolve(path)
        text = self.corpus.text(known)
        if offset >= len(text) and not (offset == 0 and not text):
            raise ToolInputError(
                f"offset {offset} is past the end of {known} ({len(text)} characters). "
                "Use offset 0 to read from the beginning."
            )
        end = _cut(text, offset, self.limits.read_budget)
        part = text[offset:end]
        if end < len(text):
            part += (
                f"\n[Showing characters {offset}-{end} of {len(text)}. "
                f"To continue, call read(path={known!r}, offset={end}).]"
            )
        return part


def _cut(text: str, offset: int, budget: int) -> int:
    """End of a part: at most `budget` characters, ending at a line break when one is near."""
    end = min(len(text), offset + budget)
    if end < len(text):
        newline = text.rfind("\n", offset + budget * 3 // 4, end)
        if newline != -1:
            end = newline + 1
    return end


# ---- one contract, shared by both transports ----
# HTTP and MCP both list `tool_specs` and both answer calls with `run_tool`, so the schema,
# the description and every refusal text are produced once and cannot drift apart.

ToolFn = Callable[..., Awaitable[str]]
TOOL_NAMES = ("search", "list", "read")


@dataclass(frozen=True)
class ToolSpec:
    """What a client is told about one tool: the same on `GET /tools` and MCP `tools/list`."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object


@dataclass(frozen=True)
class ToolResult:
    """One call's answer. `is_error` is carried beside the text rather than guessed from an
    `Error: ` prefix, because a document read by `read` may itself start with those words."""

    text: str
    is_error: bool = False


def tool_functions(toolbox: Toolbox) -> dict[str, ToolFn]:
    return {name: getattr(toolbox, name) for name in TOOL_NAMES}


def arguments_model(fn: ToolFn) -> type[BaseModel]:
    """A strict pydantic model of a tool's parameters (unknown arguments are refused)."""
    return _arguments_model(getattr(fn, "__func__", fn))


@functools.cache
def _arguments_model(fn: ToolFn) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(fn, eval_str=True).parameters.items():
        if name == "self":
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (param.annotation, default)
    config = ConfigDict(extra="forbid", strict=True)
    return create_model(f"{fn.__name__}_arguments", __config__=config, **fields)


def describe(fn: ToolFn) -> str:
    return inspect.cleandoc(fn.__doc__ or "")


def _strip_titles(schema: Any) -> Any:
    # pydantic titles ("Query", "Top K") repeat the property names; models gain nothing from
    # them and they cost prompt tokens on every turn.
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def parameters_schema(fn: ToolFn) -> dict[str, Any]:
    """JSON Schema of a tool's arguments, from the same model that validates them: so it
    carries `additionalProperties: false` exactly because unknown arguments are refused."""
    schema = _strip_titles(arguments_model(fn).model_json_schema())
    # `type` first, as MCP's wire model (protocol 2026-07-28) serializes it: then the two
    # listings agree byte for byte, not only as parsed JSON.
    return {"type": schema.pop("type"), **schema}


def tool_specs(toolbox: Toolbox) -> list[ToolSpec]:
    return [
        ToolSpec(name=name, description=describe(fn), parameters=parameters_schema(fn))
        for name, fn in tool_functions(toolbox).items()
    ]


def openai_tool_specs(toolbox: Toolbox) -> list[dict[str, Any]]:
    """OpenAI function-tool specs of the three tools (`GET /tools`)."""
    return [
        {
            "type": "function",
            "function": {
                "name": spec.name,
                "description": spec.description,
                "parameters": spec.parameters,
            },
        }
        for spec in tool_specs(toolbox)
    ]


_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: a bool is an int to Python, not to JSON
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
    (type(None), "null"),
)


def _json_type(value: object) -> str:
    return next((label for kind, label in _JSON_TYPES if isinstance(value, kind)), "value")


def _shown(name: str, limit: int = 40) -> str:
    """A caller-chosen name, quoted and cut short: it is echoed back into the model's context."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


def _problem(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "arguments"
    if err["type"] == "missing":
        return f"{where}: required argument missing"
    if err["type"].endswith("_type"):
        # Name the type that arrived, never the value: it may be long, or not ours to echo.
        return f"{where}: {err['msg']}, got {_json_type(err['input'])}"
    return f"{where}: {err['msg']}"


def explain_validation(name: str, exc: ValidationError, accepted: Sequence[str]) -> str:
    """The one wording of a schema refusal, whichever transport the call came by."""
    errors = exc.errors(include_url=False)
    problems = [_problem(err) for err in errors if err["type"] != "extra_forbidden"]
    unknown = [_shown(str(err["loc"][-1])) for err in errors if err["type"] == "extra_forbidden"]
    if unknown:
        noun = "argument" if len(unknown) == 1 else "arguments"
        problems.append(f"unknown {noun} {', '.join(unknown)} (accepted: {', '.join(accepted)})")
    return f"Error: invalid arguments for {name}: " + "; ".join(problems) + "."


def unknown_tool(name: str) -> ToolResult:
    return ToolResult(f"Error: unknown tool {_shown(name)}. Tools: {', '.join(TOOL_NAMES)}.", True)


async def run_tool(toolbox: Toolbox, name: str, arguments: Mapping[str, Any]) -> ToolResult:
    """Validate and run one tool call: the single path behind both transports."""
    fn = tool_functions(toolbox).get(name)
    if fn is None:
        return unknown_tool(name)
    model = arguments_model(fn)
    try:
        args = model.model_validate(dict(arguments))
    except ValidationError as exc:
        return ToolResult(explain_validation(name, exc, list(model.model_fields)), is_error=True)
    try:
        return ToolResult(await fn(**dict(args)))
    except ToolInputError as exc:
        return ToolResult(f"Error: {exc}", is_error=True)
