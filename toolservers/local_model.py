"""Embedding models made on this machine, for offline use (tests, demo, benchmarks).

`build_static_model` makes a sentence-transformers StaticEmbedding model from a corpus alone:
a WordPiece tokenizer trained on the corpus text, and per-token vectors that are random
directions scaled by the token's inverse document frequency. Mean pooling then gives an
IDF-weighted bag of words, so cosine similarity tracks shared rare words: it retrieves on a
corpus like this one with no download and no training step.

`build_transformer_model` makes a BERT-shaped encoder with random weights (MiniLM-L6 shape by
default) for measuring speed: what it returns is meaningless, what it costs is realistic.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from toolservers.chunking import ChunkingConfig, chunk_document
from toolservers.corpus import Corpus

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> object:
    """A WordPiece tokenizer for `texts`, the same one in every process.

    The trainer (tokenizers 0.23) numbers the word-continuing pieces (`##a`) in the order it
    meets them in a hash map that is seeded per process, and breaks ties between equally
    frequent merges by those numbers: the same corpus gave a different vocabulary on each run,
    so a different embedding model and a different demo. Naming every such piece up front, in
    sorted order, fixes their numbers; the tokenizer is then rebuilt from the vocabulary alone
    so they are ordinary pieces, not special tokens.
    """
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers

    texts = list(texts)
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    continuing = sorted(
        {
            char
            for text in texts
            for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
            for char in word[1:]
        }
    )
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + [f"##{c}" for c in continuing]
    )
    scratch = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    scratch.normalizer = normalizer
    scratch.pre_tokenizer = pre_tokenizer
    scratch.train_from_iterator(texts, trainer=trainer)
    tokenizer = Tokenizer(models.WordPiece(scratch.get_vocab(), unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = scratch.decoder
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    return tokenizer


def _corpus_passages(corpus_dir: Path) -> list[str]:
    corpus = Corpus(corpus_dir)
    config = ChunkingConfig()
    return [
        chunk.embedding_text()
        for path in corpus.paths
        for chunk in chunk_document(path, corpus.text(path), config)
    ]


def build_static_model(
    corpus_dir: Path, out_dir: Path, *, dimension: int = 256, vocab_size: int = 8000, seed: int = 0
) -> Path:
    """Write an IDF-weighted static embedding model for `corpus_dir` into `out_dir`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    passages = _corpus_passages(corpus_dir)
    tokenizer = train_wordpiece(passages, vocab_size)
    vocab = tokenizer.get_vocab_size()  # type: ignore[attr-defined]
    doc_freq = np.zeros(vocab, dtype=np.float64)  # (vocab,)
    for encoding in tokenizer.encode_batch(passages, add_special_tokens=False):  # type: ignore[attr-defined]
        doc_freq[np.unique(np.asarray(encoding.ids, dtype=np.int64))] += 1
    idf = np.log((1 + len(passages)) / (1 + doc_freq)) + 1.0  # (vocab,), smooth IDF
    idf[: len(SPECIAL_TOKENS)] = 0.0
    idf[_uninformative_ids(tokenizer)] = 0.0
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((vocab, dimension))  # (vocab, dim)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    weights = (directions * idf[:, None]).astype(np.float32)  # (vocab, dim)
    static = StaticEmbedding(tokenizer, embedding_weights=weights)  # type: ignore[arg-type]
    model = SentenceTransformer(modules=[static, Normalize()], device="cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(out_dir))
    return out_dir


def _uninformative_ids(tokenizer: object) -> list[int]:
    """Punctuation and amounts: rare, so high IDF, but they say nothing about the topic.

    Figures in tables would otherwise dominate a chunk's mean vector. Years and words that
    carry digits (q3, 10-k) keep their weight: questions name periods.
    """
    vocab: dict[str, int] = tokenizer.get_vocab()  # type: ignore[attr-defined]
    drop = []
    for token, token_id in vocab.items():
        bare = token.removeprefix("##")
        is_year = len(bare) == 4 and bare.isdigit() and bare.startswith(("19", "20"))
        if not any(ch.isalpha() for ch in bare) and not is_year:
            drop.append(token_id)
    return drop


def build_transformer_model(
    out_dir: Path,
    *,
    layers: int = 6,
    hidden: int = 384,
    heads: int = 12,
    vocab_size: int = 30522,
    seed: int = 0,
    tokenizer_texts: Iterable[str] | None = None,
) -> Path:
    """Write a random-weight BERT encoder with mean pooling (MiniLM-L6 shape by default)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    texts = list(tokenizer_texts or _filler_texts())
    tokenizer = train_wordpiece(texts, min(vocab_size, 4000))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=256,
    )
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=512,
    )
    encoder_dir = out_dir / "encoder"
    BertModel(config).save_pretrained(encoder_dir)
    fast.save_pretrained(encoder_dir)
    transformer = Transformer(str(encoder_dir), max_seq_length=256)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    model.save(str(out_dir))
    return out_dir


def _filler_texts() -> list[str]:
    words = [f"w{i}" for i in range(2000)]
    return [" ".join(words[i : i + 50]) for i in range(0, len(words), 10)] * 2 + [
        "revenue operating margin net income quarter fiscal year company filing" * 3
    ]
