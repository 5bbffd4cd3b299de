"""The three tools, implemented once. HTTP and MCP are thin adapters over `Toolbox`.

Each tool is a typed async method whose docstring is the description the model reads.
Bad arguments raise `ToolInputError`; the adapters turn it into an `Error: ...` result the
model can read and act on.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from toolservers.corpus import Corpus
from toolservers.errors import ToolInputError
from toolservers.search import Searcher, snippet

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


# ---- one description of the arguments, shared by the adapters and the specs ----

ToolFn = Callable[..., Awaitable[str]]
TOOL_NAMES = ("search", "list", "read")


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
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def parameters_schema(fn: ToolFn) -> dict[str, Any]:
    return _strip_titles(arguments_model(fn).model_json_schema())


def openai_tool_specs(toolbox: Toolbox) -> list[dict[str, Any]]:
    """OpenAI function-tool specs of the three tools (also what MCP lists)."""
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": describe(fn),
                "parameters": parameters_schema(fn),
            },
        }
        for name, fn in tool_functions(toolbox).items()
    ]


def explain_validation(name: str, exc: ValidationError) -> str:
    """Readable, one-line account of why a tool's arguments were refused."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        problems.append(f"{where}: {err['msg']}")
    return f"invalid arguments for {name}: " + "; ".join(problems)


async def call_tool(toolbox: Toolbox, name: str, arguments: dict[str, Any]) -> str:
    """Validate and run one tool call; every refusal comes back as `Error: ...` text."""
    functions = tool_functions(toolbox)
    fn = functions.get(name)
    if fn is None:
        return f"Error: unknown tool {name!r}. Tools: {', '.join(TOOL_NAMES)}."
    try:
        args = arguments_model(fn).model_validate(arguments)
    except ValidationError as exc:
        return f"Error: {explain_validation(name, exc)}. See GET /tools for the schema."
    try:
        return await fn(**dict(args))
    except ToolInputError as exc:
        return f"Error: {exc}"
