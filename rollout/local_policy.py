"""A `Policy` served in-process by `transformers`: no server, CPU or GPU, LoRA hot-swap.

Rollouts run many episodes concurrently, each awaiting one assistant turn at a time. Calling
`model.generate` once per turn would waste the accelerator (and on CPU, the cores), so every
`complete()` only enqueues its request; a single batcher task collects what arrives within a
short window and runs it as one left-padded `generate` per group of compatible requests (same
model/adapter, same sampling settings) in a worker thread, so the event loop keeps serving tool
calls meanwhile. Token ids and logprobs come straight from `generate`: the logprobs are those
of the distribution actually sampled from (temperature and top-p applied), like vLLM's
`processed_logprobs` mode, so trainers can treat both backends alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from rollout.errors import (
    AdapterError,
    PolicyError,
    PolicyRequestError,
    PolicyUnavailableError,
    RolloutConfigError,
)
from rollout.local_generation import batch_seed, seeded, stop_ids, turn_from_generation
from rollout.lora_fold import TIED_HEAD_WARNING, AdapterFolding
from rollout.policy import DEFAULT_DEVICE, SamplingParams, Turn, TurnRequest


@dataclass
class _Pending:
    request: TurnRequest
    prompt_ids: list[int]
    max_new_tokens: int  # sampling.max_tokens clamped to the room left in the context
    future: asyncio.Future[Turn]
    started: float

    def key(self, model: str) -> tuple[str, float, float, int]:
        sampling = self.request.sampling
        return (model, sampling.temperature, sampling.top_p, self.max_new_tokens)


class LocalPolicy:
    """Plays assistant turns with a local `transformers` causal LM (optionally LoRA adapters).

    `model` names what requests without `model` get: the base name, or the adapter made active
    by `swap_adapter`/`set_active`. Adapter changes wait for the running batch (an asyncio lock)
    and happen in place: the base weights are never reloaded. The adapter a batch plays is
    folded into the (float32) weights while it plays (rollout.lora_fold), at the base's speed.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        device: str = DEFAULT_DEVICE,
        max_batch: int = 16,
        batch_window_s: float = 0.01,
        max_context: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.hf_model = model
        self.tokenizer = tokenizer
        self.base_name = name
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.max_context = max_context or int(
            getattr(model.config, "max_position_embeddings", 0) or 32768
        )
        self.eos_ids = stop_ids(tokenizer, getattr(model, "generation_config", None))
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))
        self.generate_calls = 0  # one per batched `generate`: how well requests were batched
        self._adapters: dict[str, Path] = {}
        self._folding = AdapterFolding(model)
        self._active = name
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[_Pending] = []  # taken off the queue, not answered yet

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str = DEFAULT_DEVICE,
        adapter_path: str | Path | None = None,
        adapter_name: str | None = None,
        max_batch: int = 16,
        batch_window_s: float = 0.01,
        name: str | None = None,
        max_context: int | None = None,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str | None = None,
    ) -> LocalPolicy:
        """Load model and tokenizer from a local directory; `name` is the base model's name
        (default: the directory name). An `adapter_path` is loaded and made active at once."""
        path = Path(path)
        if not (path / "config.json").is_file():  # else transformers' error, many lines long
            what = "has no config.json" if path.is_dir() else "does not exist"
            raise RolloutConfigError(
                f"local model {path} {what}: give the directory a transformers model was "
                "saved to (save_pretrained)"
            )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        tokenizer.padding_side = "left"
        options = {"dtype": dtype, "attn_implementation": attn_implementation}
        model: Any = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, **{k: v for k, v in options.items() if v is not None}
        )
        policy = cls(
            model.to(device).eval(), tokenizer, name=name or path.name, device=device,
            max_batch=max_batch, batch_window_s=batch_window_s, max_context=max_context
        )  # fmt: skip
        if adapter_path is not None:
            adapter = adapter_name or Path(adapter_path).name
            policy._load(Path(adapter_path), adapter)
            policy._active = adapter
        return policy

    # ----------------------------------------------------------------- Policy protocol

    @property
    def model(self) -> str:
        return self._active

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def prompt_ids(self, request: TurnRequest) -> list[int]:
        """The prompt exactly as the model will see it: chat template, tools, generation prompt."""
        try:
            ids = self.tokenizer.apply_chat_template(
                request.messages, tools=request.tools or None, add_generation_prompt=True,
                tokenize=True, return_dict=False
            )  # fmt: skip
        except Exception as exc:  # a template error means the messages cannot be rendered
            raise PolicyRequestError(f"cannot render the conversation: {exc}") from exc
        return [int(t) for t in ids]

    async def complete(self, request: TurnRequest) -> Turn:
        if self._closed:
            raise PolicyUnavailableError("the local policy is closed")
        if request.model is not None:
            self._check_name(request.model)
        ids = self.prompt_ids(request)
        room = self.max_context - len(ids)
        if room < 1:
            raise PolicyRequestError(
                f"the prompt has {len(ids)} tokens but the context holds {self.max_context} "
                "(max_context), leaving no room to generate; shorten the conversation"
            )
        self._ensure_batcher()
        loop = asyncio.get_running_loop()
        max_new = min(request.sampling.max_tokens, room)
        pending = _Pending(request, ids, max_new, loop.create_future(), time.perf_counter())
        self._queue.put_nowait(pending)
        return await pending.future

    async def aclose(self) -> None:
        """Stop the batcher; requests queued or in the running batch fail as unavailable."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                task.cancel()
            except RuntimeError:  # its loop is already closed: nothing left to stop
                task = None
            if task is not None and self._loop is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        waiting = list(self._inflight)
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        _fail(waiting, PolicyUnavailableError("the local policy closed"))
        self._inflight = []

    # ----------------------------------------------------------------- adapters

    async def load_adapter(self, path: str | Path, name: str) -> None:
        """Load a PEFT LoRA adapter under a new name (not made active)."""
        self._ensure_batcher()
        async with self._lock:
            await asyncio.to_thread(self._load, Path(path), name)

    async def unload_adapter(self, name: str) -> None:
        """Delete an adapter; if it was active, the base becomes active."""
        self._ensure_batcher()
        async with self._lock:
            if name not in self._adapters:
                raise AdapterError(f"no adapter named {name!r} is loaded")
            await asyncio.to_thread(self._unload, name)

    async def swap_adapter(self, path: str | Path, name: str) -> None:
        """Load `name`, make it active, and delete the previously active adapter, in place.

        Waits for the running batch; if loading fails the previous adapter stays active.
        """
        self._ensure_batcher()
        async with self._lock:
            previous = self._active
            await asyncio.to_thread(self._load, Path(path), name)
            self._active = name
            if previous in self._adapters and previous != name:
                await asyncio.to_thread(self._unload, previous)

    async def publish_adapter(self, path: Path, version: str) -> None:
        """The Policy protocol's publish: swapped in place, the base weights stay loaded."""
        await self.swap_adapter(path, version)

    async def set_active(self, name: str) -> None:
        """Make the base or a loaded adapter the default for requests without `model`."""
        self._ensure_batcher()
        async with self._lock:
            self._check_name(name)
            self._active = name

    def _check_name(self, name: str) -> None:
        if name != self.base_name and name not in self._adapters:
            known = [self.base_name, *self._adapters]
            raise PolicyRequestError(f"unknown model {name!r}; this policy serves {known}")

    def _load(self, path: Path, name: str) -> None:
        if name == self.base_name or name in self._adapters:
            raise AdapterError(f"the name {name!r} is already in use; load under a new name")
        from transformers.utils import logging as hf_logging

        # The load report lists the *other* adapters' weights as MISSING on every load after
        # the first: true of the checkpoint, not a problem, and a page of noise per step.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        self._folding.unfold()  # PEFT would undo a fold by subtraction, not exactly
        try:
            with warnings.catch_warnings():  # PEFT warns on every adapter after the first
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing`")
                warnings.filterwarnings("ignore", message=TIED_HEAD_WARNING)
                self.hf_model.load_adapter(str(path), adapter_name=name)
        except Exception as exc:
            raise AdapterError(f"cannot load the adapter {name!r} from {path}: {exc}") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
        self._adapters[name] = path

    def _unload(self, name: str) -> None:
        self._folding.unfold()
        try:
            self.hf_model.delete_adapter(name)
        except Exception as exc:
            raise AdapterError(f"cannot unload the adapter {name!r}: {exc}") from exc
        del self._adapters[name]
        if self._active == name:
            self._active = self.base_name

    def _select(self, name: str) -> None:
        """Route the next forward passes through adapter `name`, or through the bare base."""
        if not self._adapters:
            return
        if name == self.base_name:
            self._folding.unfold()
            self.hf_model.disable_adapters()
            return
        self._folding.select(name)

    # ----------------------------------------------------------------- batching

    def _ensure_batcher(self) -> None:
        """Start the batcher on the running loop (a new loop gets a fresh queue and lock)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._queue = asyncio.Queue()
            self._lock = asyncio.Lock()
            self._task = None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run_batcher(), name="local-policy-batcher")

    async def _run_batcher(self) -> None:
        while True:
            items = [await self._queue.get()]
            await asyncio.sleep(self.batch_window_s)  # let concurrent episodes join this batch
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            self._inflight = [p for p in items if not p.future.done()]  # callers may give up
            try:
                await self._serve(self._inflight)
            except Exception as exc:  # never let one bad batch stop the batcher
                _fail(self._inflight, PolicyError(f"local generation failed: {exc}"))
            self._inflight = []

    async def _serve(self, items: list[_Pending]) -> None:
        async with self._lock:  # adapter changes wait for the whole round
            groups: dict[tuple[str, float, float, int], list[_Pending]] = {}
            for pending in items:
                name = pending.request.model or self._active
                try:
                    self._check_name(name)
                except PolicyRequestError as exc:  # unloaded while the request was queued
                    _fail([pending], exc)
                    continue
                groups.setdefault(pending.key(name), []).append(pending)
            for (name, _, _, max_new), group in groups.items():
                try:
                    turns = await asyncio.to_thread(self._generate, group, name, max_new)
                except Exception as exc:
                    _fail(group, PolicyError(f"local generation failed: {exc}"))
                    continue
                for pending, turn in zip(group, turns, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(turn)

    def _generate(self, group: list[_Pending], name: str, max_new_tokens: int) -> list[Turn]:
        """One left-padded `generate` for the group (runs in a worker thread)."""
        width = max(len(p.prompt_ids) for p in group)
        input_ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)  # (batch, seq)
        attention_mask = torch.zeros((len(group), width), dtype=torch.long)  # (batch, seq)
        for row, pending in enumerate(group):
            n = len(pending.prompt_ids)
            input_ids[row, width - n :] = torch.tensor(pending.prompt_ids)  # (n,)
            attention_mask[row, width - n :] = 1  # (n,)
        config = self._generation_config(group[0].request.sampling, max_new_tokens)
        self._select(name)
        seed = batch_seed([p.request.seed for p in group])
        with torch.inference_mode(), seeded(seed, self.device):
            out = self.hf_model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                generation_config=config
            )  # fmt: skip
        self.generate_calls += 1
        generated = out.sequences[:, width:]  # (batch, new)
        steps = [  # log-softmax of the processed scores = the distribution sampled from
            torch.log_softmax(step.float(), dim=-1).gather(1, generated[:, t : t + 1])  # (batch, 1)
            for t, step in enumerate(out.scores)
        ]
        logprobs = torch.cat(steps, dim=1).cpu().tolist()  # (batch, new)
        rows = generated.cpu().tolist()  # (batch, new)
        now = time.perf_counter()
        return [
            turn_from_generation(
                self.tokenizer,
                p.prompt_ids,
                row,
                lps,
                eos_ids=self.eos_ids,
                model=name,
                latency_s=now - p.started,
            )
            for p, row, lps in zip(group, rows, logprobs, strict=True)
        ]

    def _generation_config(self, sampling: SamplingParams, max_new_tokens: int) -> GenerationConfig:
        """Only temperature and top-p shape the distribution (vLLM's defaults): the model's own
        generation defaults (top-k, repetition penalty, ...) are switched off explicitly."""
        sample = sampling.temperature > 0
        return GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=sample, num_beams=1, repetition_penalty=1.0,
            temperature=sampling.temperature if sample else 1.0,
            top_p=sampling.top_p if sample else 1.0,
            top_k=0 if sample else None,  # 0 = off; greedy ignores it (and warns if set)
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id,
            output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip


def _fail(items: Sequence[_Pending], exc: Exception) -> None:
    for pending in items:
        if not pending.future.done():
            pending.future.set_exception(exc)
