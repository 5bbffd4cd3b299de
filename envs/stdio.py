"""Stdio MCP servers: how one is started, what it is told, and how environments share one.

A stdio server is a subprocess speaking MCP on its stdin/stdout. Three things matter here:

- Its environment is the MCP SDK's small safe default (HOME, LOGNAME, PATH, SHELL, TERM,
  USER) plus the variables its registration names, never a copy of ours: toolgym's own token
  (TOOL_BEARER) and whatever else the trainer's process holds must not reach a third party's
  program. The parameters always carry an explicit `env` dict, so the SDK merges it over that
  default instead of inheriting anything.
- Each process gets a fresh scratch directory, `{session_dir}` in its command, `env` and `cwd`,
  removed when the process stops. A server that keeps its state in files (server-memory's
  MEMORY_FILE_PATH) is only isolated per episode if its files are too.
- Its stderr goes to a log beside that directory; when it cannot start, or dies, the last lines
  of that log say why, in the one-line error.

`SharedSlots` is the refcounted registry behind `isolation: pool`: one server per command and
event loop (asyncio pipes belong to one loop), started for the first environment that needs it
and stopped when the last one closes.
"""

from __future__ import annotations

import asyncio
import shlex
import tempfile
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from envs.errors import EnvConfigError, ToolServerStartError, exception_summary

if TYPE_CHECKING:
    from mcp import Client, StdioServerParameters

SESSION_DIR = "{session_dir}"
STDERR_TAIL_LINES = 5


@dataclass(frozen=True)
class StdioCommand:
    """A stdio server as its registration describes it (hashable: it keys the shared pool)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None

    @classmethod
    def of(
        cls,
        command: Sequence[str] | None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> StdioCommand:
        if isinstance(command, str) or not command:
            raise EnvConfigError(
                "transport stdio needs command: [program, arg, ...] (a list, not one string)"
            )
        bad = [repr(v) for v in (*command, *(env or {}).values()) if not isinstance(v, str)]
        if bad:
            raise EnvConfigError(f"stdio command and env values must be strings, not {bad[0]}")
        return cls(tuple(command), tuple(sorted((env or {}).items())), str(cwd) if cwd else None)

    def display(self) -> str:
        """The command as a shell would show it, for error messages."""
        return shlex.join(self.argv)

    def parameters(self, session_dir: Path) -> StdioServerParameters:
        from mcp import StdioServerParameters

        def fill(text: str) -> str:
            return text.replace(SESSION_DIR, str(session_dir))

        program, *args = (fill(part) for part in self.argv)
        return StdioServerParameters(
            command=program,
            args=args,
            env={name: fill(value) for name, value in self.env},  # never None: see above
            cwd=fill(self.cwd) if self.cwd else None,
        )


class StdioLaunch:
    """One run of a stdio server: its scratch directory, its stderr log and its MCP client."""

    def __init__(self, command: StdioCommand) -> None:
        self.command = command
        self._stderr: Path | None = None

    @asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        """Start the process and open a session; stop it and remove its files on exit.

        A failure to start (no such program, or an exit before the session opened) raises
        ToolServerStartError with the command and the tail of the process's stderr."""
        from mcp import Client
        from mcp.client.stdio import stdio_client

        async with AsyncExitStack() as stack:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="toolgym-mcp-")))
            session_dir = root / "session"
            session_dir.mkdir()
            self._stderr = root / "stderr.log"
            # Append mode: the child writes through its own copy of the descriptor, and reading
            # the tail here must not move the offset it writes at.
            errlog = stack.enter_context(self._stderr.open("a+", encoding="utf-8"))
            stack.callback(setattr, self, "_stderr", None)
            transport = stdio_client(self.command.parameters(session_dir), errlog=errlog)
            try:
                opened = await stack.enter_async_context(Client(transport))
            except Exception as exc:  # not spawned, or gone before the handshake finished
                raise ToolServerStartError(self._cannot_start(exc)) from None
            yield opened

    def _cannot_start(self, exc: Exception) -> str:
        shown = f"`{self.command.display()}`"
        if isinstance(exc, OSError):  # no such program, not executable, bad cwd
            return f"cannot start MCP server {shown}: {exc.strerror or exc}"
        return (
            f"MCP server {shown} stopped before its session opened "
            f"({exception_summary(exc)}){self.stderr_tail()}"
        )

    def stderr_tail(self) -> str:
        """'; its stderr ends: a | b' with the last non-empty lines the process wrote, or ''."""
        if self._stderr is None or not self._stderr.exists():
            return ""
        text = self._stderr.read_text(encoding="utf-8", errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return f"; its stderr ends: {' | '.join(lines[-STDERR_TAIL_LINES:])}" if lines else ""


class Closeable(Protocol):
    async def aclose(self) -> None: ...


S = TypeVar("S", bound=Closeable)


@dataclass
class _Shared(Generic[S]):
    value: S
    users: int = 0


@dataclass
class SharedSlots(Generic[S]):
    """Values shared by key within one event loop, refcounted: the first `acquire` of a key
    makes it, the last `release` closes it."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[object, _Shared[S]]] = (
        field(default_factory=weakref.WeakKeyDictionary)
    )

    def acquire(self, key: object, make: Callable[[], S]) -> S:
        slots = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        if key not in slots:
            slots[key] = _Shared(make())
        slots[key].users += 1
        return slots[key].value

    async def release(self, key: object) -> None:
        slots = self._by_loop.get(asyncio.get_running_loop(), {})
        shared = slots.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users <= 0:
            del slots[key]
            await shared.value.aclose()
