"""The offline embedding model is a function of the corpus: same corpus, same model, any process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from toolservers.local_model import SPECIAL_TOKENS, train_wordpiece

BUILD = """
import hashlib, sys
from pathlib import Path
from toolservers.local_model import build_static_model
out = build_static_model(Path(sys.argv[1]), Path(sys.argv[2]), dimension=32, vocab_size=3000)
for name in ("tokenizer.json", "model.safetensors"):
    found = sorted(out.rglob(name))
    print(name, hashlib.sha256(found[0].read_bytes()).hexdigest())
"""


def test_same_corpus_gives_the_same_model_in_every_process(
    small_corpus: Path, tmp_path: Path
) -> None:
    # The tokenizers trainer numbers pieces in a per-process hash order; each process here
    # gets its own seed, so without the fix the three digests differ.
    digests = {
        subprocess.run(
            [sys.executable, "-c", BUILD, str(small_corpus), str(tmp_path / f"model-{i}")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for i in range(3)
    }
    assert len(digests) == 1, digests


def test_continuing_pieces_are_ordinary_tokens() -> None:
    tokenizer = train_wordpiece(["alpha beta gamma", "alphabet betamax gammaray"] * 20, 200)
    added = tokenizer.get_added_tokens_decoder()  # type: ignore[attr-defined]
    assert sorted(t.content for t in added.values()) == sorted(SPECIAL_TOKENS)
    tokens = tokenizer.encode("alphabetam ##a").tokens  # type: ignore[attr-defined]
    # "##a" typed in a query is text (no "#" in this corpus), not the piece "##a"
    assert tokens == ["alphabet", "##am", "[UNK]", "[UNK]", "a"]
