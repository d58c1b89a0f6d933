"""The continuous-batching engine: many sequences, one model, one token per step each.

`step(running)` is the whole interface. The kernel's scheduler decides which jobs run and
gives each its KV blocks (llmos.kernel.blocks.BlockManager, which the engine owns and the
scheduler admits by: `Engine.blocks`); the engine makes its set of live sequences match: it
lets go of the ones no longer listed (finished, cancelled or preempted: their computed
blocks stay in the prefix tree, so a preempted job resumes almost for free), admits
newcomers (whatever prefix is cached is in their tables already: shared, not copied), then
runs one decode pass for every sequence that has a token to feed and one chunked prefill
pass for the newcomers, within a token budget so running decodes never stall for long.
Driven without a scheduler (tests, benchmarks), it asks the block manager itself.

A job with `options` is scored rather than generated (the `choose` syscall): its prompt is
prefilled like any other; the logits at the prompt's last token give every option's first
token; then the options of several tokens are fed side by side in one pass of that row,
each seeing the prompt and its own earlier tokens only (a tree: `Batch.trees`), beside
the others' work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llmos.drivers.grammar import Grammars
from llmos.drivers.kv_cache import KVPool
from llmos.drivers.llama import Batch, LlamaRunner, flash_attention_available, runs_on_llama_engine
from llmos.drivers.lora import AdapterError, read_adapter
from llmos.drivers.quant import wanted_quantization
from llmos.drivers.text import IncrementalDecoder, advance
from llmos.kernel import params
from llmos.kernel.blocks import BLOCK, NULL_BLOCK, BlockManager, blocks_for
from llmos.kernel.errors import ConfigError
from llmos.kernel.model import EmitFn, GenerationJob

if TYPE_CHECKING:
    from llmos.drivers.generic import GenericRunner

log = logging.getLogger(__name__)


@dataclass(eq=False)
class JobState:
    """Everything the engine keeps for a job, on `job.driver_state`. The decoder, RNG and
    grammar state and what was streamed live on across preemptions; `computed` (the job's
    own field, which the block manager reads) is set afresh each time it is admitted."""

    job: GenerationJob = field(repr=False)
    decoder: IncrementalDecoder  # its reply's text so far
    generator: torch.Generator | None = None  # its own RNG, when it samples
    matcher: Any = None  # its grammar's state, when its output is constrained
    streamed: int = 0  # characters of job.text already emitted
    kv_serial: int = -1  # the block allocation it runs on (BlockManager.serial)
    pending: list[int] | None = None  # a scored job's options of several tokens, once the prompt is in

    @property
    def computed(self) -> int:
        """Tokens whose K/V are in the job's blocks."""
        return self.job.computed

    @computed.setter
    def computed(self, value: int) -> None:
        self.job.computed = value

    @property
    def tokens(self) -> list[int]:
        return self.job.prompt_ids + self.job.token_ids

    @property
    def to_feed(self) -> int:
        return len(self.job.prompt_ids) + len(self.job.token_ids) - self.computed

    @property
    def decoding(self) -> bool:
        """Whether its next pass is a decode step: one token to feed, past its prompt. A prompt's
        last token alone (the rest found cached) is fed in a prompt pass, as it was computed
        when the prompt was computed whole."""
        return self.to_feed == 1 and self.computed >= len(self.job.prompt_ids)

    @property
    def option_chunk(self) -> list[int] | None:
        """What to feed after the prompt to score the options of several tokens: each one's
        tokens but its last, side by side."""
        if self.pending and self.to_feed == 0:
            return [t for option in self.pending for t in self.job.option_ids[option][:-1]]
        return None

    def option_tree(self, device: str) -> tuple[torch.Tensor, torch.Tensor]:
        """For `option_chunk`: each token's rotary position (right after the prompt, as if its
        option were alone) and which chunk tokens it sees (its option's, up to itself)."""
        spans = [len(self.job.option_ids[option]) - 1 for option in self.pending or ()]
        positions = torch.cat([torch.arange(n, device=device) for n in spans]) + self.computed
        owner = torch.repeat_interleave(torch.arange(len(spans), device=device), torch.tensor(spans, device=device))
        index = torch.arange(len(owner), device=device)
        sees = (owner[:, None] == owner[None, :]) & (index[None, :] <= index[:, None])
        return positions, sees


