"""Continuous batching: one thread per model runs every admitted request together.

Requests wait in a bounded FIFO queue (`max_queue`; beyond it `submit` raises
`RateLimited`) until one of the `max_running` slots of the KV cache is free.
Interactive requests come first: background work (a job's requests, `Sequence.priority`
above `INTERACTIVE`) waits in a queue of its own and is admitted only when no interactive
request waits. While interactive requests keep coming (one in the last `RESERVE_S`
seconds), background work also leaves one slot free, so the next one starts at once
instead of waiting for a background sequence to finish; with no interactive traffic,
background work uses every slot.
Each engine step, at a token boundary:

1. drops finished and cancelled sequences, freeing their slots; running
   sequences always occupy slots `0..n-1` (the last one moves into a hole), so
   a batched forward reads the cache as one contiguous view;
2. admits waiting requests into free slots;
3. runs one prefill chunk (at most `prefill_chunk` prompt tokens, several new
   requests right-padded into one batch), so a long prompt never stalls the
   running sequences for long;
4. runs one batched decode forward for every sequence that has a token to feed.

The model gets the static `SlotCache` as its cache argument, explicit
`position_ids` and a ready 4D mask, so each row attends only to its own
positions (sliding-window attention is therefore not applied: such models
are served as full-attention ones). Tokens are sampled per request (`Sampler`: its own settings and
generator), detokenized incrementally with stop strings (`IncrementalText`) and
handed to the request's `sink`, which must not block.

Prompt prefixes are cached across requests (`PrefixCache`, engine/prefix.py) within
`prefix_cache_tokens` of KV: before a prefill chunk, a sequence at a block boundary copies
the cached blocks that continue its prompt into its slot and skips their prefill (not one
that asks for its prompt's log probabilities: those need the logits of every position);
after it, the full prompt blocks it wrote are copied into the cache. A sequence whose next
block another running sequence is computing waits for it instead of computing it too.

Log probabilities come from the same forwards: a request that asks for its prompt's
(`prompt_logprobs`) has the head run over every position of its prefill chunks, and one
that asks for its tokens' (`logprobs`) has the log-softmax of the logits its token is
sampled from (`TokenLogprobs`, the model's own distribution, before temperature or
penalties). A request with `max_new_tokens` 0 finishes once its prompt is read.

LoRA adapters (`engine.lora`): a sequence may carry an adapter (`Sequence.adapter`, its
loaded weights in `Sequence.lora`). Sequences of different adapters of the model, and of the
model itself, share every forward: each forward gets a `LoraStep` for its rows (None when
all are the base's), applied on the Hugging Face path by forward hooks on the target
projections (`LoraHooks`); a forward of its own would call `lora.apply` per projection.

Greedy results do not depend on the batch up to floating-point rounding: a row
computed in a batch of 8 may differ in the last bits from the same row alone,
which bf16 can turn into a different token after many steps (fp32 agrees in
practice; see tests/engine/test_scheduler.py). With `deterministic` they are
identical, in bf16 too: every forward then computes one sequence (a decode step
runs each row on its own, reading only its own positions, and the head on its row
alone), and a prompt is read in chunks that start at multiples of `prefill_chunk`
whatever else is running, so each matrix product has the same shape and inputs as
when the request runs alone. That gives up batching (each row reads all the weights),
except where cumulo's CPU kernels decode: their exact mode computes each row of a
batch in the order it has alone, so decode steps without adapters stay batched.

Decode steps of Llama-shaped models run through `FastDecoder` (engine/fastpath.py),
cumulo's own forward with fewer operators than the Hugging Face one; prefill and other
models use the Hugging Face forward (`_forward`). Greedy rows without penalties take
their tokens from one argmax over the batch's logits.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import torch

from cumulo.engine.detok import IncrementalText
from cumulo.engine.fastpath import FastDecoder
from cumulo.engine.kvcache import KVLayout, SlotCache
from cumulo.engine.loader import CausalLM
from cumulo.engine.lora import LoadedAdapter, LoraBatch, LoraHooks, LoraStack, LoraStep
from cumulo.engine.params import (
    Finished,
    GenerationEvent,
    GenerationParams,
    TextPiece,
    TokenLogprobs,
)
from cumulo.engine.prefix import PrefixCache, SeqBlocks
from cumulo.engine.sampling import Sampler
from cumulo.engine.stats import EngineStats, Recent, p50
from cumulo.errors import RateLimited, Unavailable
from cumulo.origin import INTERACTIVE

logger = logging.getLogger(__name__)

RESERVE_S = 10.0  # interactive traffic this recent keeps a slot free of background work
Posted: TypeAlias = GenerationEvent | BaseException
Sink: TypeAlias = Callable[[Posted], bool]  # False when nobody listens any more


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """Capacity of one model's engine (see `DeploymentConfig`)."""

    max_running: int = 16
    max_tokens_in_flight: int = 32768
    max_queue: int = 64
    prefill_chunk: int = 256
    prefix_cache_tokens: int = 0  # KV kept for prompt prefixes across requests; 0: none
    deterministic: bool = False  # each sequence computed on its own (see the module doc)


