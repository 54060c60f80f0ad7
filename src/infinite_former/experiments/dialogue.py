"""``infinite-former dialogue train | eval | chat``: document-grounded dialogue (PAPER §5, CMU-DoG).

- ``train``: GPT-2 + long-term memory (``hf/``) on dialogue examples (``data/dialogue.py``): per
  reply, the document and the history are cut into blocks of L tokens from the end and read in
  order with the memory reset at the example's start; every block but the reply's runs without
  gradients (its states go into the memory), the reply's block back-propagates the loss on the
  reply. One optimizer step per example (batch 1 per process: blocks are unpadded). AdamW,
  GPT-2's weights at ``--lr`` (5e-5), the memory weights at ``--ltm-lr`` (2.5e-4), 3 epochs, KL
  on; the project's Trainer (checkpoints, ``--resume``, logs). ``--no-memory`` trains the same
  model without memory on the same examples: it sees only the reply's block. ``--training-free
  DENSITY:ALPHA`` (with ``--model``) gives the pretrained GPT-2 the memory of
  ``hf/training_free.py``, read through each layer's own attention: no memory weight exists, so
  fine-tuning trains GPT-2's weights only (at ``--lr``), on the same blocks as the memory models.
- ``eval``: per reply, seeded nucleus sampling (top-p 0.9, at most 50 new tokens), F1, ROUGE-1,
  ROUGE-L, METEOR (``metrics.py``) and reply perplexity (teacher-forced), overall and per dialogue.
- ``chat``: reads a document file into the memory, then answers each line of stdin, keeping the
  memory (document and conversation so far) across turns.

Run folder: ``tokenizer/``, ``dialogue_config.json``, ``checkpoints/``, ``train_log.csv``,
``tb/``, ``model/`` (Hugging Face format, with the tokenizer), ``results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.dialogue import (
    Dialogue,
    DialogueExample,
    DialogueExamples,
    SpecialIds,
    add_dialogue_tokens,
    build_examples,
    load_dialogues,
    prompt_blocks,
    select_turns,
)
from ..data.segments import Segment
from ..data.text import read_text_file
from ..data.tokenizer import TextTokenizer, build_tokenizer, gpt2_tokenizer
from ..hf import InfiniteGPT2Config, InfiniteGPT2LMHeadModel, MemoryStream, add_memory
from ..hf.causal_lm import build_memory, install_memory, memory_settings_of
from ..hf.memory import HFMemoryState
from ..hf.training import HFMemoryLM, load_memory_model
from ..hf.training_free import TrainingFreeConfig
from ..training import Trainer
from ..training.checkpoints import check_resume, exit_status
from ..utils import check_output_path, machine_info, seed_everything, write_json
from .flags import (
    PRECISION_FLAG,
    Flag,
    add_flags,
    check_precision,
    eval_precision,
    flat_memory,
    memory_flags,
    overrides,
    resolve_device,
    set_threads,
)
from .runs import (
    TRAIN_FLAGS,
    RunSettings,
    add_run_args,
    check_steps_or_epochs,
    defaults_of,
    settings_from_args,
)

CONFIG_FILE = "dialogue_config.json"

# ------------------------------------------------------------------------------------------ model


@dataclass
class DialogueState:
    """The memory between the blocks of dialogue examples (the Trainer's recurrent state). Blocks
    may be shorter than L (they are cut from the end), so the pending block is absorbed when the
    next block starts, and a reset of every row empties the memory wherever the block stands."""

    memory: HFMemoryState

    def reset(self, rows: Tensor) -> DialogueState:
        if not bool(rows.any()):
            return self
        if bool(rows.all()):
            return DialogueState(self.memory.reset())
        return DialogueState(self.memory.reset(rows))  # several rows: needs a block boundary

    def detach(self) -> DialogueState:
        return DialogueState(self.memory.detach())

    def to(self, device: torch.device | str) -> DialogueState:
        return DialogueState(self.memory.to(device))

    def state_dict(self) -> dict[str, Any]:
        return self.memory.state_dict()

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> DialogueState:
        return cls(HFMemoryState.from_state_dict(d))


class DialogueLM(HFMemoryLM):
    """``HFMemoryLM`` where every call is one block: a pending (possibly short) block is first
    absorbed into the long-term memory, then the call's tokens start a new block."""

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> DialogueState:
        return DialogueState(self.hf.init_memory(batch_size, device))

    def forward(
        self,
        tokens: Tensor,
        state: DialogueState | None = None,
        targets: Tensor | None = None,
        loss_mask: Tensor | None = None,
    ) -> tuple[Any, DialogueState]:
        memory = None if state is None else state.memory
        if memory is not None and memory.position > 0:
            memory = self.hf.absorb_blocks(memory, partial=True)
        out, memory = super().forward(tokens, memory, targets, loss_mask)
        return out, DialogueState(memory)


def uses_memory(model: nn.Module) -> bool:
    """False for the baseline (``--no-memory``: no LTM layers), which reads only the reply's block."""
    return len(model.ltm) > 0


def read_blocks(model: nn.Module, blocks: Sequence[Sequence[int]], device: torch.device) -> HFMemoryState:
    """A fresh memory after reading ``blocks`` (the context before the reply's block), each absorbed
    into the long-term memory when it ends, as in training."""
    memory = model.init_memory(1, device)
    for blk in blocks:
        ids = torch.tensor([list(blk)], dtype=torch.long, device=device)
        memory = model.absorb_blocks(model(ids, memory=memory, logits_to_keep=1).memory, partial=True)
    return memory


# ----------------------------------------------------------------------------------------- stream


class ExampleStream:
    """Dialogue examples as the Trainer's segments (batch 1 per process): each example's blocks in
    order, reset on its first block, ``train`` only on the reply's block. A model without memory
    gets only the reply's block. Examples are shuffled per epoch (seeded); resumable."""

    def __init__(
        self, examples: Sequence[DialogueExample], memory: bool, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        if not examples:
            raise ValueError("examples: no dialogue examples to train on")
        self.examples, self.memory, self.seed = examples, memory, seed
        self.rank, self.world = rank, world
        self.epoch, self.index = 0, 0  # the next example to yield: order(epoch)[index * world + rank]

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def __iter__(self) -> Iterator[Segment]:
        per_epoch = len(self.examples) // self.world
        if per_epoch == 0:
            raise ValueError(f"examples: {len(self.examples)} examples for {self.world} processes")
        while True:
            order = self._order(self.epoch)
            while self.index < per_epoch:
                ex = self.examples[order[self.index * self.world + self.rank]]
                self.index += 1
                blocks = ex.blocks if self.memory else ex.blocks[-1:]
                for i, (tok, tgt, mask) in enumerate(blocks):
                    yield Segment(
                        torch.tensor([tok]),
                        torch.tensor([tgt]),
                        torch.tensor([mask]),
                        torch.tensor([i == 0]),
                        train=i == len(blocks) - 1,
                    )
            self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


# ------------------------------------------------------------------------------------- evaluation


def _decode_reply(tokenizer: TextTokenizer, new_ids: Sequence[int], ids: SpecialIds) -> str:
    out = []
    for t in new_ids:
        if t == ids.eos:
            break
        out.append(int(t))
    special = {*vars(ids).values(), tokenizer.eos_id}
    return tokenizer.decode([t for t in out if t not in special]).strip()


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Torch's RNG seeded with ``seed`` inside, the caller's restored after (None: the caller's RNG).
    Sticky memories draw their sample positions from it, sampling its tokens."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def reply_nll(
    model: nn.Module, example: DialogueExample, device: torch.device, seed: int | None = None
) -> tuple[float, int]:
    """(summed NLL in nats, tokens) of the reply and its <eos>, teacher-forced, memory as in training;
    ``seed``: the RNG of the sticky memory's draws (the caller's RNG is untouched)."""
    blocks = example.blocks if uses_memory(model) else example.blocks[-1:]
    with _seeded(seed, device):
        memory = read_blocks(model, [b[0] for b in blocks[:-1]], device)
        tok, tgt, mask = (torch.tensor([x], device=device) for x in blocks[-1])
        logits = model(tok, memory=memory).logits
    nll = F.cross_entropy(logits.float().transpose(1, 2), tgt, reduction="none")
    return float((nll * mask).sum()), int(mask.sum())


@torch.no_grad()
def generate_reply(
    model: nn.Module,
    dialogue: Dialogue,
    turn: int,
    tokenizer: TextTokenizer,
    seed: int,
    top_p: float = 0.9,
    max_new_tokens: int = 50,
    device: torch.device | str = "cpu",
    cache: dict | None = None,
) -> str:
    """Sample reply ``turn`` of ``dialogue`` (nucleus sampling and the sticky memory's draws seeded;
    the caller's RNG is untouched)."""
    device = torch.device(device)
    ids = SpecialIds.of(tokenizer)
    block = model.memory_config.block_size
    blocks = prompt_blocks(dialogue, turn, tokenizer, block, max_new_tokens, cache)
    prompt = torch.tensor([blocks[-1]], dtype=torch.long, device=device)
    with _seeded(seed, device):
        memory = read_blocks(model, blocks[:-1], device) if uses_memory(model) else None
        out = model.generate(
            prompt,
            memory=memory,
            do_sample=True,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
            eos_token_id=ids.eos,
            pad_token_id=ids.pad,
        )
    return _decode_reply(tokenizer, out[0, prompt.shape[1] :].tolist(), ids)


def evaluate_dialogues(
    model: nn.Module,
    tokenizer: TextTokenizer,
    dialogues: Sequence[Dialogue],
    max_replies: int = 0,
    seed: int = 0,
    top_p: float = 0.9,
    max_new_tokens: int = 50,
    device: torch.device | str = "cpu",
    log: Any = None,
) -> dict[str, Any]:
    """Generate and score every reply (or ``max_replies`` per dialogue, evenly spaced).

    Returns {"overall": {f1, rouge1, rougeL, meteor, reply_ppl, replies}, "per_dialogue": [...],
    "replies": [{dialogue, turn, prediction, reference, nll, tokens}]}. Reply i of the split is
    sampled, and its memory read, with seed ``seed`` · 1,000,003 + i, the same for every model
    (paired comparisons; a sticky memory's draws are then the same at every evaluation).
    """
    from ..metrics import per_example_scores

    device = torch.device(device)
    was_training = model.training
    model.eval()
    block = model.memory_config.block_size
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        for d, dialogue in enumerate(dialogues):
            cache: dict = {}
            turns = select_turns(len(dialogue.turns), max_replies)
            examples = build_examples([dialogue], tokenizer, block, max_replies)
            for turn, ex in zip(turns, examples):
                reply_seed = seed * 1_000_003 + len(rows)
                nll, n = reply_nll(model, ex, device, reply_seed)
                pred = generate_reply(
                    model,
                    dialogue,
                    turn,
                    tokenizer,
                    reply_seed,
                    top_p,
                    max_new_tokens,
                    device,
                    cache,
                )
                rows.append(
                    {
                        "dialogue": d,
                        "turn": turn,
                        "prediction": pred,
                        "reference": ex.reply,
                        "nll": nll,
                        "tokens": n,
                    }
                )
            if log is not None:
                log(
                    f"dialogue {d + 1}/{len(dialogues)}: {len(rows)} replies, {time.perf_counter() - t0:.0f} s"
                )
    finally:
        model.train(was_training)
    if not rows:
        raise ValueError("dialogues: no replies to evaluate (every dialogue needs at least two turns)")
    scores = per_example_scores([r["prediction"] for r in rows], [r["reference"] for r in rows])
    for k, values in scores.items():
        for r, v in zip(rows, values or [None] * len(rows)):
            r[k] = v

    def summary(group: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in ("f1", "rouge1", "rougeL", "meteor"):
            vals = [r[k] for r in group]
            out[k] = None if vals[0] is None else sum(vals) / len(vals)
        out["reply_ppl"] = math.exp(sum(r["nll"] for r in group) / max(sum(r["tokens"] for r in group), 1))
        out["replies"] = len(group)
        return out

    per_dialogue = []
    for d, dialogue in enumerate(dialogues):
        group = [r for r in rows if r["dialogue"] == d]
        if group:
            per_dialogue.append({"dialogue": d, "name": dialogue.name, **summary(group)})
    return {
        "overall": summary(rows),
        "per_dialogue": per_dialogue,
        "replies": rows,
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------------ build


def dialogue_tokenizer(args: DialogueTrainSettings, train: Sequence[Dialogue]) -> TextTokenizer:
    """GPT-2's tokenizer (``--model``) or, from scratch, a BPE trained on the training dialogues;
    plus the dialogue special tokens."""
    if args.model:
        tok = gpt2_tokenizer(args.model, local_files_only=not args.allow_download)
    else:
        texts = (t for d in train for t in (d.document, *(x.text for x in d.turns)))
        tok = build_tokenizer("bpe", texts, vocab_size=args.vocab_size)
    return add_dialogue_tokens(tok)


# flag -> InfiniteGPT2Config field: the size of a GPT-2 trained from scratch (no --model)
SCRATCH_FLAGS: list[Flag] = [
    Flag("--n-layer", "n_layer", int, "from scratch: layers"),
    Flag("--n-embd", "n_embd", int, "from scratch: width"),
    Flag("--n-head", "n_head", int, "from scratch: heads"),
]


def check_sampling(top_p: float, max_new_tokens: int) -> None:
    """Nucleus sampling's settings (--top-p in (0, 1], --max-new-tokens >= 1)."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")


@dataclass(frozen=True)
class DialogueTrainSettings(RunSettings):
    """``dialogue train``: GPT-2 (``model``: folder or hub name; None: from scratch, of size n_layer /
    n_embd / n_head) + memory on dialogue examples. ``ltm``: the memory's settings (default: the
    model's, or the Hugging Face preset); ``uniform``: sticky off; ``no_memory``: no memory layers;
    ``training_free``: "DENSITY[:ALPHA | :softmax]" (gibbs | gaussian, α in [0, 1]; "gibbs" alone:
    α = 0.5; ":softmax": one softmax with the block's attention), a
    memory without weights read through the pretrained attention (``--model`` only); ``steps`` 0: from ``epochs``; ``lr``: GPT-2's weights, ``ltm_lr``: the memory's; max_replies /
    max_eval_replies / max_document_chars 0: all."""

    run_dir: str = "runs/dialogue"
    eval_splits: tuple[str, ...] = ("test",)
    batch_size: int = 1
    steps: int = 0
    warmup: int = 0
    log_every: int = 50
    lr: float = 5e-5
    clip: float = 1.0
    model: str | None = None
    allow_download: bool = False
    epochs: float = 3.0
    ltm_lr: float = 2.5e-4
    block_size: int = 512
    ltm: dict[str, Any] = field(default_factory=dict)
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    uniform: bool = False
    no_memory: bool = False
    training_free: str | None = None
    max_replies: int = 0
    max_eval_replies: int = 0
    max_document_chars: int = 0
    vocab_size: int = 4096
    top_p: float = 0.9
    max_new_tokens: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sampling(self.top_p, self.max_new_tokens)
        check_steps_or_epochs(self.steps, self.epochs)
        if self.training_free is not None:
            if self.no_memory:
                raise ValueError("--training-free and --no-memory exclude each other")
            if not self.model:
                raise ValueError(
                    "--training-free reads the memory through pretrained attention weights: give --model"
                )
            self.free()  # a bad DENSITY:ALPHA fails here

    def free(self) -> TrainingFreeConfig | None:
        """``training_free`` ("DENSITY[:ALPHA | :softmax]") as add_memory's TrainingFreeConfig (None: off)."""
        if self.training_free is None:
            return None
        try:
            return TrainingFreeConfig.parse(self.training_free)
        except ValueError as e:
            raise ValueError(f"--training-free {self.training_free!r}: {e}") from None

    def memory(self) -> dict[str, Any]:
        """add_memory's keywords: block size, memory settings, ``uniform`` and ``no_memory``."""
        out = flat_memory({"block_size": self.block_size, "ltm": dict(self.ltm)})
        if self.uniform:
            out["sticky"] = False
        if self.no_memory:
            out["memory_layers"] = []
        return out


@dataclass(frozen=True)
class DialogueEvalSettings:
    """``dialogue eval``: a ``dialogue train`` run (``run``) on a split; data / max_document_chars
    None: the run's."""

    run: str
    data: str | None = None
    split: str = "test"
    max_document_chars: int | None = None
    max_replies: int = 0
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    threads: int = 0
    top_p: float = 0.9
    max_new_tokens: int = 50
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_sampling(self.top_p, self.max_new_tokens)
        check_output_path(self.out, "--out", folder=False)


@dataclass(frozen=True)
class DialogueChatSettings:
    """``dialogue chat``: read ``document`` into a trained run's memory, then answer stdin."""

    run: str
    document: str
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    top_p: float = 0.9
    max_new_tokens: int = 50

    def __post_init__(self) -> None:
        check_sampling(self.top_p, self.max_new_tokens)


def _check_gpt2_folder(path: str, local_files_only: bool, training_free: bool = False) -> None:
    """dialogue train fine-tunes GPT-2 (InfiniteGPT2): another model family is a clear error; a
    training-free memory goes onto a plain GPT-2 (a folder with a memory already is refused)."""
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(path, local_files_only=local_files_only).model_type
    except OSError as e:
        raise ValueError(f"--model: cannot read a model config from {path!r}: {e}") from None
    if model_type not in ("gpt2", InfiniteGPT2Config.model_type):
        raise ValueError(
            f"--model: dialogue train fine-tunes GPT-2 models; {path!r} is a {model_type!r} model "
            "(use a GPT-2 folder, or omit --model to train from scratch)"
        )
    if training_free and model_type != "gpt2":
        raise ValueError(
            f"--training-free: {path!r} is a {model_type!r} model that has a memory already; "
            "give a plain GPT-2 folder"
        )


def build_model(args: DialogueTrainSettings, tok: TextTokenizer) -> nn.Module:
    """GPT-2 (``--model``: a folder or hub name) or a from-scratch GPT-2 of the given size, with memory."""
    memory = args.memory()
    ids = SpecialIds.of(tok)
    if args.training_free is not None:
        from transformers import GPT2LMHeadModel

        plain = GPT2LMHeadModel.from_pretrained(args.model, local_files_only=not args.allow_download)
        model = add_memory(plain, training_free=args.free(), **memory)
    elif args.model:
        model = load_memory_model(args.model, memory, not args.allow_download)
    else:
        config = InfiniteGPT2Config(
            vocab_size=tok.vocab_size,
            n_positions=args.block_size,
            bos_token_id=ids.bos,
            eos_token_id=ids.eos,
            **overrides(args, SCRATCH_FLAGS),
            **memory,
        )
        model = InfiniteGPT2LMHeadModel(config)
    if model.memory_config.block_size > model.config.n_positions:
        raise ValueError(
            f"--block-size {model.memory_config.block_size} > the model's n_positions {model.config.n_positions}"
        )
    model.resize_token_embeddings(tok.vocab_size)
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = (
        ids.bos,
        ids.eos,
        ids.pad,
    )
    return model


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """The (untrained) model of a run's saved config, for ``--resume`` to load its checkpoint into:
    an InfiniteGPT2, or a GPT-2 with the memory its ``infinite_memory`` names (training-free)."""
    if config.get("model_type") == InfiniteGPT2Config.model_type:
        return InfiniteGPT2LMHeadModel(InfiniteGPT2Config.from_dict(config))  # 0.2 runs converted
    from transformers import GPT2Config, GPT2LMHeadModel

    where = f"{CONFIG_FILE}: model.infinite_memory"
    memory, free = memory_settings_of(config.get("infinite_memory"), where)
    model = GPT2LMHeadModel(GPT2Config.from_dict({k: v for k, v in config.items() if k != "infinite_memory"}))
    install_memory(model, *build_memory(model, memory, free), free)
    return model


def memory_settings(model: nn.Module) -> dict[str, Any]:
    """A model's fields and its memory's settings, flat as ``DialogueTrainSettings.memory()`` names
    them, plus ``training_free`` (None or {density, alpha})."""
    free = model.training_free
    mc = model.memory_config
    return {
        **model.config.to_dict(),
        "block_size": mc.block_size,
        "memory_layers": mc.memory_layers,
        **mc.ltm.settings(),
        "training_free": None if free is None else free.to_dict(),
    }


def _split(data: str, split: str, max_document_chars: int) -> list[Dialogue]:
    return load_dialogues(data, split, max_document_chars)


# ------------------------------------------------------------------------------------------ train


def dialogue_train(args: DialogueTrainSettings) -> dict[str, Any]:
    """Train (or fine-tune) on dialogue examples, save ``<run>/model``, then evaluate."""
    changes = args.changes()
    args = args.with_changes(changes, TRAIN_FLAGS)
    run = Path(args.run_dir)
    # numeric settings before any data is read (steps from epochs is known only after reading it)
    args.train_config(TRAIN_FLAGS, steps=args.steps or max(args.warmup, 1))
    if args.model:
        _check_gpt2_folder(args.model, not args.allow_download, args.training_free is not None)
    saved = model = None
    if args.resume:
        if not (run / CONFIG_FILE).is_file():
            raise ValueError(f"--resume: {str(run)!r} holds no {CONFIG_FILE} (no `dialogue train` run)")
        saved = json.loads((run / CONFIG_FILE).read_text())
        free = args.free()
        fixed = {
            **args.memory(),
            **(overrides(args, SCRATCH_FLAGS) if not args.model else {}),
            "training_free": None if free is None else free.to_dict(),
        }
        model = model_from_config(saved["model"])  # its weights: from the checkpoint
        given = memory_settings(model)
        check_resume(run, {k: given.get(k) for k in fixed}, fixed, changes)  # memory, model: fixed
    train = _split(args.data, args.train_split, args.max_document_chars)
    for split in args.splits_to_evaluate:
        _split(args.data, split, args.max_document_chars)  # every split is read (and checked) before training
    if saved is not None:
        tok = TextTokenizer.load(run / "tokenizer")
    else:
        tok = dialogue_tokenizer(args, train)
        seed_everything(args.seed)
        model = build_model(args, tok)
    block = model.memory_config.block_size
    examples = DialogueExamples(train, tok, block, args.max_replies)
    steps = args.steps or max(1, math.ceil(args.epochs * len(examples)))
    # warmup longer than training is refused, as in lm train
    tcfg = args.train_config(TRAIN_FLAGS, steps=steps, warmup_steps=args.warmup)
    memory = uses_memory(model)
    settings = {
        "task": "dialogue",
        "base_model": args.model or "scratch",
        "model": model.config.to_dict(),
        "train": tcfg.to_dict(),
        "ltm_lr": args.ltm_lr,
        "data": {
            "source": str(args.data),
            "train_split": args.train_split,
            "max_document_chars": args.max_document_chars,
            "examples": len(examples),
        },
    }
    if saved is not None:
        check_resume(run, {k: v for k, v in saved.items() if k != "model"}, settings | {"model": {}}, changes)
        settings["model"] = saved["model"]
    else:
        tok.save(run / "tokenizer")
    write_json(run / CONFIG_FILE, settings)

    def groups(m: nn.Module) -> list[dict[str, Any]]:
        out = [{"params": m.hf.base_parameters(), "lr": args.lr}]
        if m.hf.memory_parameters():  # (a training-free memory has none)
            out.append({"params": m.hf.memory_parameters(), "lr": args.ltm_lr})
        return out

    def stream(shard: Any) -> ExampleStream:
        if shard.batch_size != 1:
            raise ValueError(
                f"--batch-size must be the number of processes (1 example each), got {tcfg.batch_size}"
            )
        return ExampleStream(examples, memory, seed=args.seed, rank=shard.rank, world=shard.world_size)

    wrapped = DialogueLM(model)
    trainer = Trainer(wrapped, tcfg, stream, param_groups=groups, model_config=model.config.to_dict())
    result = trainer.fit(resume=bool(args.resume))
    model.save_pretrained(run / "model")
    tok.save(run / "model")
    out: dict[str, Any] = {
        "machine": machine_info(),
        "base_model": args.model or "scratch",
        "memory": memory,
        "sticky": bool(model.memory_config.ltm.sticky) if memory else None,
        "training_free": None if model.training_free is None else model.training_free.to_dict(),
        "block_size": block,
        "parameters": sum(p.numel() for p in model.parameters()),
        "examples": len(examples),
        **result.summary(),
        "epochs": result.step / len(examples),
        "eval": {},
    }
    if not result.stopped_by_signal:
        device = resolve_device(args.device)
        model.to(device)
        for split in args.splits_to_evaluate:
            res = evaluate_dialogues(
                model,
                tok,
                _split(args.data, split, args.max_document_chars),
                args.max_eval_replies,
                args.seed,
                args.top_p,
                args.max_new_tokens,
                device,
            )
            out["eval"][split] = res
            print(_summary_line(split, res["overall"]))
    write_json(run / "results.json", out)
    return out


def _summary_line(name: str, o: dict[str, Any]) -> str:
    meteor = "n/a" if o["meteor"] is None else f"{o['meteor']:.2f}"
    return (
        f"{name:<8} F1 {o['f1']:.2f}  ROUGE-1 {o['rouge1']:.2f}  ROUGE-L {o['rougeL']:.2f}  "
        f"METEOR {meteor}  reply ppl {o['reply_ppl']:.2f}  ({o['replies']} replies)"
    )


# ------------------------------------------------------------------------------------- eval / chat


def load_dialogue_model(path: str | Path, device: torch.device) -> tuple[nn.Module, TextTokenizer]:
    """A ``dialogue train`` run folder (its model/) or a model folder, with its tokenizer."""
    p = Path(path)
    if (p / "model").is_dir():
        p = p / "model"
    if not (p / "config.json").is_file():
        raise ValueError(f"--run: {str(path)!r} holds no model (expected a `dialogue train` run folder)")
    tok = TextTokenizer.load(p)
    SpecialIds.of(tok)
    model = load_memory_model(str(p), {}, True).to(device).eval()
    return model, tok


def dialogue_eval(args: DialogueEvalSettings) -> dict[str, Any]:
    """Sample replies of a trained run on a split; F1, ROUGE, METEOR and reply perplexity, in
    ``args.precision`` (the results record the resolved one)."""
    with eval_precision(args.precision, args.device) as precision:
        return _dialogue_eval(dataclasses.replace(args, precision=precision))


def _dialogue_eval(args: DialogueEvalSettings) -> dict[str, Any]:
    device = resolve_device(args.device)
    model, tok = load_dialogue_model(args.run, device)
    source, max_chars = args.data, args.max_document_chars
    if source is None or max_chars is None:  # the run's
        config = Path(args.run) / CONFIG_FILE
        if not config.is_file():
            raise ValueError(
                f"--run: {str(args.run)!r} has no {CONFIG_FILE}: give --data and --max-document-chars"
            )
        saved = json.loads(config.read_text())["data"]
        source = source or saved["source"]
        if max_chars is None:
            max_chars = saved.get("max_document_chars", 0)
    res = evaluate_dialogues(
        model,
        tok,
        _split(source, args.split, max_chars),
        args.max_replies,
        args.seed,
        args.top_p,
        args.max_new_tokens,
        device,
    )
    print(_summary_line(args.split, res["overall"]))
    out = {
        "machine": machine_info(precision=args.precision),
        "run": str(args.run),
        "data": str(source),
        "split": args.split,
        **res,
    }
    write_json(args.out or Path(args.run) / f"eval_{args.split}.json", out)
    return out


def chat(
    model: nn.Module,
    tok: TextTokenizer,
    document: str,
    lines: TextIO,
    out: TextIO,
    seed: int = 0,
    top_p: float = 0.9,
    max_new_tokens: int = 50,
) -> Any:
    """Read ``document`` into the memory, then answer each line of ``lines`` (until EOF or an empty
    line) on ``out``; the memory keeps the document and every turn. Returns the stream."""
    ids = SpecialIds.of(tok)
    stream = MemoryStream(model)
    stream.read([ids.bos, ids.doc, *tok.encode(document)])
    torch.manual_seed(seed)
    for line in lines:
        text = line.strip()
        if not text:
            break
        new = stream.generate(
            [ids.speaker1, *tok.encode(text), ids.speaker2],
            max_new_tokens=max_new_tokens,
            do_sample=True,
            top_p=top_p,
            top_k=0,
            eos_token_id=ids.eos,
            pad_token_id=ids.pad,
        )[0].tolist()
        if new and new[-1] == ids.eos:
            stream.last = None  # as in training, the next turn follows the reply without <eos>
        print(" ".join(_decode_reply(tok, new, ids).split()), file=out, flush=True)  # one line per reply
    return stream


def dialogue_chat(args: DialogueChatSettings) -> dict[str, Any]:
    device = resolve_device(args.device)
    model, tok = load_dialogue_model(args.run, device)
    document = read_text_file(args.document)
    # any bytes on stdin: read as UTF-8, an invalid byte becomes U+FFFD (said once, on stderr)
    raw = getattr(sys.stdin, "buffer", None)
    lines = io.TextIOWrapper(raw, encoding="utf-8", errors="replace") if raw is not None else sys.stdin
    print("dialogue chat: reading stdin as UTF-8 (invalid bytes become U+FFFD)", file=sys.stderr)
    stream = chat(
        model,
        tok,
        document,
        lines,
        sys.stdout,
        args.seed,
        args.top_p,
        args.max_new_tokens,
    )
    return {"tokens": stream.num_tokens}


# -------------------------------------------------------------------------------------------- CLI


def add_dialogue_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``dialogue train | eval | chat``."""
    p = subparsers.add_parser("dialogue", help="document-grounded dialogue (CMU-DoG): GPT-2 + memory")
    sub = p.add_subparsers(dest="dialogue_command", required=True)

    t = sub.add_parser("train", help="train GPT-2 + memory on dialogues, then evaluate")
    add_run_args(t)
    t.add_argument("--model", help="GPT-2 folder or hub name (default: from scratch, see --n-layer)")
    t.add_argument("--allow-download", action="store_true", help="allow downloading --model from the hub")
    t.add_argument("--epochs", type=float, help="used when --steps is 0")
    t.add_argument("--ltm-lr", type=float, help="learning rate of the memory weights")
    t.add_argument("--block-size", type=int, help="L: tokens per block")
    add_flags(t, memory_flags())  # default: the model's memory settings, or the Hugging Face preset
    add_flags(t, SCRATCH_FLAGS)
    t.add_argument("--uniform", action="store_true", help="the same as --sampling uniform")
    t.add_argument(
        "--no-memory", action="store_true", help="the same model without memory (reply's block only)"
    )
    t.add_argument(
        "--training-free",
        metavar="DENSITY:ALPHA",
        help="with --model: a memory without weights, read through GPT-2's own attention (e.g. gibbs:0.5)",
    )
    t.add_argument("--max-replies", type=int, help="training replies per dialogue (0 = all)")
    t.add_argument("--max-eval-replies", type=int, help="evaluated replies per dialogue (0 = all)")
    t.add_argument("--max-document-chars", type=int, help="keep each document's last N chars (0 = all)")
    t.add_argument("--vocab-size", type=int, help="from scratch: BPE vocabulary")
    _sampling_args(t)
    t.set_defaults(**defaults_of(DialogueTrainSettings), dialogue_settings=DialogueTrainSettings)
    t.set_defaults(dialogue_func=dialogue_train)

    e = sub.add_parser("eval", help="sample replies; F1, ROUGE-1, ROUGE-L, METEOR, reply perplexity")
    e.add_argument("--run", required=True, help="a `dialogue train` run folder")
    e.add_argument("--data", help="dialogues (default: the run's)")
    e.add_argument("--split")
    e.add_argument("--max-document-chars", type=int, help="default: the run's")
    e.add_argument("--max-replies", type=int, help="replies per dialogue (0 = all)")
    e.add_argument("--seed", type=int)
    e.add_argument("--device", choices=["auto", "cpu", "cuda"])
    e.add_argument("--out", help="results JSON (default: <run>/eval_<split>.json)")
    e.add_argument("--threads", type=int)
    add_flags(e, [PRECISION_FLAG])
    _sampling_args(e)
    e.set_defaults(**defaults_of(DialogueEvalSettings), dialogue_settings=DialogueEvalSettings)
    e.set_defaults(dialogue_func=dialogue_eval)

    c = sub.add_parser("chat", help="read a document into memory, then talk about it (stdin)")
    c.add_argument("--run", required=True, help="a `dialogue train` run folder")
    c.add_argument("--document", required=True, help="a UTF-8 text file")
    c.add_argument("--seed", type=int)
    c.add_argument("--device", choices=["auto", "cpu", "cuda"])
    c.add_argument("--threads", type=int)
    _sampling_args(c)
    c.set_defaults(**defaults_of(DialogueChatSettings), dialogue_settings=DialogueChatSettings)
    c.set_defaults(dialogue_func=dialogue_chat)
    p.set_defaults(func=run_dialogue)
    return p


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-p", type=float, help="nucleus sampling")
    p.add_argument("--max-new-tokens", type=int)


def run_dialogue(args: argparse.Namespace) -> int:
    """Run a parsed ``dialogue`` command (cli.main turns bad input into a one-line error, exit status 2)."""
    set_threads(getattr(args, "threads", 0) or 0)
    out = args.dialogue_func(settings_from_args(args.dialogue_settings, args))
    return exit_status(out.get("stop_signal") if isinstance(out, dict) else None)  # 130 / 143 if interrupted


add_parser = add_dialogue_parser  # every experiment module offers add_parser(subparsers) to cli.py


__all__ = [
    "DialogueChatSettings",
    "DialogueEvalSettings",
    "DialogueTrainSettings",
    "DialogueLM",
    "DialogueState",
    "ExampleStream",
    "add_dialogue_parser",
    "chat",
    "evaluate_dialogues",
    "generate_reply",
    "reply_nll",
]
