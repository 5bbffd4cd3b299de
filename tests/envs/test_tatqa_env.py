"""TAT-QA end to end: import real report excerpts, serve them, and play episodes on them."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest

import envs  # noqa: F401  (registers the environments)
from envs.data.rows import load_rows
from envs.data.tatqa import import_tatqa
from testkit import TOKENS
from toolservers.auth import TokenSet
from toolservers.http_app import create_http_app
from toolservers.index import SearchMode, build_index
from toolservers.service import open_toolbox

TATQA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tatqa" / "tatqa_dataset_dev.json"


@pytest.mark.skipif(not TATQA.is_file(), reason=f"TAT-QA sample not found at {TATQA}")
def test_reading_the_named_report_and_answering_earns_full_reward(tmp_path: Path) -> None:
    import_tatqa(TATQA, tmp_path)
    corpus = tmp_path / "corpus"
    build_index(corpus, search=SearchMode.LEXICAL, progress=False)
    app = create_http_app(open_toolbox(corpus), TokenSet(TOKENS))
    rows = load_rows(tmp_path / "val.jsonl")
    env = gym.make("toolgym/TatQA-v0", dataset=rows, token=TOKENS[0], asgi_app=app)
    checked = 0
    for row in rows[:40]:
        env.reset(options={"row_id": row.id})
        path = row.expected.evidence_paths()[0]
        assert path in row.prompt  # the question names its report
        obs, *_ = env.step(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "r",
                        "type": "function",
                        "function": {"name": "read", "arguments": json.dumps({"path": path})},
                    }
                ],
            }
        )
        assert not obs[0]["content"].startswith("Error"), obs[0]["content"]
        reference = row.reference_answer
        said = "; ".join(reference) if isinstance(reference, list) else reference
        *_, reward, terminated, _, info = env.step(
            {"role": "assistant", "content": f"Answer: {said}"}
        )
        assert terminated
        assert reward == 1.0, (row.id, reference, info["grade"])
        checked += 1
    env.close()
    assert checked == 40
