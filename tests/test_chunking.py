"""Chunks keep exact offsets, respect the size bound, overlap, and cover the whole text."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from toolservers.chunking import ChunkingConfig, chunk_document, document_title

paragraph = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r"), max_size=400
)


@settings(max_examples=200, deadline=None)
@given(paragraphs=st.lists(paragraph, max_size=12), max_chars=st.integers(100, 600))
def test_chunks_are_exact_slices_that_cover_every_paragraph(
    paragraphs: list[str], max_chars: int
) -> None:
    text = "\n\n".join(paragraphs)
    config = ChunkingConfig(max_chars=max_chars, overlap_chars=max_chars // 4)
    chunks = chunk_document("doc.txt", text, config)
    covered = [False] * len(text)
    for chunk in chunks:
        assert text[chunk.offset : chunk.offset + len(chunk.text)] == chunk.text
        assert len(chunk.text) <= max_chars
        for i in range(chunk.offset, chunk.offset + len(chunk.text)):
            covered[i] = True
    offsets = [c.offset for c in chunks]
    assert offsets == sorted(set(offsets))  # always moving forward
    uncovered = "".join(ch for ch, seen in zip(text, covered, strict=True) if not seen)
    assert not uncovered.strip()  # only the blank lines between paragraphs may be skipped


def test_neighbouring_chunks_overlap_by_a_paragraph() -> None:
    paragraphs = [f"Paragraph {i}: " + "word " * 30 for i in range(8)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_document("doc.txt", text, ChunkingConfig(max_chars=500, overlap_chars=200))
    assert len(chunks) > 2
    for first, second in itertools.pairwise(chunks):
        assert second.offset < first.offset + len(first.text)  # shares text with the previous


def test_title_is_company_and_form_line() -> None:
    text = "# Henderson Industries\n\nForm 10-Q: Quarterly report for Q3 2025\n\nbody"
    assert document_title(text) == "Henderson Industries - Form 10-Q: Quarterly report for Q3 2025"
    chunk = chunk_document("d.html", text, ChunkingConfig())[0]
    assert chunk.embedding_text().startswith("Henderson Industries - Form 10-Q")
