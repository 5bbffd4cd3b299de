"""KL(tuned || base) on the tokens the tuned policy generated: how far tuning moved the model.

Forgetting tracks this divergence in the literature (the further an RL-tuned policy drifts
from its base on the task's own prompts, the more it tends to lose elsewhere), so the eval
reports it next to the probe set. What is measured: the tuned trajectories' token-exact
sequences (`Trajectory.segments()`, the ones the trainer trains on) are scored teacher-forced
under both models, and at every position the model generated, the exact KL between the two
next-token distributions (temperature 1, over the whole vocabulary) is taken; the figure is
its mean per generated token. Exact rather than sampled: it is never negative, does not
depend on the sampling temperature the eval played with, and is 0 for identical weights.

Local policies (MODEL_DIR[+ADAPTER]) are scored in this process: one model loaded once when
both sides share a model directory, with their adapters switched (the base's own adapter, or
none). Served policies report logprobs only for the tokens each one sampled, not the base's
distribution over the tuned tokens, so for them the KL is reported unavailable, with why.
Sequences are scored in right-padded batches of similar length (a causal model's real positions
never see the padding after them): on the demo's eval, 1,105 sequences in 22 s instead of 66 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rollout.forgetting import KLResult
from rollout.policy_spec import LocalSpec, PolicySpec
from rollout.trajectory import TokenSequence, Trajectory

METHOD = "exact per-token KL over the vocabulary, teacher-forced on the tuned tokens"
SERVED = (
    "served policies return logprobs only for the tokens each one sampled, not the base's "
    "distribution over the tuned tokens; evaluate MODEL_DIR[+ADAPTER] policies to measure it"
)


def sequences_of(trajectories: list[Trajectory], limit: int | None = None) -> list[TokenSequence]:
    """The generated-token sequences to score: every segment with a generated token, of the
    scored and the unscored tuned episodes alike (the KL is about the text, not the reward)."""
    out = [
        segment
        for trajectory in trajectories
        for segment in trajectory.segments()
        if 1 in segment.mask[1:]
    ]
    return out if limit is None else out[:limit]


def measure_kl(
    base: PolicySpec | None,
    tuned: PolicySpec | None,
    trajectories: list[Trajectory],
    *,
    limit: int | None = None,
    progress: bool = True,
) -> KLResult:
    """KL(tuned || base) per generated token, or why it cannot be measured."""
    if base is None or tuned is None:
        return KLResult(unavailable="no policy was played (re-judging scores stored answers)")
    if not isinstance(base, LocalSpec) or not isinstance(tuned, LocalSpec):
        return KLResult(unavailable=SERVED)
    sequences = sequences_of(trajectories, limit)
    if not sequences:
        return KLResult(unavailable="the tuned trajectories hold no generated tokens")
    pair = _load_pair(base, tuned)
    if isinstance(pair, str):
        return KLResult(unavailable=pair)
    return score_kl(pair[0], pair[1], sequences, progress=progress)


@dataclass
class Scorer:
    """One side: a causal LM and the adapter to route through (None: the bare model)."""

    model: Any
    adapter: str | None
    device: str = "cpu"
    has_adapters: bool = False  # False: nothing to switch, the model is used as it is

    def select(self) -> None:
        if not self.has_adapters:
            return
        if self.adapter is None:
            self.model.disable_adapters()
        else:
            self.model.enable_adapters()
            self.model.set_adapter(self.adapter)

    def logprobs(self, ids: Any, attention_mask: Any, positions: Any) -> Any:
        """ids, attention_mask: (batch, seq); positions: (batch, seq - 1) bool -> (generated,
        vocab) log-distributions of the next token at the positions that predicted a generated
        one, row after row."""
        import torch

        self.select()
        out = self.model(input_ids=ids, attention_mask=attention_mask)
        logits = out.logits  # (batch, seq, vocab)
        return torch.log_softmax(logits[:, :-1][positions].float(), dim=-1)  # (generated, vocab)


# Logits held per forward pass (batch x seq x vocab floats): 2**26 is 256 MiB in float32, so a
# small model scores dozens of sequences at once and a 150k-vocabulary one a few hundred tokens.
MAX_BATCH_LOGITS = 2**26


def batches(
    sequences: list[TokenSequence], vocab: int, max_logits: int
) -> list[list[TokenSequence]]:
    """Sequences grouped by similar length (little padding), each group's padded logits within
    `max_logits`; a sequence longer than that is scored alone."""
    out: list[list[TokenSequence]] = []
    for sequence in sorted(sequences, key=lambda s: len(s.ids)):
        batch = out[-1] if out else None
        if batch and (len(batch) + 1) * len(sequence.ids) * vocab <= max_logits:
            batch.append(sequence)
        else:
            out.append([sequence])
    return out


def padded(batch: list[TokenSequence], device: str) -> tuple[Any, Any, Any]:
    """Right-padded ids and attention mask (batch, seq), and the generated-token predictors
    (batch, seq - 1): a causal model's real positions never see the padding after them."""
    import torch

    width = max(len(s.ids) for s in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)  # (batch, seq)
    attention = torch.zeros((len(batch), width), dtype=torch.long)  # (batch, seq)
    positions = torch.zeros((len(batch), width - 1), dtype=torch.bool)  # (batch, seq - 1)
    for row, sequence in enumerate(batch):
        n = len(sequence.ids)
        ids[row, :n] = torch.tensor(sequence.ids)  # (n,)
        attention[row, :n] = 1  # (n,)
        positions[row, : n - 1] = torch.tensor(sequence.mask[1:], dtype=torch.bool)  # (n - 1,)
    return ids.to(device), attention.to(device), positions.to(device)


