"""A corpus directory seen through the tools: safe paths, sorted listing, readable text.

Every path a model sends is untrusted. `resolve` turns it into a file inside the corpus or
raises `ToolInputError` with a message the model can act on; nothing outside the root is ever
opened, including through symlinks.
"""

from __future__ import annotations

import hashlib
import os
from bisect import bisect_left
from functools import lru_cache
from pathlib import Path

from toolservers.errors import ToolInputError
from toolservers.htmltext import html_to_text

# Files the tools expose. Anything else in the directory (facts, index, README) is metadata.
DOCUMENT_SUFFIXES = (".html", ".htm", ".txt", ".md")
# Top-level entries that are never documents even if their suffix matches.
RESERVED_TOP_LEVEL = ("index", "README.txt")


class Corpus:
    """Read-only view of the documents under `root`, addressed by POSIX relative paths."""

    def __init__(self, root: Path, text_cache_size: int = 4096) -> None:
        self.root = root.resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"corpus directory {root} does not exist")
        self.paths: list[str] = sorted(self._scan())
        self._path_set = frozenset(self.paths)
        # Rendering HTML costs ~1 ms; reads repeat within a GRPO group, so keep the text.
        self.text = lru_cache(maxsize=text_cache_size)(self._render)

    def _scan(self) -> list[str]:
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = Path(dirpath).relative_to(self.root)
            if rel_dir == Path("."):
                dirnames[:] = [d for d in dirnames if d not in RESERVED_TOP_LEVEL]
            dirnames.sort()
            for name in filenames:
                rel = (rel_dir / name).as_posix()
                documentish = name.endswith(DOCUMENT_SUFFIXES) and rel not in RESERVED_TOP_LEVEL
                if documentish and self._inside(self.root / rel):
                    found.append(rel)
        return found

    def _inside(self, candidate: Path) -> bool:
        return candidate.resolve().is_relative_to(self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, path: str) -> bool:
        return path in self._path_set

    def resolve(self, path: str) -> str:
        """Check an untrusted path and return it as a known corpus path."""
        if not path or not path.strip():
            raise ToolInputError("path is empty. Pass a document path such as one from list().")
        if "\x00" in path:
            raise ToolInputError("path contains a NUL byte. Pass a plain relative path.")
        if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
            raise ToolInputError(
                f"path {path!r} is absolute. Pass a path relative to the corpus, "
                "e.g. 'filings/...'."
            )
        parts = path.replace("\\", "/").split("/")
        if ".." in parts:
            raise ToolInputError(f"path {path!r} contains '..'. Pass a path from list().")
        normal = "/".join(p for p in parts if p not in ("", "."))
        if normal not in self._path_set:
            raise ToolInputError(
                f"no document at {path!r}. Use list(prefix) to see paths or search(query) "
                "to find documents."
            )
        return normal

    def _render(self, path: str) -> str:
        # The scan refused escaping symlinks; check again when a file is first read, in case
        # the tree changed since (cheaper here than on every call: the text is cached).
        if not self._inside(self.root / path):
            raise ToolInputError(f"no document at {path!r}.")
        raw = (self.root / path).read_text(encoding="utf-8", errors="replace")
        return html_to_text(raw) if path.endswith((".html", ".htm")) else raw

    def under(self, prefix: str) -> tuple[int, int]:
        """Half-open range [start, stop) of `self.paths` that start with `prefix`."""
        start = bisect_left(self.paths, prefix)
        stop = bisect_left(self.paths, prefix + "\U0010ffff", lo=start)
        return start, stop

    def fingerprint(self) -> str:
        """Hash of every document's path, size and content: changes whenever the corpus does."""
        digest = hashlib.sha256()
        for path in self.paths:
            data = (self.root / path).read_bytes()
            digest.update(path.encode())
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(hashlib.sha256(data).digest())
        return digest.hexdigest()
