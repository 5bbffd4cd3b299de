"""Exception tree of the environments package.

    EnvError
    ├── ToolInfraError          the tool server cannot serve: recorded on the episode, not graded
    │   ├── ToolServerUnavailableError   connection failures or 5xx after the retry budget; an
    │   │   │                            MCP session that broke (server restarted, process died)
    │   │   └── ToolServerStartError     a stdio MCP server that could not start: its command
    │   │                                and the tail of its stderr, never retried
    │   └── ToolAuthError                401: the token is missing or wrong
    ├── EnvConfigError          a registration, YAML file or kwargs that cannot work
    └── DatasetError            (envs.data) rows that do not load

A bad tool call by the model is never an exception: it is an observation the model sees.
"""

from __future__ import annotations


class EnvError(Exception):
    """Base of every error this package raises on purpose."""


class ToolInfraError(EnvError):
    """The tool server failed; the episode records this instead of a reward."""


class ToolServerUnavailableError(ToolInfraError):
    pass


class ToolServerStartError(ToolServerUnavailableError):
    """A stdio server's command failed to start: retrying the same command would fail the same
    way, so this is reported at once instead of after the retry budget."""


class ToolAuthError(ToolInfraError):
    pass


class EnvConfigError(EnvError):
    pass


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line: "mapping values are not allowed here (line 3, column 5)".

    PyYAML's own text spans four lines and names "<unicode string>" instead of the file; the
    CLI prints errors as one line, and the caller knows the file.
    """
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return " ".join(str(exc).split())
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    context = getattr(exc, "context", None)
    return f"{context + ': ' if context else ''}{problem}{where}"


def exception_summary(exc: BaseException) -> str:
    """An exception in one line, "MCPError: Connection closed", looking inside exception groups
    (anyio's task groups wrap the one error that matters in one or two of them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