@dataclass(eq=False, slots=True)
class Sequence:
    """One request inside the engine."""

    prompt_ids: list[int]
    params: GenerationParams
    sink: Sink
    submitted: float = field(default_factory=time.perf_counter)
    sampler: Sampler | None = None
    text: IncrementalText | None = None
    slot: int = -1
    length: int = 0  # positions written in the cache
    prefilled: int = 0  # prompt tokens written in the cache
    next_input: int | None = None  # sampled, not yet fed to the model
    tokens: list[int] = field(default_factory=list)  # sampled so far
    prompt_logprobs: TokenLogprobs | None = None  # gathered chunk by chunk, when asked for
    queue_ms: float = 0.0
    priority: int = INTERACTIVE  # above: background work (`cumulo.origin`), admitted after
    cache_salt: str | None = None  # prefix-cache key (an adapter's): KV is reused only within it
    blocks: SeqBlocks | None = None  # its prefix-cache blocks, while it runs
    # The LoRA adapter's name (None: the base model), the identity of the weights that
    # compute this sequence (a prefix cache keys on it); `lora` holds them while it runs.
    adapter: str | None = None
    lora: LoadedAdapter | None = None
    cancelled: bool = False
    done: bool = False


def shutting_down() -> Unavailable:
    return Unavailable("the local model is shutting down")


