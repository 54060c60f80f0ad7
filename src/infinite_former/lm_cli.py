"""``infinite-former lm train | eval | finetune``: long-document language modeling.

- ``lm train``: a from-scratch LM (memory type xl | compressive | infinite | infinite_sticky) on a
  corpus of long documents streamed as B lanes (data/text.py), with the project's Trainer (same
  checkpoints, resume, CSV/TensorBoard logs as the sorting task). Writes ``<run>/results.json``.
- ``lm eval``: perplexity per document and over the corpus, and bits per byte, of a trained run
  (``--run``), or GPT-2 vs GPT-2 + long-term memory (``--hf PATH``) with the same block length.
- ``lm finetune``: the paper's GPT-2 recipe (PAPER §5): sequential blocks of L = 512 tokens, the
  memory carried from block to block within a document (reset at each new document), AdamW with
  5e-5 for GPT-2's weights and 2.5e-4 for the new LTM weights, KL regularizer on.

Run folder: ``tokenizer/``, ``lm_config.json``, ``checkpoints/``, ``train_log.csv``,
``eval_log.csv``, ``tb/``, ``results.json`` (and ``model/`` in Hugging Face format for finetune).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.text import (
    DocumentLanes,
    DocumentNLL,
    TokenizedCorpus,
    check_segment_length,
    load_corpus_split,
    tokenize_documents,
)
from .data.tokenizer import TextTokenizer, build_tokenizer, gpt2_tokenizer
from .utils import machine_info

if TYPE_CHECKING:
    from .train import TrainConfig

CONFIG_FILE = "lm_config.json"

# ------------------------------------------------------------------------------------------ streams


class LaneStream:
    """Adapts :class:`DocumentLanes` to the Trainer's stream protocol (yields ``train.Segment``).

    All processes build the same global lanes (global batch) and each keeps its own rows, so one
    process and N processes see the same data.
    """

    def __init__(self, lanes: DocumentLanes, rank: int = 0, local_batch: int | None = None) -> None:
        self.lanes = lanes
        b = local_batch or lanes.batch_size
        self.rows = slice(rank * b, (rank + 1) * b)

    def __iter__(self) -> Iterator[Any]:
        from .train import Segment

        for seg in self.lanes:
            r = self.rows
            yield Segment(seg.tokens[r], seg.targets[r], seg.loss_mask[r], seg.reset[r], seg.train)

    def state_dict(self) -> dict[str, Any]:
        return self.lanes.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lanes.load_state_dict(state)


def _limited(stream: LaneStream, max_segments: int) -> Iterator[Any]:
    for i, seg in enumerate(stream):
        if max_segments and i >= max_segments:
            return
        yield seg


# --------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_documents(
    step: Callable[[Tensor, Any], tuple[Tensor, Any]],
    init_state: Callable[[int], Any],
    corpus: TokenizedCorpus,
    batch_size: int,
    seg_len: int,
    eos_id: int,
    device: torch.device | str = "cpu",
    max_positions: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-document and corpus perplexity and bits per byte of a segment-recurrent model.

    step(tokens (B, T), state) -> (logits (B, T, V), state); init_state(B) -> state or None.
    Each document is read once, in its own lane, from its first token, with the lane's memory
    reset at its start (``state.reset(reset)``). Sticky memories draw random (stratified) sample
    positions, so the torch RNG is seeded with ``seed`` inside a forked RNG state: evaluation is
    reproducible and leaves the caller's RNG untouched.
    """
    lanes = DocumentLanes(
        corpus, batch_size, seg_len, eos_id, loop=False, train=False, max_positions=max_positions
    )
    acc = DocumentNLL(corpus)
    t0 = time.perf_counter()
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        state = init_state(batch_size)
        for seg in lanes:
            seg = seg.to(device)
            if state is not None:
                state = state.reset(seg.reset)
            logits, state = step(seg.tokens, state)
            nll = F.cross_entropy(logits.float().transpose(1, 2), seg.targets, reduction="none")  # (B, T)
            acc.add(nll, seg.loss_mask, seg.doc_ids)
    out = acc.summary()
    out["seconds"] = time.perf_counter() - t0
    return out


