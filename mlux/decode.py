"""The one decoder: every generation path in mlux runs through `Decoder`.

Modelled on mlx-lm's `BatchGenerator` (`insert` / `remove` / `next`): rows join at any step
(prefilled in chunks, as `generate_step` does: `prompt[:-1]` with only the cache state
evaluated, then the last token for logits) and leave when they finish or their client goes.
Each row has its own steering, sampler, seed, `max_tokens` and stop ids. Rows decode in lanes:
one masked batch for architectures that run left-padded batches, one lane per row for those
that can't (`HookedModel.split_batch`), and a lane for a cache the caller lends
(`stream_from_cache`), which is handed back as it was found.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Union

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from .condition_gate import PrefillGate, is_conditional, plain_rows
from .conditions import Decision
from .hooks import Hook, cache_start, normalise_start
from .inputs import RowGroup, to_token_batch
from .model import HookedModel, HookSpec
from .prefill import PREFILL_CHUNK, batched, checkpoint, fill_cache, prefill, restore
from .sampling import Sampler, make_seeded_sampler, sample_rows
from .steering import RowSteering, row_steering_hooks, row_terms, steers_prefix

__all__ = ["Decoder", "Event", "eos_ids"]


class Event(NamedTuple):
    """One row's outcome of a decoding step: a token (None if the row stopped without one) and
    why it finished ("stop", "length", or None while it goes on)."""

    uid: int
    token: Optional[int]
    finish: Optional[str] = None


def eos_ids(tokenizer: Any) -> set[int]:
    ids = getattr(tokenizer, "eos_token_ids", None)
    if ids:
        return {int(i) for i in ids}
    eos = getattr(tokenizer, "eos_token_id", None)
    return {int(eos)} if isinstance(eos, int) else set()


@dataclass
class _Row:
    uid: int
    prompt_length: int
    steering: RowSteering
    sampler: Sampler
    greedy: bool
    max_tokens: int
    stop: frozenset[int]
    produced: int = 0
    decisions: list[Decision] = field(default_factory=list)  # one per term, set by the prefill


@dataclass
class _Lane:
    """Rows decoding on one cache; `y` holds each row's sampled, not yet emitted token."""

    rows: list[_Row]
    cache: list[Any]
    y: mx.array  # (b,)
    hooks: list[tuple[str, Hook]] = field(default_factory=list)
    lent: Optional[tuple[int, list[tuple[int, Any]]]] = None  # (start length, saved layers)
    next_y: Optional[mx.array] = None


