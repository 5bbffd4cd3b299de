"""Near-duplicate prompts, by the cosine similarity of sentence embeddings.

A model asked for many tasks over the same observations rephrases itself ("In which year..."
/ "What year..."); exact matching misses that, and a training set full of paraphrases teaches
one thing many times. The model is loaded before anything else runs, so a model that cannot be
loaded (a hub name, offline and not cached) fails in one line before any call is spent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from envs.errors import exception_summary
from envs.taskgen.records import TaskgenError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class PromptEmbedder:
    """A sentence-transformers model: a local directory, or a hub name (cached when offline)."""

    def __init__(self, name_or_path: str) -> None:
        from sentence_transformers import SentenceTransformer  # heavy: loaded when used

        local = Path(name_or_path).expanduser()
        if not local.is_dir() and name_or_path.startswith(("/", ".", "~")):
            raise TaskgenError(f"--embedding-model {name_or_path}: no such directory")
        offline = local.is_dir() or os.environ.get("HF_HUB_OFFLINE") == "1"
        try:
            with _quiet_loaders():  # their warnings would break the one-line error
                self.model: SentenceTransformer = SentenceTransformer(
                    str(local) if local.is_dir() else name_or_path,
                    device="cpu",
                    local_files_only=offline,
                )
        except Exception as exc:  # OSError, hub errors, a broken directory: all one message
            raise TaskgenError(
                f"--embedding-model {name_or_path!r} could not be loaded "
                f"({exception_summary(exc)}); pass a local sentence-transformers directory "
                "(a hub name works offline only once it is cached)"
            ) from None
        self.name = name_or_path

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 rows, one per text."""
        vectors = self.model.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)


@contextmanager
def _quiet_loaders() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("sentence_transformers", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def near_duplicates(vectors: np.ndarray, threshold: float) -> list[int]:
    """Indices to drop: each row whose cosine with an earlier kept row is >= `threshold`
    (the first of a group of paraphrases is the one kept). Rows are unit vectors."""
    kept: list[int] = []
    dropped: list[int] = []
    for i in range(len(vectors)):
        if kept and float(np.max(vectors[kept] @ vectors[i])) >= threshold:
            dropped.append(i)
        else:
            kept.append(i)
    return dropped