KV_CACHE_ENV = "LLMOS_KV_CACHE_MB"
# 4 GiB holds 91 SmolLM2-135M agents with 2k-token contexts in bfloat16, 45 in float32
# (bench/kv_budget.py); like vLLM's default KV space on a CPU.
DEFAULT_KV_CACHE_MB = 4096


def kv_cache_mb(configured: int | None) -> int:
    """The KV budget in MiB: as configured, else LLMOS_KV_CACHE_MB, else the default."""
    if configured is not None:
        return configured
    return params.env_number(KV_CACHE_ENV, DEFAULT_KV_CACHE_MB, int, minimum=1, unit=" MiB")


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 64  # sequences decoded together
    prefill_chunk: int = 256  # prompt tokens computed per step, across newcomers
    # KV memory, for running sequences and cached prefixes alike (committed as it is used);
    # None: LLMOS_KV_CACHE_MB, else DEFAULT_KV_CACHE_MB.
    kv_cache_mb: int | None = None
    prefix_caching: bool = True
    # Weight-only quantization of decode steps (drivers/quant.py): "none", "int8", "int4" or
    # "auto" (measured at load); None: as load_model(quant=) or LLMOS_QUANT says, else auto.
    quantization: str | None = None


class Engine:
    def __init__(self, model: object, tokenizer: object, *, eos_ids: frozenset[int], context_length: int,
                 config: EngineConfig, dtype: torch.dtype, device: str) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.context_length = context_length
        self.config = config
        self.device = device
        self.dtype = dtype
        self.runner = self._runner(model, config.quantization or wanted_quantization())
        self.cache = self.runner.cache
        self.blocks = BlockManager(self.cache.blocks, prefix_caching=config.prefix_caching,
                                   block_bytes=self.cache.bytes_per_token() * BLOCK)
        self.grammars = Grammars(tokenizer, model.config.vocab_size, eos_ids)
        self.seqs: dict[int, JobState] = {}  # job id -> the state of each live sequence
        self.steps = self.tokens_out = self.tokens_in = 0  # counters for statistics()

    def _runner(self, model: object, quantization: str) -> LlamaRunner | GenericRunner:
        if runs_on_llama_engine(model):
            return LlamaRunner(model, self._pool, flash=flash_attention_available(self.device), quantization=quantization)
        # Any other causal LM: its own forward over the same KV pool. Imported here, as it imports
        # transformers' cache classes (half a second of a cold start that needs none of it).
        from llmos.drivers.generic import GenericRunner

        return GenericRunner(model, self._pool, quantization=quantization)

    def _pool(self, layers: int, kv_heads: int, head_dim: int, stored: torch.dtype | None = None) -> KVPool:
        """The KV pool the budget holds, K/V `stored` in a dtype of their own (default: the
        model's) and read back in the model's."""
        stored = stored or self.dtype
        megabytes = kv_cache_mb(self.config.kv_cache_mb)
        blocks = KVPool.blocks_in(megabytes * 2**20, layers, kv_heads, head_dim, stored)
        if blocks < 2:
            raise ConfigError(f"a KV budget of {megabytes} MiB holds no KV block of this model "
                              f"({KVPool.block_bytes(layers, kv_heads, head_dim, stored)} bytes each)")
        return KVPool(layers, blocks, kv_heads, head_dim, stored, self.device, read_as=self.dtype)

    # -- LoRA adapters (drivers/lora.py) -----------------------------------------------------------
    def load_adapter(self, name: str, folder: Path) -> None:
        """Serve the PEFT LoRA adapter in `folder` as `name`, beside the base model and the
        adapters loaded before. Call it between steps (on the compute thread). Loading the same
        folder again under its name does nothing; another folder under a loaded name replaces it,
        its cached prefixes forgotten (they were computed with the old weights)."""
        if not isinstance(self.runner, LlamaRunner):  # LoRA patches the llama engine's own projections
            raise AdapterError("LoRA adapters are served on the llama engine only; this model runs on the generic path")
        folder = folder.resolve()
        loaded = self.runner.adapters.adapters.get(name)
        if loaded is not None and loaded.folder == folder:
            return
        if any(s.job.adapter == name for s in self.seqs.values()):
            raise RuntimeError(f"adapter {name!r} is in use by a running sequence: replace it between generations")
        adapter = read_adapter(name, folder, dtype=self.dtype, layers=len(self.runner.layers))
        self.runner.adapters.add(adapter)
        if loaded is not None:
            self.blocks.clear_cache()

    def unload_adapter(self, name: str) -> None:
        if any(s.job.adapter == name for s in self.seqs.values()):
            raise RuntimeError(f"adapter {name!r} is in use by a running sequence")
        self.runner.adapters.remove(name)
        self.blocks.clear_cache()

    def capacity_tokens(self) -> int:
        """Tokens the KV memory holds at most (for one sequence alone)."""
        return (self.blocks.total - 1) * BLOCK

    # -- the step ------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, running: Sequence[GenerationJob], emit: EmitFn) -> None:
        self._sync(running)
        live = list(self.seqs.values())
        for seq in live:  # a scheduler has grown them already; driven directly, the engine asks
            if not self.blocks.grow(seq.job):
                raise RuntimeError(f"KV memory is full ({self.blocks.total - 1} blocks): run fewer sequences")
        self.cache.zero(self.blocks.take_fresh())
        decode = [s for s in live if s.decoding]
        prefill = [s for s in live if not s.decoding]  # prompts (their tails too), and options being scored
        pieces: list[tuple[GenerationJob, str]] = []
        if decode:
            pieces += self._decode(decode)
        if prefill:
            pieces += self._prefill(prefill)
        self.steps += 1
        emit(pieces)
        for seq in [s for s in self.seqs.values() if s.job.finished]:
            self._release(seq)

    def burst(self, running: Sequence[GenerationJob], emit: EmitFn, go_on: Callable[[], bool], max_steps: int) -> int:
        """Steps of the same batch back to back (kernel/model.py BurstingDriver): stops after
        `max_steps`, after a step that ended a job (the kernel must see it leave) or ran none, when
        `go_on()` says no, or when a job's next step finds no free KV block (the kernel's
        scheduler then preempts someone). Returns the steps run, at least one."""
        steps = 0
        while True:
            self.step(running, emit)
            steps += 1
            ended = not running or any(job.finished or job.cancelled for job in running)  # (none: it let go)
            if steps >= max_steps or ended or not go_on():
                return steps
            if not all(self.blocks.grow(job) for job in running):
                return steps

    def _sync(self, running: Sequence[GenerationJob]) -> None:
        wanted = {job.id for job in running if not job.cancelled and not job.finished}
        for seq in [s for s in self.seqs.values() if s.job.id not in wanted]:
            self._release(seq)
        for seq in [s for s in self.seqs.values() if self.blocks.serial(s.job) != s.kv_serial]:
            del self.seqs[seq.job.id]  # preempted and admitted again since the last step: new blocks
        for job in running:
            if job.cancelled:
                job.finish_reason = "cancelled"
            elif job.id not in self.seqs and not job.finished:
                self._admit(job)

    def _admit(self, job: GenerationJob) -> None:
        if len(self.seqs) >= self.config.max_batch:
            raise RuntimeError(f"the engine holds {self.config.max_batch} sequences already")
        if not self.blocks.holds(job) and not self.blocks.allocate(job):
            raise RuntimeError(f"KV memory is full ({self.blocks.total - 1} blocks): run fewer sequences")
        self.init_state(job)
        seq = self.seqs[job.id] = job.driver_state
        # What the prefix tree held is in its table already; `streamed` carries over: text
        # held back for a stop string is still owed.
        seq.computed = self.blocks.cached_tokens(job)
        seq.kv_serial = self.blocks.serial(job)

    def init_state(self, job: GenerationJob) -> None:
        """Give a job its state (decoder, RNG, grammar matcher), once: it lives on across preemptions."""
        if job.driver_state is not None:
            return
        state = JobState(job=job, decoder=IncrementalDecoder(self.tokenizer))
        if job.sampling.temperature > 0:
            state.generator = torch.Generator(device=self.device)
            if job.sampling.seed is None:
                state.generator.seed()  # its own fresh seed; the process's global RNG is left alone
            else:
                state.generator.manual_seed(job.sampling.seed)
        if job.sampling.json_schema is not None:
            state.matcher = self.grammars.json_matcher(job.sampling.json_schema)
        job.driver_state = state

    def _release(self, seq: JobState) -> None:
        if self.blocks.serial(seq.job) == seq.kv_serial:  # else the scheduler released it already
            self.blocks.release(seq.job)
        del self.seqs[seq.job.id]
        if seq.job.finished or seq.job.cancelled:  # for good: drop the job <-> state cycle
            seq.job.driver_state = None

    # -- passes ----------------------------------------------------------------------------------
    def _decode(self, seqs: list[JobState]) -> list[tuple[GenerationJob, str]]:
        tokens = torch.tensor([[s.job.token_ids[-1] if s.job.token_ids else s.job.prompt_ids[-1]] for s in seqs],
                              device=self.device)
        starts = torch.tensor([s.computed for s in seqs], device=self.device)
        logits = self.runner.forward(Batch(tables=self._tables(seqs, [s.computed + 1 for s in seqs]), tokens=tokens,
                                           starts=starts, lengths=torch.ones_like(starts),
                                           adapters=_adapters(seqs)))
        for s in seqs:
            s.computed += 1
        self.tokens_in += len(seqs)
        return self._sample_and_commit(seqs, logits)

    def _tables(self, seqs: list[JobState], ends: list[int]) -> torch.Tensor:
        """The block tables of a pass's rows, (B, W) padded with the null block: W blocks
        cover every row's positions up to its end."""
        width = blocks_for(max(ends))
        rows = [self.blocks.table(s.job)[:width] for s in seqs]
        return torch.tensor([row + [NULL_BLOCK] * (width - len(row)) for row in rows], device=self.device)

    def _prefill(self, seqs: list[JobState]) -> list[tuple[GenerationJob, str]]:
        chunks = self._chunks(seqs)
        width = max(len(c) for _, c in chunks)
        tokens = torch.zeros((len(chunks), width), dtype=torch.long, device=self.device)
        for i, (_, chunk) in enumerate(chunks):
            tokens[i, : len(chunk)] = torch.tensor(chunk)
        starts = torch.tensor([s.computed for s, _ in chunks], device=self.device)
        lengths = torch.tensor([len(c) for _, c in chunks], device=self.device)
        scored = [i for i, (s, _) in enumerate(chunks) if s.option_chunk is not None]
        trees = {i: chunks[i][0].option_tree(self.device) for i in scored}
        ends = [s.computed + len(c) for s, c in chunks]
        tables = self._tables([s for s, _ in chunks], ends)
        # Weights as for the longest prompt computed whole: a prompt's tail after its cached
        # prefix gets the kind (drivers/quant.py row limits) the prompt's own pass had.
        logits, spans = self.runner.forward_spans(Batch(tables=tables, tokens=tokens, starts=starts,
                                                        lengths=lengths, trees=trees, weight_rows=max(ends),
                                                        adapters=_adapters([s for s, _ in chunks])),
                                                  [(i, len(chunks[i][1])) for i in scored])
        self.tokens_in += int(lengths.sum())
        for i, span in zip(scored, spans, strict=True):
            self._score_rest(chunks[i][0], span)
        prompt_rows = [i for i in range(len(chunks)) if i not in scored]
        return self._prompts_in([chunks[i] for i in prompt_rows], logits, prompt_rows)

    def _chunks(self, seqs: list[JobState]) -> list[tuple[JobState, list[int]]]:
        """What each row feeds this pass, contiguous rows from the first, within the budget:
        the next piece of its prompt, or the options it scores."""
        budget, chunks = self.config.prefill_chunk, []
        for s in seqs:
            if budget <= 0:
                break
            chunk = s.option_chunk
            if chunk is None:
                # Blocks another agent computed since this one came (a shared system prompt
                # computed once for agents that arrived together): shared, not recomputed.
                s.computed = self.blocks.adopt(s.job)
                chunk = s.tokens[s.computed: s.computed + min(s.to_feed, budget)]
            chunks.append((s, chunk))
            budget -= len(chunk)
        return chunks

    def _prompts_in(self, chunks: list[tuple[JobState, list[int]]], logits: torch.Tensor,
                    rows: list[int]) -> list[tuple[GenerationJob, str]]:
        """Account prompt chunks fed; the rows whose whole prompt is in take their first token."""
        done = []
        for i, (s, chunk) in zip(rows, chunks, strict=True):
            s.computed += len(chunk)
            self.blocks.publish(s.job)  # its finished blocks, for the others at once
            if s.to_feed == 0:  # the whole prompt is in: its last logits give the first token
                done.append((i, s))
        if not done:
            return []
        return self._sample_and_commit([s for _, s in done], logits[[i for i, _ in done]])

    def _sample_and_commit(self, seqs: list[JobState], logits: torch.Tensor) -> list[tuple[GenerationJob, str]]:
        scored = [i for i, s in enumerate(seqs) if s.job.options is not None]
        for i in scored:
            self._score_first(seqs[i], logits[i])
        if scored:  # the rest sample
            kept = [i for i in range(len(seqs)) if i not in set(scored)]
            if not kept:
                return []
            seqs, logits = [seqs[i] for i in kept], logits[kept]
        for i, s in enumerate(seqs):
            if s.matcher is not None:  # what the grammar forbids cannot be chosen
                logits[i].masked_fill_(~self.grammars.allowed(s.matcher), float("-inf"))
        chosen = logits.argmax(dim=-1)
        for i, s in enumerate(seqs):
            if s.generator is not None:
                chosen[i] = sample_top_p(logits[i], s.job.sampling.temperature, s.job.sampling.top_p, s.generator)
        return [piece for s, token in zip(seqs, chosen.tolist(), strict=True) if (piece := self._commit(s, token))]

    def _commit(self, seq: JobState, token: int) -> tuple[GenerationJob, str] | None:
        """Append a sampled token and apply the stop conditions; return the text to stream."""
        job = seq.job
        if job.cancelled:
            job.finish_reason = "cancelled"
            return None
        eos = token in self.eos_ids
        if not eos:
            job.token_ids.append(token)
            self.tokens_out += 1
        complete = self._grammar_done(seq, token, eos)
        total = len(job.prompt_ids) + len(job.token_ids)
        final = eos or complete or len(job.token_ids) >= job.sampling.max_tokens or total >= self.context_length
        piece, stopped = advance(job, seq.decoder.update(job.token_ids, final), seq.streamed, final)
        seq.streamed += len(piece)
        if eos or stopped or complete:
            job.finish_reason = "stop"
        elif final:
            job.finish_reason = "length"
        return (job, piece) if piece else None

    # -- scoring options ------------------------------------------------------------------------
    def _score_first(self, seq: JobState, logits: torch.Tensor) -> None:
        """The prompt is in: its last logits score every option's first token."""
        if seq.pending is not None:  # scored before a preemption; the prompt was only recomputed
            return
        job = seq.job
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        job.option_logprobs = [[float(logprobs[ids[0]])] for ids in job.option_ids]
        seq.pending = [j for j, ids in enumerate(job.option_ids) if len(ids) > 1]
        self._scored_all(seq)

    def _score_rest(self, seq: JobState, logits: torch.Tensor) -> None:
        """The options' pass: its logits (chunk, vocab) score each option's tokens after the first."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        at = 0
        for option in seq.pending or ():
            ids = seq.job.option_ids[option]
            seq.job.option_logprobs[option] += logprobs[torch.arange(at, at + len(ids) - 1), ids[1:]].tolist()
            at += len(ids) - 1
        seq.pending = []
        self._scored_all(seq)

    @staticmethod
    def _scored_all(seq: JobState) -> None:
        if seq.job.cancelled:
            seq.job.finish_reason = "cancelled"
        elif not seq.pending:
            seq.job.finish_reason = "stop"

    @staticmethod
    def _grammar_done(seq: JobState, token: int, eos: bool) -> bool:
        """Feed the token to the sequence's grammar; True once the grammar is complete."""
        matcher = seq.matcher
        if matcher is None or eos:
            return False
        if not matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused a token it allowed: {matcher.get_error()}")
        return matcher.is_stopped()

    def statistics(self) -> dict[str, int]:
        return {"sequences": len(self.seqs), "steps": self.steps, "tokens_computed": self.tokens_in,
                "tokens_generated": self.tokens_out, "kv_bytes_per_token": self.cache.bytes_per_token(),
                **self.blocks.statistics()}


def _adapters(seqs: Sequence[JobState]) -> tuple[str | None, ...]:
    """Each row's adapter, or () when every row runs the base model (the pass skips LoRA)."""
    names = tuple(s.job.adapter for s in seqs)
    return names if any(names) else ()


def sample_top_p(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Sample from softmax(logits / temperature) restricted to the smallest set of tokens
    whose probability reaches `top_p` (nucleus sampling)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # tokens past the nucleus
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())
