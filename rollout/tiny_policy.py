"""Build a tiny, random-weight, Qwen2.5-shaped chat model entirely offline.

Tests and the offline demo need a real `transformers` model with a real tokenizer and a real
tool-calling chat template, but nothing can be downloaded here. So we train a byte-level BPE
tokenizer on whatever text we have (synthetic sentences, a filings corpus), give it the
Qwen2.5 special tokens and tool markup, and pair it with a small randomly initialised
`Qwen2ForCausalLM`. The result reloads with `AutoTokenizer`/`AutoModelForCausalLM` from the
directory, so every code path that handles real checkpoints handles this one too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from envs.markup import (
    CALL_ARGUMENTS,
    CALL_END,
    CALL_START,
    MARKUP_TOKENS,
    RESPONSE_END,
    RESPONSE_START,
    SEPARATOR,
    call_markup,
)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# MARKUP_TOKENS are not special: they must survive `decode(skip_special_tokens=True)` so tool
# calls can be parsed.

DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2's pre-tokenizer split. `AutoTokenizer` reloads a `qwen2` checkpoint as `Qwen2Tokenizer`,
# which rebuilds the pipeline (NFC + this split + byte level) from vocab and merges: training
# with the very same pipeline keeps the saved and the reloaded tokenizer identical.
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _say(text: str) -> str:
    """A Jinja statement writing `text` (a string literal, escaped)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return "{{- '" + escaped + "' }}"


# Qwen2.5's template, except that tools are listed as signatures (short prompts for a tiny
# model on a CPU) and `{% generation %}` marks what the assistant writes (TRL's assistant-only
# loss). Tool-call arguments may be a dict (rendered with tojson) or a JSON string (rendered
# verbatim: it is exactly what the model produced). The tool markup's pieces come from
# envs.markup, so a call renders exactly as `render_tool_call` writes it.
CHAT_TEMPLATE = "".join(
    [
        "{%- if tools %}"
        "{{- '<|im_start|>system\\n' }}"
        "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
        "{%- else %}{{- '" + DEFAULT_SYSTEM + "' }}{%- endif %}"
        "{{- '\\n\\n# Tools\\n' }}"
        "{%- for tool in tools %}"
        "{%- set fn = tool.function if tool.function is defined else tool %}"
        "{{- '\\n' + fn.name + '(' }}"
        # A dataset (Arrow) gives every tool the union of all tools' parameters, unset ones None.
        "{%- set params = fn.parameters if fn.parameters is defined and fn.parameters else {} %}"
        "{%- set props = params.properties if params.properties is defined and params.properties"
        " else {} %}"
        "{%- for name, spec in props.items() if spec is not none %}"
        "{{- (', ' if not loop.first else '') + name }}"
        "{%- endfor %}"
        "{{- ')' }}"
        "{%- endfor %}",
        _say("\n\nCall a tool with " + call_markup("...", "{...}")),
        "{{- '<|im_end|>\\n' }}"
        "{%- else %}"
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}{%- endif %}"
        "{%- endif %}"
        "{%- for message in messages %}"
        "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
        "{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}"
        "{%- elif message.role == 'assistant' %}"
        "{{- '<|im_start|>assistant\\n' }}{% generation %}"
        "{%- if message.content %}{{- message.content }}"
        "{%- if message.tool_calls %}",
        _say(SEPARATOR),
        "{%- endif %}{%- endif %}"
        "{%- for tool_call in message.tool_calls or [] %}"
        "{%- if tool_call.function is defined %}"
        "{%- set tool_call = tool_call.function %}{%- endif %}"
        "{%- if not loop.first %}",
        _say(SEPARATOR),
        "{%- endif %}",
        _say(CALL_START),
        "{{- tool_call.name | tojson }}",
        _say(CALL_ARGUMENTS),
        "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
        "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}",
        _say(CALL_END),
        "{%- endfor %}"
        "{{- '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
        "{%- elif message.role == 'tool' %}"
        "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}"
        "{{- '<|im_start|>user' }}{%- endif %}",
        _say(SEPARATOR + RESPONSE_START),
        "{%- if message.content is string %}{{- message.content }}"
        "{%- else %}{{- message.content | tojson }}{%- endif %}",
        _say(RESPONSE_END),
        "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
        "{{- '<|im_end|>\\n' }}{%- endif %}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    ]
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any UTF-8 text encodes, nothing is ever unknown), Qwen-style tokens."""
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        padding_side="left",  # GRPO batches and batched generate both want left padding
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ValueError(f"{token!r} is not a single token")
    return found


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    max_position_embeddings: int,
    initializer_range: float = 0.02,
) -> Qwen2Config:
    """A small Qwen2 whose vocabulary and stop/pad ids match the tokenizer.

    `initializer_range` sets how peaked the random model's next-token distributions are: at
    the usual 0.02 a tiny model's logits are all near zero (uniform output) and adapters on its
    inner layers can barely move them."""
    eos_id = token_id(tokenizer, IM_END)
    pad_id = token_id(tokenizer, ENDOFTEXT)
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        initializer_range=initializer_range,
    )


def build_tiny_policy(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 2048,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """Train the tokenizer on `texts`, build random weights from `seed`, save both to `out_dir`.

    The same texts and seed give the same files (weights drawn from a forked RNG, so the
    caller's global torch RNG state is left alone).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size)
    config = tiny_config(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
