"""Shared fixtures: a synthetic corpus, an offline embedding model, indexes, live servers.

Everything is built locally (no downloads): the corpus by the generator, the embedding model
from the corpus itself, and servers run for real on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit import TOKENS, LiveServer, start_server
from tinymodels import tiny_lora_adapter_dir, tiny_policy_dir
from toolservers.auth import TokenSet
from toolservers.http_app import create_http_app
from toolservers.index import SearchMode, build_index
from toolservers.local_model import build_static_model
from toolservers.mcp_app import create_mcp_app
from toolservers.service import open_toolbox
from toolservers.synth import synthesize_corpus
from toolservers.tools import Toolbox

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def forget_new_envs() -> Iterator[None]:
    """Unregister the env ids a test registered: gymnasium's registry is global to the session."""
    import gymnasium as gym

    before = set(gym.registry)
    yield
    for env_id in set(gym.registry) - before:
        del gym.registry[env_id]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(root, seed=0)
    return root


@pytest.fixture(scope="session")
def embedding_model(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_static_model(corpus_dir, tmp_path_factory.mktemp("model"), dimension=128)


@pytest.fixture(scope="session")
def hybrid_index(corpus_dir: Path, embedding_model: Path) -> Path:
    """The shared index (hybrid: holds both the dense and the lexical parts)."""
    build_index(
        corpus_dir, search=SearchMode.HYBRID, embedding_model=str(embedding_model), progress=False
    )
    return corpus_dir / "index"


@pytest.fixture(scope="session")
def toolbox(corpus_dir: Path, hybrid_index: Path) -> Toolbox:
    return open_toolbox(corpus_dir)


@pytest.fixture
def small_corpus(corpus_dir: Path, tmp_path: Path) -> Path:
    """A private copy of a few documents, for tests that change files."""
    root = tmp_path / "small"
    for path in sorted((corpus_dir / "filings").iterdir())[:12]:
        (root / "filings").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "filings" / path.name)
    return root


@pytest.fixture(scope="session")
def http_server(toolbox: Toolbox) -> Iterator[LiveServer]:
    live = start_server(create_http_app(toolbox, TokenSet(TOKENS)))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def mcp_server(toolbox: Toolbox) -> Iterator[LiveServer]:
    live = start_server(create_mcp_app(toolbox, TokenSet(TOKENS)))
    yield live
    live.stop()


__all__ = ["tiny_lora_adapter_dir", "tiny_policy_dir"]  # fixtures defined in tinymodels