def evaluate_lm(
    model: nn.Module, corpus: TokenizedCorpus, batch_size: int, seg_len: int, eos_id: int, device="cpu"
) -> dict[str, Any]:
    """:func:`evaluate_documents` for an ``InfiniteFormerLM`` (memory carried across segments)."""
    was_training = model.training
    model.eval()

    def step(tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        out, state = model(tokens, state)
        return out.logits, state

    try:
        return evaluate_documents(
            step,
            lambda b: model.init_state(b, device),
            corpus,
            batch_size,
            seg_len,
            eos_id,
            device,
            max_positions=model.config.max_segment_len,
        )
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------------------- helpers


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available")
    return torch.device(name)


def _write_json(path: str | os.PathLike, obj: Any) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, p)
    return p


def _parse_set(items: list[str] | None, cls: type) -> dict[str, Any]:
    """``KEY=VALUE`` overrides of a dataclass's fields, VALUE parsed as JSON when possible."""
    names = {f.name for f in fields(cls)}
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if k not in names:
            raise ValueError(f"--set: unknown {cls.__name__} field {k!r}; known: {sorted(names)}")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _summary_line(name: str, res: dict[str, Any]) -> str:
    return (
        f"{name:<16} ppl {res['ppl']:10.3f}   bpb {res['bpb']:.4f}   "
        f"({res['documents']} docs, {res['tokens']:,} tokens, {res['bytes']:,} bytes)"
    )


def _load_split(source: str, split: str, tokenizer: TextTokenizer, cache_dir: str | None) -> TokenizedCorpus:
    return tokenize_documents(load_corpus_split(source, split), tokenizer, cache_dir=cache_dir)


# --------------------------------------------------------------------------------------- lm train


def zero_ltm_output(model: nn.Module) -> None:
    """Zero every layer's LTM output projection, so an ∞-former starts as a Transformer-XL with the
    same short-term memory (the LTM's contribution grows from 0 as it trains), like the GPT-2 model."""
    with torch.no_grad():
        for blk in model.layers:
            if blk.ltm is not None:
                blk.ltm.out.weight.zero_()
                blk.ltm.out.bias.zero_()


def _train_config(args: argparse.Namespace, run: Path, **fields: Any) -> TrainConfig:
    """TrainConfig from the flags shared by lm train and lm finetune, plus per-command fields."""
    from .train import TrainConfig

    shared = dict(
        lr=args.lr,
        weight_decay=args.weight_decay,
        clip=args.clip,
        batch_size=args.batch_size,
        ckpt_every=args.ckpt_every,
        log_every=args.log_every,
        seed=args.seed,
        out_dir=str(run),
        device=args.device,
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
    )
    return TrainConfig(**{**shared, **fields})