class Scheduler:
    """The batching engine of one `CausalLM`, on its own thread."""

    def __init__(self, lm: CausalLM, limits: EngineLimits, *, name: str = "cumulo-engine") -> None:
        self.lm = lm
        self.limits = limits
        slot_len = min(lm.context_window, limits.max_tokens_in_flight // limits.max_running)
        if slot_len < 2:
            raise ValueError("max_tokens_in_flight leaves less than 2 tokens per running sequence")
        self.layout = KVLayout.for_model(lm.model.config, limits.max_running, slot_len, lm.dtype)
        self.cache = SlotCache(self.layout, lm.device)
        self.prefix = PrefixCache(self.layout, lm.device, limits.prefix_cache_tokens)
        self.recent = Recent()
        self._decoder: Any = lm.model.get_decoder()
        # The cache argument's name: `cache` since transformers 5.2x, `past_key_values` before.
        forward = inspect.signature(self._decoder.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._head: Any = lm.model.get_output_embeddings()
        self._vocab = int(self._head.weight.shape[0])
        self._hooks = LoraHooks(lm.model)
        self._stacks: dict[tuple[int, ...], LoraStack] = {}  # the last few sets of adapters
        self._last_step: tuple[tuple[int, ...], LoraBatch | None] = ((), None)
        self._fast = FastDecoder(lm.model, self.cache) if FastDecoder.supports(lm.model) else None
        if self._fast is not None:
            self._fast.exact = limits.deterministic
        self._running: list[Sequence] = []
        self._waiting: deque[Sequence] = deque()
        self._background: deque[Sequence] = deque()  # waiting background work
        self._last_interactive = float("-inf")  # when the last interactive request came
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def max_context(self) -> int:
        """The most positions (prompt + reply) one request may use."""
        return self.layout.slot_len

    def submit(self, seq: Sequence) -> None:
        """Queue `seq`; raise `RateLimited` when the queue is full, `Unavailable` when closed."""
        with self._lock:
            if self._closing:
                raise shutting_down()
            queue = self._waiting if seq.priority <= INTERACTIVE else self._background
            if len(queue) >= self.limits.max_queue:
                raise RateLimited(
                    f"the local model's queue is full ({self.limits.max_queue} waiting requests)",
                    retry_after=self._retry_after(),
                )
            queue.append(seq)
            if queue is self._waiting:
                self._last_interactive = seq.submitted
        self._wake.set()

    def cancel(self, seq: Sequence) -> None:
        """Forget `seq`: dropped from the queue now, or from the batch at the next token."""
        with self._lock:
            seq.cancelled = True
            if seq.slot < 0:
                for queue in (self._waiting, self._background):
                    if seq in queue:
                        queue.remove(seq)
        self._wake.set()

    def close(self, timeout: float | None = 10.0) -> None:
        """Fail queued and running requests with `Unavailable`; end the thread."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def stats(self) -> EngineStats:
        running = list(self._running)
        prefix = self.prefix.stats()
        return EngineStats(
            running=len(running),
            waiting=len(self._waiting) + len(self._background),
            max_running=self.limits.max_running,
            max_queue=self.limits.max_queue,
            slot_tokens=self.layout.slot_len,
            max_tokens_in_flight=self.layout.slots * self.layout.slot_len,
            tokens_in_flight=sum(s.length for s in running),
            kv_cache_bytes=self.layout.nbytes,
            total_tokens=self.recent.total_tokens,
            total_requests=self.recent.total_requests,
            tokens_per_s=round(self.recent.tokens_per_s(), 2),
            queue_ms_p50=p50(self.recent.queue_ms),
            ttft_ms_p50=p50(self.recent.ttft_ms),
            prefix_cache_tokens=prefix.capacity_tokens,
            prefix_cache_used_tokens=prefix.used_tokens,
            prefix_cache_bytes=prefix.nbytes,
            prefix_cached_tokens=prefix.hit_tokens,
            prefix_cache_hits=prefix.hits,
        )

    def _retry_after(self) -> float:
        """Seconds until a queued request is likely to start: the queue drained at the
        recent pace, at least one."""
        mean = self.recent.mean_service_s() or 1.0
        return max(1.0, mean * (len(self._waiting) + 1) / self.limits.max_running)

    # ------------------------------------------------------------------ the engine thread

    def _serve(self) -> None:
        with torch.inference_mode():
            while self._next_batch():
                try:
                    self._step()
                except Exception as exc:
                    logger.exception("generation failed on %s", self.lm.path.name)
                    for seq in self._running:
                        self._leave(seq)
                        self._post(seq, exc)
                    self._running.clear()
        with self._lock:
            left = [*self._running, *self._waiting, *self._background]
            for seq in self._running:
                self._leave(seq)
            self._running.clear()
            self._waiting.clear()
            self._background.clear()
        for seq in left:
            if not seq.cancelled:
                self._post(seq, shutting_down())
        logger.debug("engine for %s stopped", self.lm.path.name)

    def _next_batch(self) -> bool:
        """Admit waiting requests into free slots; sleep while idle. False once closing."""
        while True:
            with self._lock:
                if self._closing:
                    return False
                self._reap()
                now = time.perf_counter()
                while self._waiting and len(self._running) < self.limits.max_running:
                    self._admit(self._waiting.popleft(), now)
                if not self._waiting and self._background:
                    slots = self.limits.max_running
                    if now - self._last_interactive < RESERVE_S and slots > 1:
                        slots -= 1  # one stays free for the next interactive request
                    while self._background and len(self._running) < slots:
                        self._admit(self._background.popleft(), now)
                if self._running:
                    return True
                self._wake.clear()
            self._wake.wait()

    def _admit(self, seq: Sequence, now: float) -> None:
        seq.queue_ms = (now - seq.submitted) * 1000.0
        self.recent.queue_ms.append(seq.queue_ms)
        seq.sampler = Sampler(seq.params.sampling, self._vocab, self.lm.device)
        seq.text = IncrementalText(self.lm.tokenizer, seq.params.stop)
        seq.slot = len(self._running)
        if self.prefix.enabled:
            reuse = seq.params.prompt_logprobs is None
            seq.blocks = self.prefix.open(seq.prompt_ids, seq.cache_salt, reuse)
        self._running.append(seq)

    def _leave(self, seq: Sequence) -> None:
        """Release what `seq` holds in the prefix cache."""
        if seq.blocks is not None:
            self.prefix.release(seq.blocks, seq)

    def _reap(self) -> None:
        """Free the slots of finished and cancelled sequences; keep the rest in 0..n-1."""
        running, i = self._running, 0
        while i < len(running):
            seq = running[i]
            if not (seq.done or seq.cancelled):
                i += 1
                continue
            self._leave(seq)
            last = running.pop()
            if last is not seq:
                self.cache.move(last.slot, seq.slot, last.length)
                last.slot, running[i] = seq.slot, last
            self.recent.total_requests += 1
            self.recent.service_s.append(time.perf_counter() - seq.submitted - seq.queue_ms / 1e3)

    def _step(self) -> None:
        prefilling = [s for s in self._running if s.prefilled < len(s.prompt_ids)]
        if prefilling:
            self._prefill(prefilling)
        if any(s.next_input is not None for s in self._running):
            self._decode()
        self._reap()

    def _prefill(self, seqs: list[Sequence]) -> None:
        """One chunk of prompt tokens, one forward per run of adjacent slots."""
        if self.prefix.enabled:
            seqs = self._reuse(seqs)
            if not seqs:
                return
        budget, chosen = self.limits.prefill_chunk, list[tuple[Sequence, int]]()
        exact = self.limits.deterministic
        for seq in sorted(seqs, key=lambda s: (s.priority, s.slot)):  # interactive first
            if budget <= 0:
                break
            left = len(seq.prompt_ids) - seq.prefilled
            if exact:  # a whole chunk (as when alone), or nothing this step
                n = min(left, self.limits.prefill_chunk)
                if chosen and n > budget:
                    break
            else:
                n = min(left, budget)
            chosen.append((seq, n))
            budget -= n
        runs: list[list[tuple[Sequence, int]]] = [[chosen[0]]]
        for item in chosen[1:]:
            if item[0].slot == runs[-1][-1][0].slot + 1 and not exact:
                runs[-1].append(item)
            else:
                runs.append([item])
        for run in runs:
            width = max(n for _, n in run)
            ids = torch.zeros(len(run), width, dtype=torch.long)
            pos = torch.zeros(len(run), width, dtype=torch.long)
            for b, (seq, n) in enumerate(run):
                ids[b, :n] = torch.tensor(seq.prompt_ids[seq.prefilled : seq.prefilled + n])
                pos[b] = torch.arange(seq.prefilled, seq.prefilled + width)
            counts = torch.tensor([n for _, n in run])
            lora = self._lora([seq for seq, _ in run])
            hidden = self._forward(run[0][0].slot, run[-1][0].slot + 1, ids, pos, counts, lora)
            last_rows, ready = [], []  # sampled from hidden states through the head
            logit_rows, ready_logits = [], []  # from logits the prompt's log probabilities had
            for b, (seq, n) in enumerate(run):
                last = None
                if seq.params.prompt_logprobs is not None:
                    last = self._prompt_logprobs(seq, self._logits(hidden[b, :n]))
                seq.prefilled += n
                seq.length += n
                if seq.blocks is not None:
                    self.prefix.store(seq.blocks, seq, self.cache, seq.slot, seq.prefilled)
                if seq.prefilled == len(seq.prompt_ids):
                    if seq.prompt_logprobs is not None:
                        self._post(seq, seq.prompt_logprobs)
                    if seq.params.max_new_tokens <= 0:
                        self._finish(seq, "length")
                        continue
                    if last is None:
                        last_rows.append(hidden[b, n - 1])
                        ready.append(seq)
                    else:
                        logit_rows.append(last)
                        ready_logits.append(seq)
            if ready:
                self._sample(ready, self._logits(torch.stack(last_rows)))
            if ready_logits:
                self._sample(ready_logits, torch.stack(logit_rows))

    def _reuse(self, seqs: list[Sequence]) -> list[Sequence]:
        """Copy cached prompt blocks into the slots of `seqs`; return those to prefill now
        (not those waiting for a block another sequence is computing)."""
        ready = []
        for seq in seqs:
            assert seq.blocks is not None
            if self.prefix.blocked_by(seq.blocks, seq.prefilled, seq) is not None:
                continue
            n = self.prefix.load(seq.blocks, self.cache, seq.slot, seq.prefilled)
            seq.prefilled += n
            seq.length += n
            self.prefix.claim(seq.blocks, seq, seq.prefilled)
            ready.append(seq)
        return ready

    def _prompt_logprobs(self, seq: Sequence, logits: torch.Tensor) -> torch.Tensor:
        """Gather the log probabilities of this chunk's next prompt tokens from `logits`
        [n, vocab] (position j predicts token j + 1); return the last row's logits."""
        top_n = seq.params.prompt_logprobs or 0
        start = seq.prefilled
        targets = seq.prompt_ids[start + 1 : start + 1 + logits.shape[0]]
        if seq.prompt_logprobs is None:
            seq.prompt_logprobs = TokenLogprobs([], [], [], prompt=True)
        if targets:
            gathered = _logprobs(logits[: len(targets)], targets, top_n)
            out = seq.prompt_logprobs
            out.tokens += targets
            out.logprobs += gathered[0]
            out.top += gathered[1]
        return logits[-1]

    def _decode(self) -> None:
        """One token for every running sequence that has one to feed."""
        rows = list(self._running)
        adapters = any(seq.lora is not None for seq in rows)
        fast = self._fast
        if self.limits.deterministic and not (
            fast is not None and fast.batch_invariant(len(rows), adapters)
        ):  # each row on its own, unless one step computes each row as alone
            for seq in rows:
                if seq.next_input is not None:
                    self._decode_rows(seq.slot, [seq])
            return
        self._decode_rows(0, rows)

    def _decode_rows(self, lo: int, seqs: list[Sequence]) -> None:
        """One decode forward over the adjacent slots of `seqs` (from `lo`), with their
        adapters (applied by the fast forward itself, or by the hooks on the HF forward);
        those with a token to feed sample their next one."""
        n = len(seqs)
        ids, pos, cols, active = [0] * n, [0] * n, [self.cache.scratch] * n, []
        for seq in seqs:
            row = seq.slot - lo
            if seq.next_input is not None:
                ids[row] = seq.next_input
                pos[row] = cols[row] = seq.length
                active.append(seq)
            else:  # still prefilling: a padding row that reads what it has
                pos[row] = max(seq.length - 1, 0)
        lora = self._lora(seqs)
        if self._fast is not None:
            device = self.lm.device
            hidden = self._fast.forward(
                lo,
                torch.tensor(ids, device=device),
                torch.tensor(pos, device=device),
                torch.tensor(cols, device=device),
                max(pos) + 1,
                lora,
            )
        else:
            counts = torch.tensor([int(c != self.cache.scratch) for c in cols])
            hidden = self._forward(
                lo,
                lo + n,
                torch.tensor(ids).view(n, 1),
                torch.tensor(pos).view(n, 1),
                counts,
                lora,
            )[:, 0]
        for seq in active:
            seq.length += 1
            seq.next_input = None
        if len(active) < n:
            rows = torch.tensor([seq.slot - lo for seq in active], device=hidden.device)
            hidden = hidden[rows]
        self._sample(active, self._logits(hidden))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self._fast.head(hidden) if self._fast is not None else None
        if logits is None:
            logits = self._head(hidden)
        return logits

    def _lora(self, rows: list[Sequence]) -> LoraStep | None:
        """The adapters of a forward over `rows` (in batch order); None when all are the
        base's. Consecutive decode steps over the same rows share one step object, and
        steps over the same adapters their stacked weights."""
        key = tuple(id(seq.lora) for seq in rows)
        if self._last_step[0] == key:
            return self._last_step[1]
        adapters = sorted({id(s.lora): s.lora for s in rows if s.lora}.values(), key=_by_name)
        step = None
        if adapters:
            ids = tuple(id(a) for a in adapters)
            stack = self._stacks.pop(ids, None) or LoraStack(adapters)
            self._stacks[ids] = stack
            while len(self._stacks) > 4:
                del self._stacks[next(iter(self._stacks))]
            for adapter in adapters:
                self._hooks.ensure(adapter.modules)
            step = LoraBatch([seq.lora for seq in rows], self.lm.device, stack)
        self._last_step = (key, step)
        return step

    def _forward(
        self,
        lo: int,
        hi: int,
        ids: torch.Tensor,
        pos: torch.Tensor,
        counts: torch.Tensor,
        lora: LoraStep | None = None,
    ) -> torch.Tensor:
        """Run rows lo..hi-1 on `ids` [batch, width] at positions `pos` (right-padded: row b
        has `counts[b]` real tokens), with `lora` on the projections of the rows' adapters.
        Returns the last hidden states [batch, width, hidden]."""
        device = self.lm.device
        ids, pos, counts = ids.to(device), pos.to(device), counts.to(device)
        width = ids.shape[1]
        real = torch.arange(width, device=device).unsqueeze(0) < counts.unsqueeze(1)
        write_cols = torch.where(real, pos, torch.full_like(pos, self.cache.scratch))
        read = int(pos.masked_fill(~real, 0).max()) + 1
        keys = torch.arange(read, device=device)
        mask = (keys.view(1, 1, read) <= pos.unsqueeze(-1)).unsqueeze(1)  # [batch, 1, width, read]
        self.cache.prepare(lo, hi, write_cols, read)
        with self._hooks.active(lora):
            out = self._decoder(
                input_ids=ids,
                position_ids=pos,
                attention_mask=mask,  # a 4D mask is used as it is, by every attention layer
                use_cache=True,
                **{self._cache_arg: self.cache},
            )
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        now = time.perf_counter()
        self.recent.tokens(len(seqs), now)
        # Plain greedy rows: one argmax for the batch (exact, so the same token as alone).
        greedy: list[int | None] = [None] * len(seqs)
        plain = [i for i, s in enumerate(seqs) if s.sampler is not None and s.sampler.plain_greedy]
        if plain:
            picked = logits if len(plain) == len(seqs) else logits[torch.tensor(plain)]
            fast = self._fast.argmax(picked) if self._fast is not None else None
            tokens = fast if fast is not None else picked.argmax(dim=-1).tolist()
            for i, token in zip(plain, tokens, strict=True):
                greedy[i] = int(token)
        for seq, row, fixed in zip(seqs, logits, greedy, strict=True):
            assert seq.sampler is not None and seq.text is not None
            token = seq.sampler(row) if fixed is None else fixed
            if not seq.tokens:
                self.recent.ttft_ms.append((now - seq.submitted) * 1000.0)
            seq.tokens.append(token)
            if token in self.lm.stop_token_ids:
                self._finish(seq, "stop")
                continue
            if seq.params.logprobs is not None:
                values, top = _logprobs(row.unsqueeze(0), [token], seq.params.logprobs)
                self._post(seq, TokenLogprobs([token], values, top))
            piece = seq.text.push(token)
            if piece:
                self._post(seq, TextPiece(piece))
            if seq.text.stopped:
                self._finish(seq, "stop")
            elif len(seq.tokens) >= seq.params.max_new_tokens:
                self._finish(seq, "length")
            else:
                seq.next_input = token

    def _finish(self, seq: Sequence, reason: Literal["stop", "length"]) -> None:
        assert seq.text is not None
        piece = seq.text.flush()
        if piece:
            self._post(seq, TextPiece(piece))
        cached = seq.blocks.cached_tokens if seq.blocks is not None else 0
        self._post(
            seq, Finished(reason, len(seq.prompt_ids), len(seq.tokens), seq.queue_ms, cached)
        )
        seq.done = True

    @staticmethod
    def _post(seq: Sequence, item: Posted) -> None:
        if not seq.cancelled and not seq.sink(item):
            seq.cancelled = True


def _by_name(adapter: LoadedAdapter) -> str:
    return adapter.name


def _logprobs(
    logits: torch.Tensor, targets: list[int], top_n: int
) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Each row's log probability of its target token, and its `top_n` most likely tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    index = torch.tensor(targets, device=logp.device).unsqueeze(1)
    values: list[float] = logp.gather(1, index).squeeze(1).tolist()
    if top_n <= 0:
        return values, [[] for _ in targets]
    best = torch.topk(logp, min(top_n, logp.shape[-1]), dim=-1)
    ids: list[list[int]] = best.indices.tolist()
    probs: list[list[float]] = best.values.tolist()
    return values, [list(zip(i, p, strict=True)) for i, p in zip(ids, probs, strict=True)]