def score_kl(
    base: Scorer,
    tuned: Scorer,
    sequences: list[TokenSequence],
    *,
    progress: bool = True,
    max_batch_logits: int = MAX_BATCH_LOGITS,
) -> KLResult:
    """Mean over generated tokens of KL(tuned(.|prefix) || base(.|prefix))."""
    import torch

    total, tokens = 0.0, 0
    vocab = int(tuned.model.config.vocab_size)
    bar = tqdm(
        total=len(sequences), desc="KL(tuned||base)", unit="seq", disable=not progress, leave=False
    )
    with torch.inference_mode(), bar:
        for batch in batches(sequences, vocab, max_batch_logits):
            ids, attention, positions = padded(batch, tuned.device)
            tuned_lp = tuned.logprobs(ids, attention, positions)  # (generated, vocab)
            base_lp = base.logprobs(
                ids.to(base.device), attention.to(base.device), positions.to(base.device)
            ).to(tuned_lp.device)  # (generated, vocab)
            if base_lp.shape != tuned_lp.shape:
                return KLResult(
                    unavailable=f"the models' vocabularies differ ({base_lp.shape[-1]} vs "
                    f"{tuned_lp.shape[-1]} logits)"
                )
            per_token = (tuned_lp.exp() * (tuned_lp - base_lp)).sum(dim=-1)  # (generated,)
            total += float(per_token.clamp(min=0.0).sum())
            tokens += int(per_token.numel())
            bar.update(len(batch))
    return KLResult(
        value=total / max(tokens, 1), tokens=tokens, sequences=len(sequences), method=METHOD
    )


def _load_model(model_dir: Path, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    return model.to(device).eval()


def _attach(model: Any, adapter: Path, name: str) -> None:
    import warnings

    with warnings.catch_warnings():  # PEFT warns on every adapter after the first
        warnings.simplefilter("ignore")
        model.load_adapter(str(adapter), adapter_name=name)


def _same_vocabulary(a: Path, b: Path) -> bool:
    from transformers import AutoTokenizer

    first = AutoTokenizer.from_pretrained(a, local_files_only=True)
    second = AutoTokenizer.from_pretrained(b, local_files_only=True)
    return bool(first.get_vocab() == second.get_vocab())


def _load_pair(base: LocalSpec, tuned: LocalSpec) -> tuple[Scorer, Scorer] | str:
    """Both sides' scorers, sharing one model when they share a model directory; or why the
    two cannot be compared token for token."""
    if base.model_dir.resolve() == tuned.model_dir.resolve():
        model = _load_model(tuned.model_dir, tuned.device)
        adapters = {"base": base.adapter, "tuned": tuned.adapter}
        for name, path in adapters.items():
            if path is not None:
                _attach(model, path, name)
        loaded = any(path is not None for path in adapters.values())
        return (
            Scorer(model, "base" if base.adapter else None, tuned.device, loaded),
            Scorer(model, "tuned" if tuned.adapter else None, tuned.device, loaded),
        )
    if not _same_vocabulary(base.model_dir, tuned.model_dir):
        return "the base and tuned models use different tokenizers: no token-level comparison"
    scorers = []
    for spec in (base, tuned):
        model = _load_model(spec.model_dir, spec.device)
        if spec.adapter is not None:
            _attach(model, spec.adapter, "adapter")
        adapter = "adapter" if spec.adapter else None
        scorers.append(Scorer(model, adapter, spec.device, adapter is not None))
    return scorers[0], scorers[1]