def lm_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train a from-scratch LM on long documents, then evaluate it; returns the results dict."""
    from .model import InfiniteFormerLM, ModelConfig
    from .train import Trainer
    from .utils import seed_everything

    run = Path(args.run_dir)
    cache = args.cache_dir or str(run / "cache")
    config_path = run / CONFIG_FILE
    if args.resume and not config_path.is_file():
        raise ValueError(f"--resume: {str(run)!r} holds no {CONFIG_FILE} (no `lm train` run to continue)")
    if args.resume:
        saved = json.loads(config_path.read_text())
        tok = TextTokenizer.load(run / "tokenizer")
        mcfg = ModelConfig.from_dict(saved["model"])
        if saved["data"]["seg_len"] != args.seg_len or saved["data"]["source"] != str(args.data):
            raise ValueError(
                f"--resume: the run in {str(run)!r} used data={saved['data']['source']!r}, "
                f"seg_len={saved['data']['seg_len']}; got data={str(args.data)!r}, seg_len={args.seg_len}"
            )
    else:
        train_docs = load_corpus_split(args.data, args.train_split)
        tok = build_tokenizer(args.tokenizer, (d.text for d in train_docs), vocab_size=args.vocab_size)
        overrides = _parse_set(args.set, ModelConfig)
        mcfg = ModelConfig(
            vocab_size=tok.vocab_size,
            d_model=args.d_model,
            n_layers=args.n_layers,
            n_heads=args.n_heads,
            d_inner=args.d_inner,
            dropout=args.dropout,
            mem_len=args.mem_len,
            memory_type=args.memory_type,
            cmem_len=args.cmem_len,
            compression_rate=args.compression_rate,
            ltm_num_basis=args.num_basis,
            ltm_num_samples=args.num_samples if args.num_samples else args.num_basis,
            ltm_tau=args.tau,
            **overrides,
        )
        if mcfg.vocab_size != tok.vocab_size:
            raise ValueError(
                f"--set vocab_size={mcfg.vocab_size} differs from the tokenizer's {tok.vocab_size}"
            )
    check_segment_length(args.seg_len, mcfg.max_segment_len)
    if not args.resume:
        tok.save(run / "tokenizer")
    train_corpus = _load_split(args.data, args.train_split, tok, cache)
    valid_corpus = _load_split(args.data, args.valid_split, tok, cache) if args.valid_split else None

    tcfg = _train_config(
        args,
        run,
        steps=args.steps,
        warmup_steps=args.warmup,
        min_lr_ratio=args.min_lr_ratio,
        eval_batch_size=args.eval_batch_size,
        eval_every=args.eval_every,
    )
    _write_json(
        config_path,
        {
            "task": "lm",
            "model": mcfg.to_dict(),
            "train": tcfg.to_dict(),
            "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id},
            "ltm_zero_init_output": bool(args.ltm_zero_init_output),
            "data": {
                "source": str(args.data),
                "train_split": args.train_split,
                "valid_split": args.valid_split,
                "seg_len": args.seg_len,
                "train_documents": len(train_corpus),
                "train_tokens": train_corpus.num_tokens,
            },
        },
    )

    def train_stream(shard: Any) -> LaneStream:
        lanes = DocumentLanes(
            train_corpus,
            shard.global_batch_size,
            args.seg_len,
            tok.eos_id,
            loop=True,
            max_positions=mcfg.max_segment_len,
        )
        return LaneStream(lanes, shard.rank, shard.batch_size)

    evaluators = {}
    if valid_corpus is not None:

        def valid_stream(shard: Any) -> Iterator[Any]:
            lanes = DocumentLanes(
                valid_corpus, shard.global_batch_size, args.seg_len, tok.eos_id, loop=False, train=False
            )
            return _limited(LaneStream(lanes, shard.rank, shard.batch_size), args.eval_segments)

        evaluators["valid"] = valid_stream

    seed_everything(args.seed)
    model = InfiniteFormerLM(mcfg)
    if args.ltm_zero_init_output and mcfg.uses_ltm:
        zero_ltm_output(model)
    trainer = Trainer(model, tcfg, train_stream, evaluators=evaluators, model_config=mcfg.to_dict())
    result = trainer.fit(resume=bool(args.resume))

    out: dict[str, Any] = {
        "machine": machine_info(),
        "memory_type": mcfg.memory_type,
        "model": mcfg.to_dict(),
        "ltm_zero_init_output": bool(args.ltm_zero_init_output),
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "seg_len": args.seg_len,
        "batch_size": args.batch_size,
        "steps": result.step,
        "train_loss_last": result.losses[-1] if result.losses else None,
        "train_seconds": result.train_seconds,
        "tokens_per_s": result.tokens_per_s,
        "parameters": sum(p.numel() for p in model.parameters()),
        "checkpoint": result.checkpoint,
        "stopped_by_signal": result.stopped_by_signal,
        "eval": {},
    }
    if not result.stopped_by_signal:
        device = _device(args.device)
        model.to(device)
        for split in args.eval_splits:
            corpus = _load_split(args.data, split, tok, cache)
            res = evaluate_lm(
                model, corpus, args.eval_batch_size or args.batch_size, args.seg_len, tok.eos_id, device
            )
            out["eval"][split] = res
            print(_summary_line(f"{mcfg.memory_type}/{split}", res))
    _write_json(run / "results.json", out)
    return out


# ---------------------------------------------------------------------------------------- lm eval


def load_trained_lm(run_dir: str | os.PathLike) -> tuple[nn.Module, TextTokenizer, dict[str, Any]]:
    """Model (with the latest checkpoint's weights), tokenizer and lm_config.json of a run."""
    from .model import InfiniteFormerLM, ModelConfig
    from .train import load_checkpoint

    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise ValueError(f"run: {str(run)!r} has no {CONFIG_FILE} (expected a folder written by `lm train`)")
    saved = json.loads((run / CONFIG_FILE).read_text())
    tok = TextTokenizer.load(run / "tokenizer")
    model = InfiniteFormerLM(ModelConfig.from_dict(saved["model"]))
    ckpt = load_checkpoint(run)
    model.load_state_dict(ckpt["model"], strict=False)
    missing = [k for k in model.state_dict() if k not in ckpt["model"] and k != "head.weight"]
    if missing:
        raise ValueError(f"run: checkpoint {ckpt['dir']} lacks weights {missing[:5]}")
    saved["checkpoint"] = ckpt["dir"]
    saved["step"] = int(ckpt["trainer"]["step"])
    return model, tok, saved


def lm_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate a trained run (``--run``) or GPT-2 vs GPT-2 + memory (``--hf``)."""
    if args.hf:
        return hf_eval(args)
    if not args.run:
        raise ValueError("lm eval: give --run RUN_DIR (a `lm train` run) or --hf PATH (GPT-2 + memory)")
    device = _device(args.device)
    model, tok, saved = load_trained_lm(args.run)
    model.to(device)
    source = args.data or saved["data"]["source"]
    seg_len = args.seg_len or saved["data"]["seg_len"]
    corpus = _load_split(source, args.split, tok, args.cache_dir or str(Path(args.run) / "cache"))
    res = evaluate_lm(model, corpus, args.batch_size, seg_len, tok.eos_id, device)
    print(_summary_line(f"{saved['model']['memory_type']}/{args.split}", res))
    out = {
        "machine": machine_info(),
        "run": str(args.run),
        "step": saved["step"],
        "memory_type": saved["model"]["memory_type"],
        "data": str(source),
        "split": args.split,
        "seg_len": seg_len,
        "tokenizer": tok.kind,
        "results": res,
    }
    _write_json(args.out or Path(args.run) / f"eval_{args.split}.json", out)
    return out


# ------------------------------------------------------------------------- GPT-2 + memory (hf)


@dataclass
class HFMemoryState:
    """The Trainer-facing wrapper of an ``InfiniteGPT2Memory`` (reset / detach / state_dict)."""

    memory: Any

    def reset(self, rows: Tensor) -> HFMemoryState:
        return HFMemoryState(self.memory.reset(rows))

    def detach(self) -> HFMemoryState:
        return HFMemoryState(self.memory.detach())

    def to(self, device: torch.device | str) -> HFMemoryState:
        return HFMemoryState(self.memory.to(device))

    def state_dict(self) -> dict[str, Any]:
        return self.memory.state_dict()

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> HFMemoryState:
        from .hf import InfiniteGPT2Memory

        return cls(InfiniteGPT2Memory.from_state_dict(d))


@dataclass
class _LMOut:
    logits: Tensor
    loss: Tensor | None
    aux_loss: Tensor


class HFMemoryLM(nn.Module):
    """``InfiniteGPT2LMHeadModel`` behind the Trainer's ``out, state = model(tokens, state, targets, loss_mask)``.

    Each call must be one block of ``config.block_size`` tokens (the memory is absorbed at block
    boundaries); loss = mean CE over masked targets, aux_loss = kl_weight · KL (training only).
    """

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> HFMemoryState:
        return HFMemoryState(self.hf.init_memory(batch_size, device))

    def forward(
        self,
        tokens: Tensor,
        state: HFMemoryState | None = None,
        targets: Tensor | None = None,
        loss_mask: Tensor | None = None,
    ) -> tuple[_LMOut, HFMemoryState]:
        out = self.hf(tokens, memory=None if state is None else state.memory)
        loss = None
        if targets is not None:
            nll = F.cross_entropy(out.logits.float().transpose(1, 2), targets, reduction="none")
            mask = torch.ones_like(targets, dtype=torch.bool) if loss_mask is None else loss_mask
            loss = (nll * mask).sum() / mask.sum().clamp_min(1)
        kl_w = float(self.hf.config.kl_weight)
        use_kl = self.hf.training and kl_w > 0 and len(self.hf.ltm) and out.kl is not None
        aux = kl_w * out.kl if use_kl else out.logits.new_zeros(())
        return _LMOut(out.logits, loss, aux), HFMemoryState(out.memory)


def _load_hf_memory_model(path: str, overrides: dict[str, Any], local_files_only: bool) -> nn.Module:
    from .hf import InfiniteGPT2LMHeadModel

    try:
        return InfiniteGPT2LMHeadModel.from_pretrained(path, local_files_only=local_files_only, **overrides)
    except OSError as e:
        raise ValueError(f"model: cannot load a GPT-2 checkpoint from {path!r}: {e}") from e


def _hf_tokenizer(path: str, local_files_only: bool) -> TextTokenizer:
    return gpt2_tokenizer(path, local_files_only=local_files_only)


def evaluate_hf_pair(
    memory_model: nn.Module | None,
    plain_model: nn.Module | None,
    corpus: TokenizedCorpus,
    block_size: int,
    batch_size: int,
    eos_id: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """GPT-2 (each block alone) and GPT-2 + memory (blocks in order, memory reset per document),
    on the same blocks of ``block_size`` tokens: per-document and corpus ppl and bpb."""
    res: dict[str, Any] = {}
    if plain_model is not None:
        plain_model.eval()
        n_pos = plain_model.config.n_positions
        res["gpt2"] = evaluate_documents(
            lambda t, s: (plain_model(t).logits, None),
            lambda b: None,
            corpus,
            batch_size,
            block_size,
            eos_id,
            device,
            max_positions=n_pos,
        )
    if memory_model is not None:
        memory_model.eval()
        if memory_model.config.block_size != block_size:
            raise ValueError(
                f"block_size={block_size} differs from the memory model's block_size={memory_model.config.block_size}"
            )
        wrapped = HFMemoryLM(memory_model)

        def step(t: Tensor, s: HFMemoryState) -> tuple[Tensor, HFMemoryState]:
            out, s = wrapped(t, s)
            return out.logits, s

        # a model fine-tuned with --no-memory has no LTM layers: it is GPT-2 on the same blocks
        res["gpt2_memory" if len(memory_model.ltm) else "gpt2_finetuned"] = evaluate_documents(
            step,
            lambda b: wrapped.init_state(b, device),
            corpus,
            batch_size,
            block_size,
            eos_id,
            device,
            max_positions=memory_model.config.n_positions,
        )
    return res


def hf_eval(args: argparse.Namespace) -> dict[str, Any]:
    """``lm eval --hf PATH``: GPT-2 (``--base``, default: the run's base model) vs GPT-2 + memory."""
    from transformers import GPT2LMHeadModel

    device = _device(args.device)
    local = not args.allow_download
    path = str(args.hf)
    meta_path = Path(path) / "finetune_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    base = args.base or meta.get("base_model")
    memory_model = _load_hf_memory_model(path, {}, local).to(device)
    block = args.block_size or memory_model.config.block_size
    check_segment_length(block, memory_model.config.n_positions, name="block_size")
    if block != memory_model.config.block_size:
        memory_model = _load_hf_memory_model(path, {"block_size": block}, local).to(device)
    plain = None
    if base and not args.no_baseline:
        try:
            plain = GPT2LMHeadModel.from_pretrained(base, local_files_only=local).to(device)
        except OSError as e:
            raise ValueError(f"--base: cannot load plain GPT-2 from {base!r}: {e}") from e
    tok = _hf_tokenizer(path, local)
    source = args.data or meta.get("data")
    if not source:
        raise ValueError("lm eval --hf: give --data (a corpus folder / file / hf:NAME)")
    corpus = _load_split(source, args.split, tok, args.cache_dir)
    res = evaluate_hf_pair(memory_model, plain, corpus, block, args.batch_size, tok.eos_id, device)
    for name, r in res.items():
        print(_summary_line(f"{name}/{args.split}", r))
    out = {
        "machine": machine_info(),
        "model": path,
        "base_model": base,
        "data": str(source),
        "split": args.split,
        "block_size": block,
        "results": res,
    }
    _write_json(args.out or Path(path) / f"eval_{args.split}.json", out)
    return out


def lm_finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune GPT-2 + long-term memory on long documents (paper's recipe), then evaluate."""
    from transformers import GPT2LMHeadModel

    from .train import Trainer
    from .utils import seed_everything

    run = Path(args.run_dir)
    local = not args.allow_download
    tok = _hf_tokenizer(args.model, local)
    overrides: dict[str, Any] = {"block_size": args.block_size, "kl_weight": args.kl_weight}
    for name in ("num_basis", "num_samples", "tau"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.no_memory:
        overrides["memory_layers"] = []
    seed_everything(args.seed)
    hf_model = _load_hf_memory_model(args.model, overrides, local)
    check_segment_length(args.block_size, hf_model.config.n_positions, name="block_size")
    cache = args.cache_dir or str(run / "cache")
    train_corpus = _load_split(args.data, args.train_split, tok, cache)
    blocks = sum(math.ceil((int(t.numel()) + 1) / args.block_size) for t in train_corpus.tokens)
    steps = args.steps or max(1, math.ceil(args.epochs * blocks / args.batch_size))

    tcfg = _train_config(args, run, steps=steps, warmup_steps=min(args.warmup, steps))
    model = HFMemoryLM(hf_model)

    def groups(m: nn.Module) -> list[dict[str, Any]]:
        inner = m.hf
        out = [{"params": [p for p in inner.base_parameters() if p.requires_grad], "lr": args.lr}]
        mem = inner.memory_parameters()
        if mem:
            out.append({"params": mem, "lr": args.ltm_lr})
        return out

    def train_stream(shard: Any) -> LaneStream:
        lanes = DocumentLanes(
            train_corpus,
            shard.global_batch_size,
            args.block_size,
            tok.eos_id,
            loop=True,
            max_positions=hf_model.config.n_positions,
        )
        return LaneStream(lanes, shard.rank, shard.batch_size)

    _write_json(
        run / CONFIG_FILE,
        {
            "task": "lm_finetune",
            "base_model": str(args.model),
            "overrides": overrides,
            "train": tcfg.to_dict(),
            "ltm_lr": args.ltm_lr,
            "data": {
                "source": str(args.data),
                "train_split": args.train_split,
                "block_size": args.block_size,
            },
        },
    )
    trainer = Trainer(model, tcfg, train_stream, param_groups=groups, model_config=hf_model.config.to_dict())
    result = trainer.fit(resume=bool(args.resume))
    save_dir = run / "model"
    hf_model.save_pretrained(save_dir)
    from transformers import GPT2TokenizerFast

    GPT2TokenizerFast.from_pretrained(args.model, local_files_only=local).save_pretrained(save_dir)
    _write_json(save_dir / "finetune_meta.json", {"base_model": str(args.model), "data": str(args.data)})

    out: dict[str, Any] = {
        "machine": machine_info(),
        "base_model": str(args.model),
        "model": str(save_dir),
        "memory": not args.no_memory,
        "block_size": args.block_size,
        "lr": args.lr,
        "ltm_lr": args.ltm_lr,
        "kl_weight": args.kl_weight,
        "steps": result.step,
        "train_loss_last": result.losses[-1] if result.losses else None,
        "train_seconds": result.train_seconds,
        "tokens_per_s": result.tokens_per_s,
        "eval": {},
    }
    if not result.stopped_by_signal and args.eval_splits:
        device = _device(args.device)
        hf_model.to(device)
        plain = GPT2LMHeadModel.from_pretrained(args.model, local_files_only=local).to(device)
        for split in args.eval_splits:
            corpus = _load_split(args.data, split, tok, cache)
            res = evaluate_hf_pair(
                hf_model, plain, corpus, args.block_size, args.batch_size, tok.eos_id, device
            )
            out["eval"][split] = res
            for name, r in res.items():
                print(_summary_line(f"{name}/{split}", r))
    _write_json(run / "results.json", out)
    return out


# ------------------------------------------------------------------------------------------- CLI


def _common_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, help="corpus: folder with train/ valid/ test/, a folder/.txt, or hf:NAME"
    )
    p.add_argument("--run-dir", default="runs/lm", help="output folder (checkpoints, logs, results.json)")
    p.add_argument("--train-split", default="train")
    p.add_argument(
        "--eval-splits", nargs="*", default=["valid", "test"], help="splits evaluated after training"
    )
    p.add_argument("--cache-dir", default=None, help="token cache (default: <run-dir>/cache)")
    p.add_argument("--batch-size", type=int, default=8, help="B: parallel document lanes (global batch)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>'s latest checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")


def add_lm_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``lm train | eval | finetune`` on an argparse subparsers object."""
    lm = subparsers.add_parser("lm", help="long-document language modeling (from scratch, or GPT-2 + memory)")
    sub = lm.add_subparsers(dest="lm_command", required=True)

    t = sub.add_parser(
        "train", help="train a from-scratch LM (xl | compressive | infinite | infinite_sticky)"
    )
    _common_train_args(t)
    t.add_argument("--valid-split", default="valid", help="periodic evaluation split ('' = none)")
    t.add_argument(
        "--tokenizer", default="auto", help="auto | gpt2 | bpe | bytes | a saved tokenizer / GPT-2 folder"
    )
    t.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary when training one")
    t.add_argument(
        "--memory-type",
        default="infinite_sticky",
        choices=["xl", "compressive", "infinite", "infinite_sticky"],
    )
    t.add_argument("--seg-len", type=int, default=128, help="T: tokens per segment")
    t.add_argument("--d-model", type=int, default=128)
    t.add_argument("--n-layers", type=int, default=2)
    t.add_argument("--n-heads", type=int, default=4)
    t.add_argument("--d-inner", type=int, default=512)
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--mem-len", type=int, default=128, help="short-term memory length")
    t.add_argument("--cmem-len", type=int, default=64, help="compressive: compressed memory slots")
    t.add_argument("--compression-rate", type=int, default=2)
    t.add_argument("--num-basis", type=int, default=128, help="N: basis functions of the ∞-former's LTM")
    t.add_argument("--num-samples", type=int, default=0, help="M: samples of the old signal (0 = N)")
    t.add_argument("--tau", type=float, default=0.5, help="τ: share of [0, 1] for the contracted old memory")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other ModelConfig field")
    t.add_argument(
        "--ltm-zero-init-output",
        action="store_true",
        help="∞-former: start the LTM's output projection at 0 (the model starts as Transformer-XL)",
    )
    t.add_argument("--lr", type=float, default=2.5e-4)
    t.add_argument("--min-lr-ratio", type=float, default=0.0)
    t.add_argument("--clip", type=float, default=0.25)
    t.add_argument("--eval-batch-size", type=int, default=None)
    t.add_argument("--eval-every", type=int, default=0)
    t.add_argument(
        "--eval-segments", type=int, default=50, help="periodic validation: at most this many segments"
    )
    t.set_defaults(lm_func=lm_train)

    e = sub.add_parser("eval", help="perplexity per document / corpus and bits per byte")
    e.add_argument("--run", default=None, help="a `lm train` run folder")
    e.add_argument("--hf", default=None, help="GPT-2 + memory folder (from `lm finetune`) or a GPT-2 folder")
    e.add_argument("--base", default=None, help="plain GPT-2 to compare with (default: the fine-tune's base)")
    e.add_argument("--no-baseline", action="store_true", help="--hf: skip plain GPT-2")
    e.add_argument("--block-size", type=int, default=None, help="--hf: block length L (default: the model's)")
    e.add_argument("--data", default=None, help="corpus (default: the one the run was trained on)")
    e.add_argument("--split", default="test")
    e.add_argument("--seg-len", type=int, default=None, help="--run: segment length (default: training's)")
    e.add_argument("--batch-size", type=int, default=4, help="documents read in parallel")
    e.add_argument("--cache-dir", default=None)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--allow-download", action="store_true", help="--hf: allow downloading from the hub")
    e.add_argument("--out", default=None, help="results JSON (default: <run>/eval_<split>.json)")
    e.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    e.set_defaults(lm_func=lm_eval)

    f = sub.add_parser("finetune", help="fine-tune GPT-2 + long-term memory (paper's recipe)")
    _common_train_args(f)
    f.set_defaults(steps=0, batch_size=1, warmup=0, run_dir="runs/lm_finetune")
    f.add_argument("--model", default="gpt2", help="GPT-2 folder or hub name")
    f.add_argument("--allow-download", action="store_true", help="allow downloading --model from the hub")
    f.add_argument("--block-size", type=int, default=512, help="L: tokens per sequential block")
    f.add_argument("--epochs", type=float, default=1.0, help="used when --steps is 0")
    f.add_argument("--lr", type=float, default=5e-5, help="learning rate of GPT-2's weights")
    f.add_argument("--ltm-lr", type=float, default=2.5e-4, help="learning rate of the new LTM weights")
    f.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the KL regularizer (0 = off)")
    f.add_argument("--clip", type=float, default=1.0)
    f.add_argument("--num-basis", type=int, default=None, help="N (default: the config's, 512)")
    f.add_argument("--num-samples", type=int, default=None, help="M (default: the config's, 512)")
    f.add_argument("--tau", type=float, default=None)
    f.add_argument("--no-memory", action="store_true", help="fine-tune GPT-2 alone with the same recipe")
    f.set_defaults(lm_func=lm_finetune)
    lm.set_defaults(func=run_lm)
    return lm


add_parser = add_lm_parser  # the hook cli.py's SUBCOMMAND_MODULES looks for


def run_lm(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``lm`` command; bad input (ValueError, missing/corrupt checkpoint) becomes a
    one-line message on stderr and exit status 2."""
    from .train import CheckpointError

    try:
        if getattr(args, "threads", 0):
            if args.threads < 0:
                raise ValueError(f"--threads must be >= 0, got {args.threads}")
            torch.set_num_threads(args.threads)
        args.lm_func(args)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"infinite-former: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m infinite_former.lm_cli train ...`` (same as ``infinite-former lm train ...``)."""
    parser = argparse.ArgumentParser(prog="infinite-former")
    sub = parser.add_subparsers(dest="command", required=True)
    add_lm_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "lm":
        argv = ["lm", *argv]
    return run_lm(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