class Decoder:
    """Decode rows in batches, each row with its own steering and sampling.

    `hooks` apply to every forward pass (also per-row forms, when all rows run as one batch).
    Use as a context manager, or call `close()`: rows still live are removed and lent caches
    handed back.
    """

    def __init__(self, hooked: HookedModel, *, hooks: Optional[HookSpec] = None,
                 chunk_size: int = PREFILL_CHUNK) -> None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        self.hooked = hooked
        self.chunk_size = chunk_size
        self._hooks = hooked._normalise_hooks(hooks)
        self._lanes: list[_Lane] = []
        self._finished: list[Event] = []  # rows done before decoding (max_tokens == 0)
        self._uids = itertools.count()
        self._unseeded: dict[tuple[float, float], Sampler] = {}  # shared: sampled in one call
        self.steps = 0

    # -- rows in ---------------------------------------------------------------------------
    def _row(self, prompt_length: int, steering: RowSteering, max_tokens: int,
             temperature: float, top_p: float, seed: Optional[int],
             stop: Optional[Sequence[int]]) -> _Row:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"max_tokens must be a non-negative int, got {max_tokens!r}")
        terms = row_terms(steering) + list(self.hooked.ambient_steering)
        sampler = (make_seeded_sampler(temperature, top_p, seed) if seed is not None else
                   self._unseeded.setdefault((temperature, top_p),
                                             make_seeded_sampler(temperature, top_p)))
        return _Row(next(self._uids), prompt_length, terms or None, sampler, temperature == 0,
                    max_tokens,
                    frozenset(eos_ids(self.hooked.tokenizer) if stop is None else stop))

    def insert(
        self,
        prompts: Sequence[Union[str, Sequence[int]]],
        *,
        max_tokens: Union[int, Sequence[int]],
        steering: Optional[Sequence[RowSteering]] = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: Union[None, int, Sequence[Optional[int]]] = None,
        stop: Optional[Sequence[int]] = None,
    ) -> list[int]:
        """Prefill `prompts` and add them as rows; returns their uids. Row i gets `steering[i]`,
        `max_tokens[i]` (or the one int) and seed `seed + i` (or `seed[i]`). Identical prompts
        whose steering leaves `prompt[:-1]` alone share one prefill of it."""
        batch = to_token_batch(self.hooked.tokenizer, list(prompts), self.hooked.vocab_size)
        b = len(batch.lengths)
        limits = [max_tokens] * b if isinstance(max_tokens, int) else list(max_tokens)
        steers = [None] * b if steering is None else list(steering)
        seeds = (list(seed) if isinstance(seed, Sequence) else
                 [None if seed is None else seed + i for i in range(b)])
        if not len(limits) == len(steers) == len(seeds) == b:
            raise ValueError(f"{b} prompts need one max_tokens, steering and seed each; got "
                             f"{len(limits)}, {len(steers)}, {len(seeds)}")
        rows = [self._row(n, s, m, temperature, top_p, sd, stop)
                for n, s, m, sd in zip(batch.lengths, steers, limits, seeds, strict=True)]
        for r in rows:
            if r.max_tokens == 0:
                self._finished.append(Event(r.uid, None, "length"))
        live = [i for i, r in enumerate(rows) if r.max_tokens > 0]
        if not live:
            return [r.uid for r in rows]
        prompt_rows = [batch.tokens[i, batch.left_padding[i]:] for i in live]
        shared = (b > 1 and not self._hooks and batch.lengths[0] > 1
                  and len({tuple(p.tolist()) for p in prompt_rows}) == 1
                  and not any(steers_prefix(rows[i].steering, rows[i].prompt_length)
                              for i in live))
        if shared:
            lanes = self._prefill_shared(prompt_rows[0], [rows[i] for i in live])
        else:
            sub = to_token_batch(None, [p.tolist() for p in prompt_rows])
            lanes = [self._prefill_group(g, [rows[live[j]] for j in g.rows])
                     for g in self.hooked.split_batch(sub, cache=True)]
        for lane in lanes:
            self._add(lane)
        return [r.uid for r in rows]

    def insert_prefilled(self, cache: list[Any], logits: mx.array, *, prompt_length: int,
                         max_tokens: int, steering: RowSteering = None, temperature: float = 0.0,
                         top_p: float = 1.0, seed: Optional[int] = None,
                         stop: Optional[Sequence[int]] = None) -> int:
        """Add one row continuing from a cache the caller prefilled (and its last logits).
        The cache is lent: when the row ends it is trimmed (or restored) to how it was."""
        row = self._row(prompt_length, steering, max_tokens, temperature, top_p, seed, stop)
        if any(is_conditional(t) for t in row_terms(row.steering)):
            raise ValueError("a conditional Steering term is decided from the prompt during the "
                             "decoder's own prefill: insert the prompt (Decoder.insert), not a "
                             "prefilled cache")
        if row.max_tokens == 0:
            self._finished.append(Event(row.uid, None, "length"))
            return row.uid
        lane = _Lane([row], cache, self._sample([row], logits.reshape(1, -1)),
                     lent=(cache_start(cache)[0], checkpoint(cache, max_tokens)))
        lane.hooks = self._row_hooks(lane.rows)
        mx.async_eval(lane.y)
        self._lanes.append(lane)
        return row.uid

    def _row_hooks(self, rows: list[_Row]) -> list[tuple[str, Hook]]:
        return self._hooks + row_steering_hooks(self.hooked, plain_rows([r.steering for r in rows]),
                                                [r.prompt_length for r in rows])

    def decisions(self, uid: int) -> list[Decision]:
        """How a live row's steering terms were decided (one per term; conditional terms from
        its prefill, unconditional ones always fire)."""
        for lane in self._lanes:
            for r in lane.rows:
                if r.uid == uid:
                    return list(r.decisions)
        raise KeyError(f"no live row {uid}")

    def _sample(self, rows: list[_Row], logits: mx.array) -> mx.array:
        y = sample_rows(logits, [r.sampler for r in rows], all(r.greedy for r in rows))
        if self.hooked.sharding is not None:  # rank 0's tokens on every rank, sampled or not
            y = self.hooked.sharding.broadcast(y.astype(mx.int32)).astype(y.dtype)
        return y

    def _prefill_group(self, group: RowGroup, rows: list[_Row],
                       prefix: Optional[dict[int, mx.array]] = None) -> _Lane:
        hooks = self._row_hooks(rows)
        end = normalise_start(group.start)[0] + group.tokens.shape[1]  # past the last column
        gate = PrefillGate.for_rows(self.hooked, [r.steering for r in rows],
                                    [r.prompt_length for r in rows], end, prefix)
        with self.hooked.hooks(hooks + (gate.hooks() if gate else [])):
            logits = prefill(self.hooked, group.tokens, group.cache, self.chunk_size,
                             group.start)
            y = self._sample(rows, logits)
        if gate is not None:  # decided: each row holds its decision from now on
            for r, (steering, decisions) in zip(rows, gate.resolve([r.steering for r in rows]),
                                                strict=True):
                r.steering, r.decisions = steering, decisions
            hooks = self._row_hooks(rows)
        else:
            for r in rows:
                r.decisions = [Decision(True) for _ in row_terms(r.steering)]
        mx.async_eval(y)
        return _Lane(rows, group.cache, y, hooks)

    def _prefill_shared(self, tokens: mx.array, rows: list[_Row]) -> list[_Lane]:
        """One unsteered prefill of `prompt[:-1]`, copied to every row; each row then runs the
        last prompt token with its own steering."""
        prefix = make_prompt_cache(self.hooked.model)
        # conditions sum the shared prefix once (every row's terms on one recording row)
        every = [t for r in rows for t in row_terms(r.steering)]
        record = PrefillGate.for_rows(self.hooked, [every], [tokens.shape[0]], float("inf"))
        with self.hooked.hooks(record.hooks() if record else []):
            fill_cache(self.hooked, tokens[None, :-1], prefix, self.chunk_size)
        sums = record.sums if record else None
        last, n = tokens[None, -1:], tokens.shape[0] - 1
        if self.hooked.supports_padded_batch():
            groups = [RowGroup(list(range(len(rows))), mx.repeat(last, len(rows), axis=0),
                               [type(c).merge([c] * len(rows)) for c in prefix], [n] * len(rows))]
        else:
            groups = [RowGroup([i], last, copy.deepcopy(prefix), n) for i in range(len(rows))]
        return [self._prefill_group(g, [rows[i] for i in g.rows], sums) for g in groups]

    def _add(self, lane: _Lane) -> None:
        """Join the running batch where the architecture runs padded batches (a lone row's
        plain cache becomes a batch cache then); else decode as a lane of its own."""
        main = next((m for m in self._lanes if m.lent is None), None)
        if main is None or not self.hooked.supports_padded_batch():
            self._lanes.append(lane)
            return
        main.cache = batched(main.cache)
        for mine, theirs in zip(main.cache, batched(lane.cache), strict=True):
            mine.extend(theirs)
        main.y = mx.concatenate([main.y, lane.y])
        main.rows.extend(lane.rows)
        main.hooks = self._row_hooks(main.rows)

    # -- rows out --------------------------------------------------------------------------
    def remove(self, uids: Sequence[int]) -> None:
        """Drop rows (e.g. their client left); unknown or finished uids are ignored."""
        gone = set(uids)
        for lane in list(self._lanes):
            self._keep(lane, [i for i, r in enumerate(lane.rows) if r.uid not in gone])

    def _keep(self, lane: _Lane, keep: list[int]) -> None:
        if len(keep) == len(lane.rows):
            return
        if not keep:
            self._lanes.remove(lane)
            if lane.lent is not None:
                restore(lane.cache, *lane.lent)
            return
        index = mx.array(keep)
        for c in lane.cache:
            c.filter(index)
        lane.rows = [lane.rows[i] for i in keep]
        lane.y = lane.y[index]
        if lane.next_y is not None:
            lane.next_y = lane.next_y[index]
        lane.hooks = self._row_hooks(lane.rows)

    def close(self) -> None:
        self.remove([r.uid for lane in self._lanes for r in lane.rows])
        self._finished.clear()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return sum(len(lane.rows) for lane in self._lanes) + len(self._finished)

    # -- decoding --------------------------------------------------------------------------
    def next(self) -> list[Event]:
        """Hand out every live row's pending token and decode one step, the next step queued
        (`mx.async_eval`) before this one's tokens are read, as in mlx-lm's `generate_step`."""
        events, self._finished = self._finished, []
        for lane in self._lanes:
            if any(r.produced + 1 < r.max_tokens for r in lane.rows):
                at = [r.prompt_length + r.produced for r in lane.rows]  # each row's position
                with self.hooked.hooks(lane.hooks):
                    logits = self.hooked.forward_at(lane.y[:, None], lane.cache, at)[:, -1]
                    lane.next_y = self._sample(lane.rows, logits)
                mx.async_eval(lane.next_y)
        for lane in list(self._lanes):
            keep = []
            for i, (row, token) in enumerate(zip(lane.rows, lane.y.tolist(), strict=True)):
                if token in row.stop:
                    events.append(Event(row.uid, None, "stop"))
                    continue
                row.produced += 1
                done = row.produced >= row.max_tokens
                events.append(Event(row.uid, token, "length" if done else None))
                if not done:
                    keep.append(i)
            self._keep(lane, keep)
            if keep:
                lane.y, lane.next_y = lane.next_y, None
        self.steps += 1
        if self.steps % 256 == 0:
            mx.clear_cache()
        return events

    def stream(self) -> Iterator[list[Event]]:
        """`next()` until every row has finished; closing the iterator closes the decoder."""
        try:
            while len(self):
                yield self.next()
        finally:
            self.close()
