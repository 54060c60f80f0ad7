"""``infinite-former lm train | eval | finetune | inspect``: long-document language modeling.

- ``lm train``: a from-scratch LM (memory type xl | compressive | infinite | infinite_sticky) on a
  corpus of long documents streamed as B lanes (data/text.py), with the project's Trainer (same
  checkpoints, resume, CSV/TensorBoard logs as the sorting task). Writes ``<run>/results.json``.
- ``lm eval``: perplexity per document and over the corpus, and bits per byte, of a trained run
  (``--run``), or GPT-2 vs GPT-2 + long-term memory (``--hf PATH``) with the same block length.
- ``lm finetune``: the paper's GPT-2 recipe (PAPER §5): sequential blocks of L = 512 tokens, the
  memory carried from block to block within a document (reset at each new document), AdamW with
  5e-5 for GPT-2's weights and 2.5e-4 for the new LTM weights, KL regularizer on.
- ``lm inspect``: what the memory of a trained ∞-former (``--run``) or of a Hugging Face model with
  memory (``--hf``) holds, read over one document (experiments/introspect.py).

Run folder: ``tokenizer/``, ``lm_config.json``, ``checkpoints/``, ``train_log.csv``,
``eval_log.csv``, ``tb/``, ``results.json`` (and ``model/`` in Hugging Face format for finetune).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from torch import nn

from ..data.text import (
    DocumentLanes,
    LaneStream,
    TokenizedCorpus,
    check_segment_length,
    check_splits,
    load_corpus_split,
    tokenize_documents,
)
from ..data.tokenizer import TextTokenizer, build_tokenizer, hf_tokenizer
from ..models import MEMORY_TYPES, InfiniteFormerLM, ModelConfig
from ..models.config import LEGACY_02 as MODEL_LEGACY_02
from ..models.lm import zero_ltm_output
from ..training import Trainer, evaluate_lm, load_checkpoint
from ..training.checkpoints import check_resume, exit_status, load_weights
from ..utils import check_int, check_output_path, machine_info, seed_everything, write_json
from .flags import (
    PRECISION_FLAG,
    Flag,
    add_flags,
    check_precision,
    eval_precision,
    flat_memory,
    memory_flags,
    merge,
    overrides,
    parse_set,
    resolve_device,
    set_threads,
)
from .introspect import InspectSettings, add_inspect_parser, run_inspect
from .runs import (
    TRAIN_FLAGS,
    RunSettings,
    add_run_args,
    check_steps_or_epochs,
    defaults_of,
    settings_from_args,
)

CONFIG_FILE = "lm_config.json"

# ---------------------------------------------------------------------------------------- settings

# lm train only: flag -> TrainConfig field (the loop's other flags: runs.TRAIN_FLAGS)
EVAL_EVERY = Flag("--eval-every", "eval_every", int, "evaluate every N steps (0: at the end only)")
LM_TRAIN_FLAGS: list[Flag] = [
    Flag("--min-lr-ratio", "min_lr_ratio", float, "final lr / peak lr of the cosine"),
    Flag("--eval-batch-size", "eval_batch_size", int, "lanes of the periodic evaluation"),
    EVAL_EVERY,
]
# lm finetune only: the periodic validation (on --valid-split, at most --eval-segments blocks per lane)
FINETUNE_FLAGS: list[Flag] = [EVAL_EVERY]
# lm train: flag -> ModelConfig field (the memory's generated flags fill ``ltm``; --set any other field)
MODEL_FLAGS: list[Flag] = [
    Flag("--memory-type", "memory_type", str, "memory type", choices=MEMORY_TYPES),
    Flag("--d-model", "d_model", int, "model width e"),
    Flag("--n-layers", "n_layers", int, "layers"),
    Flag("--n-heads", "n_heads", int, "attention heads H"),
    Flag("--d-inner", "d_inner", int, "feed-forward width"),
    Flag("--dropout", "dropout", float, "dropout"),
    Flag("--mem-len", "mem_len", int, "short-term memory length"),
    Flag("--cmem-len", "cmem_len", int, "compressive: compressed memory slots"),
    Flag("--compression-rate", "compression_rate", int, "compressive: compression rate c"),
]


@dataclass(frozen=True)
class LMTrainSettings(RunSettings):
    """``lm train``: a from-scratch LM on long documents. The model's fields are ModelConfig's
    (``ltm``: memory settings over the model's preset; the memory type decides ``sticky``; ``set``:
    ``KEY=VALUE`` items for any other ModelConfig field); vocab_size comes from the tokenizer."""

    min_lr_ratio: float = 0.0
    eval_batch_size: int | None = None
    eval_every: int = 0
    memory_type: str = "infinite_sticky"
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_inner: int = 512
    dropout: float = 0.1
    mem_len: int = 128
    cmem_len: int = 64
    compression_rate: int = 2
    ltm: dict[str, Any] = field(default_factory=dict)
    set: tuple[str, ...] = ()
    valid_split: str = "valid"
    tokenizer: str = "auto"
    vocab_size: int = 4096
    seg_len: int = 128
    ltm_zero_init_output: bool = False
    eval_segments: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "set", tuple(self.set or ()))
        if self.memory_type not in MEMORY_TYPES:
            raise ValueError(f"--memory-type must be one of {list(MEMORY_TYPES)}, got {self.memory_type!r}")
        if "sticky" in self.ltm:
            raise ValueError("ltm: 'sticky' is decided by --memory-type (infinite | infinite_sticky)")
        check_int("--seg-len", self.seg_len)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """ModelConfig from the model settings and ``set`` (which takes precedence)."""
        aliases = {old: f"ltm.{new}" for old, new in MODEL_LEGACY_02.items()}  # 0.2's --set ltm_num_bins=8
        given = merge(overrides(self, MODEL_FLAGS), {"ltm": dict(self.ltm)} if self.ltm else {})
        return ModelConfig(
            **merge({"vocab_size": vocab_size}, given, parse_set(list(self.set), ModelConfig, aliases))
        )


@dataclass(frozen=True)
class LMFinetuneSettings(RunSettings):
    """``lm finetune``: a causal LM (``model``: folder or hub name) + long-term memory, the paper's
    recipe. ``ltm``: add_memory's memory settings (default: the model's, or the Hugging Face preset);
    ``steps`` 0: from ``epochs``; ``lr``: the base model's weights, ``ltm_lr``: the memory's."""

    run_dir: str = "runs/lm_finetune"
    batch_size: int = 1
    steps: int = 0
    warmup: int = 0
    lr: float = 5e-5
    clip: float = 1.0
    model: str = "gpt2"
    allow_download: bool = False
    block_size: int = 512
    epochs: float = 1.0
    ltm_lr: float = 2.5e-4
    ltm: dict[str, Any] = field(default_factory=dict)
    no_memory: bool = False
    training_free: str | None = None
    eval_every: int = 0
    valid_split: str = "valid"
    eval_segments: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("--block-size", self.block_size)
        check_steps_or_epochs(self.steps, self.epochs)
        if self.training_free is not None:
            from ..hf.training_free import TrainingFreeConfig  # deferred: transformers loads with hf

            if self.no_memory:
                raise ValueError("--training-free and --no-memory exclude each other")
            TrainingFreeConfig.parse(self.training_free)  # ValueError before anything loads
        if self.eval_every < 0 or self.eval_segments < 0:
            raise ValueError("--eval-every and --eval-segments must be >= 0")

    def memory(self) -> dict[str, Any]:
        """add_memory's keywords: block size, memory settings, no memory layers with ``no_memory``,
        the training-free memory (read through the model's own attention) with ``training_free``."""
        out = flat_memory({"block_size": self.block_size, "ltm": dict(self.ltm)})
        if self.no_memory:
            out["memory_layers"] = []
        if self.training_free is not None:
            from ..hf.training_free import TrainingFreeConfig

            out["training_free"] = TrainingFreeConfig.parse(self.training_free).to_dict()
        return out


@dataclass(frozen=True)
class LMEvalSettings:
    """``lm eval``: a trained run (``run``) or a model with memory vs its base model (``hf``).
    None: the run's / model's own value (seg_len, block_size, data, base)."""

    run: str | None = None
    hf: str | None = None
    base: str | None = None
    no_baseline: bool = False
    block_size: int | None = None
    data: str | None = None
    split: str = "test"
    seg_len: int | None = None
    batch_size: int = 4
    cache_dir: str | None = None
    device: str = "auto"
    allow_download: bool = False
    out: str | None = None
    threads: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_int("--batch-size", self.batch_size)
        for name in ("seg_len", "block_size"):  # None: the run's / model's
            if getattr(self, name) is not None:
                check_int(f"--{name.replace('_', '-')}", getattr(self, name))
        check_output_path(self.out, "--out", folder=False)
        if not self.run and not self.hf:
            raise ValueError("lm eval: give --run RUN_DIR (a `lm train` run) or --hf PATH (GPT-2 + memory)")


# ----------------------------------------------------------------------------------------- helpers


def _summary_line(name: str, res: dict[str, Any]) -> str:
    return (
        f"{name:<16} ppl {res['ppl']:10.3f}   bpb {res['bpb']:.4f}   "
        f"({res['documents']} docs, {res['tokens']:,} tokens, {res['bytes']:,} bytes)"
    )


def _load_split(source: str, split: str, tokenizer: TextTokenizer, cache_dir: str | None) -> TokenizedCorpus:
    return tokenize_documents(load_corpus_split(source, split), tokenizer, cache_dir=cache_dir)


def _load_hf(path: str, overrides: dict[str, Any], local_files_only: bool) -> nn.Module:
    from ..hf.training import load_memory_model  # deferred: transformers loads only for Hugging Face models

    return load_memory_model(path, overrides, local_files_only)


def valid_evaluator(corpus: TokenizedCorpus, block: int, eos_id: int, segments: int) -> Any:
    """The periodic validation's stream factory (Shard -> segments): every lane's documents from their
    start in blocks of ``block`` tokens, at most ``segments`` blocks per lane (0: all)."""

    def valid_stream(shard: Any) -> Iterator[Any]:
        lanes = DocumentLanes(corpus, shard.global_batch_size, block, eos_id, loop=False, train=False)
        return islice(LaneStream(lanes, shard.rank, shard.batch_size), segments or None)

    return valid_stream


# --------------------------------------------------------------------------------------- lm train


def lm_train(s: LMTrainSettings) -> dict[str, Any]:
    """Train a from-scratch LM on long documents, then evaluate it; returns the results dict."""
    changes = s.changes()
    s = s.with_changes(changes, TRAIN_FLAGS + LM_TRAIN_FLAGS)
    run = Path(s.run_dir)
    cache = s.cache_dir or str(run / "cache")
    config_path = run / CONFIG_FILE
    tcfg = s.train_config(TRAIN_FLAGS + LM_TRAIN_FLAGS)  # numeric settings: before any data is read
    if s.resume and not config_path.is_file():
        raise ValueError(f"--resume: {str(run)!r} holds no {CONFIG_FILE} (no `lm train` run to continue)")
    if s.resume:
        saved = json.loads(config_path.read_text())
        saved["model"] = ModelConfig.from_dict(saved["model"]).to_dict()  # a 0.2 run: its settings nested
        tok = TextTokenizer.load(run / "tokenizer")
        mcfg = s.model_config(tok.vocab_size)
    else:
        train_docs = load_corpus_split(s.data, s.train_split)
        tok = build_tokenizer(s.tokenizer, (d.text for d in train_docs), vocab_size=s.vocab_size)
        mcfg = s.model_config(tok.vocab_size)
        if mcfg.vocab_size != tok.vocab_size:
            raise ValueError(
                f"--set vocab_size={mcfg.vocab_size} differs from the tokenizer's {tok.vocab_size}"
            )
    check_segment_length(s.seg_len, mcfg.max_segment_len)
    settings = {
        "task": "lm",
        "model": mcfg.to_dict(),
        "train": tcfg.to_dict(),
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id},
        "ltm_zero_init_output": bool(s.ltm_zero_init_output),
        "data": {
            "source": str(s.data),
            "train_split": s.train_split,
            "valid_split": s.valid_split,
            "seg_len": s.seg_len,
        },
    }
    if s.resume:  # everything is checked before anything is written
        check_resume(run, saved, settings, changes)
    check_splits(s.data, [s.train_split, s.valid_split, *s.splits_to_evaluate])
    if not s.resume:
        tok.save(run / "tokenizer")
    train_corpus = _load_split(s.data, s.train_split, tok, cache)
    valid_corpus = _load_split(s.data, s.valid_split, tok, cache) if s.valid_split else None
    settings["data"].update(train_documents=len(train_corpus), train_tokens=train_corpus.num_tokens)
    write_json(config_path, settings)

    def train_stream(shard: Any) -> LaneStream:
        lanes = DocumentLanes(
            train_corpus,
            shard.global_batch_size,
            s.seg_len,
            tok.eos_id,
            loop=True,
            max_positions=mcfg.max_segment_len,
        )
        return LaneStream(lanes, shard.rank, shard.batch_size)

    evaluators = {}
    if valid_corpus is not None:
        evaluators["valid"] = valid_evaluator(valid_corpus, s.seg_len, tok.eos_id, s.eval_segments)

    seed_everything(s.seed)
    model = InfiniteFormerLM(mcfg)
    if s.ltm_zero_init_output and mcfg.uses_ltm:
        zero_ltm_output(model)
    trainer = Trainer(model, tcfg, train_stream, evaluators=evaluators, model_config=mcfg.to_dict())
    result = trainer.fit(resume=bool(s.resume))

    out: dict[str, Any] = {
        "machine": machine_info(),
        "memory_type": mcfg.memory_type,
        "model": mcfg.to_dict(),
        "ltm_zero_init_output": bool(s.ltm_zero_init_output),
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "seg_len": s.seg_len,
        "batch_size": s.batch_size,
        **result.summary(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "eval": {},
    }
    if not result.stopped_by_signal:
        device = resolve_device(s.device)
        model.to(device)
        for split in s.splits_to_evaluate:
            corpus = _load_split(s.data, split, tok, cache)
            res = evaluate_lm(model, corpus, s.eval_batch_size or s.batch_size, s.seg_len, tok.eos_id, device)
            out["eval"][split] = res
            print(_summary_line(f"{mcfg.memory_type}/{split}", res))
    write_json(run / "results.json", out)
    return out


# ---------------------------------------------------------------------------------------- lm eval


def load_trained_lm(run_dir: str | os.PathLike) -> tuple[nn.Module, TextTokenizer, dict[str, Any]]:
    """Model (with the latest checkpoint's weights), tokenizer and lm_config.json of a run."""
    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise ValueError(f"run: {str(run)!r} has no {CONFIG_FILE} (expected a folder written by `lm train`)")
    saved = json.loads((run / CONFIG_FILE).read_text())
    tok = TextTokenizer.load(run / "tokenizer")
    model = InfiniteFormerLM(ModelConfig.from_dict(saved["model"]))
    ckpt = load_checkpoint(run)
    load_weights(model, ckpt["model"], ckpt["dir"])
    saved["checkpoint"] = ckpt["dir"]
    saved["step"] = int(ckpt["trainer"]["step"])
    return model, tok, saved


def lm_eval(s: LMEvalSettings) -> dict[str, Any]:
    """Evaluate a trained run (``run``) or a model with memory vs its base model (``hf``), in
    ``s.precision`` (the results record the resolved one)."""
    with eval_precision(s.precision, s.device) as precision:
        return _lm_eval(dataclasses.replace(s, precision=precision))


def _lm_eval(s: LMEvalSettings) -> dict[str, Any]:
    if s.hf:
        return hf_eval(s)
    assert s.run is not None  # LMEvalSettings checked that one is given
    device = resolve_device(s.device)
    model, tok, saved = load_trained_lm(s.run)
    model.to(device)
    source = s.data or saved["data"]["source"]
    seg_len = s.seg_len if s.seg_len is not None else saved["data"]["seg_len"]
    corpus = _load_split(source, s.split, tok, s.cache_dir or str(Path(s.run) / "cache"))
    res = evaluate_lm(model, corpus, s.batch_size, seg_len, tok.eos_id, device)
    print(_summary_line(f"{saved['model']['memory_type']}/{s.split}", res))
    out = {
        "machine": machine_info(precision=s.precision),
        "run": str(s.run),
        "step": saved["step"],
        "memory_type": saved["model"]["memory_type"],
        "data": str(source),
        "split": s.split,
        "seg_len": seg_len,
        "tokenizer": tok.kind,
        "results": res,
    }
    write_json(s.out or Path(s.run) / f"eval_{s.split}.json", out)
    return out


# ------------------------------------------------------------------------- GPT-2 + memory (hf)


def _max_positions(model: nn.Module) -> int | None:
    return model.decoder_layout.max_positions


def hf_eval(s: LMEvalSettings) -> dict[str, Any]:
    """``lm eval --hf PATH``: the base model (``base``, default: the run's base model) vs the model with memory."""
    from ..hf.training import evaluate_hf_pair, load_plain_model

    device = resolve_device(s.device)
    local = not s.allow_download
    path = str(s.hf)
    meta_path = Path(path) / "finetune_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    base = s.base or meta.get("base_model")
    memory_model = _load_hf(path, {}, local).to(device)
    block = s.block_size if s.block_size is not None else memory_model.memory_config.block_size
    check_segment_length(block, _max_positions(memory_model), name="block_size")
    if block != memory_model.memory_config.block_size:
        memory_model = _load_hf(path, {"block_size": block}, local).to(device)
    plain = None
    if base and not s.no_baseline:
        plain = load_plain_model(base, local).to(device)
    tok = hf_tokenizer(path, local_files_only=local)
    source = s.data or meta.get("data")
    if not source:
        raise ValueError("lm eval --hf: give --data (a corpus folder / file / hf:NAME)")
    corpus = _load_split(source, s.split, tok, s.cache_dir)
    res = evaluate_hf_pair(memory_model, plain, corpus, block, s.batch_size, tok.eos_id, device)
    for name, r in res.items():
        print(_summary_line(f"{name}/{s.split}", r))
    out = {
        "machine": machine_info(precision=s.precision),
        "model": path,
        "base_model": base,
        "data": str(source),
        "split": s.split,
        "block_size": block,
        "results": res,
    }
    write_json(s.out or Path(path) / f"eval_{s.split}.json", out)
    return out


def lm_finetune(s: LMFinetuneSettings) -> dict[str, Any]:
    """Fine-tune a causal LM + long-term memory on long documents (paper's recipe), then evaluate."""
    from ..hf.training import HFMemoryLM, evaluate_hf_pair, load_plain_model

    changes = s.changes()
    s = s.with_changes(changes, TRAIN_FLAGS)
    run = Path(s.run_dir)
    local = not s.allow_download
    # numeric settings before any data is read (steps from epochs is known only after tokenizing)
    s.train_config(TRAIN_FLAGS + FINETUNE_FLAGS, steps=s.steps or max(s.warmup, 1))
    memory = s.memory()
    settings: dict[str, Any] = {
        "task": "lm_finetune",
        "base_model": str(s.model),
        "overrides": memory,
        "ltm_lr": s.ltm_lr,
        "data": {"source": str(s.data), "train_split": s.train_split, "block_size": s.block_size},
    }
    saved = None
    if s.resume:
        if not (run / CONFIG_FILE).is_file():
            raise ValueError(
                f"--resume: {str(run)!r} holds no {CONFIG_FILE} (no `lm finetune` run to continue)"
            )
        saved = json.loads((run / CONFIG_FILE).read_text())
        early = {k: v for k, v in saved.items() if k != "train"}
        check_resume(run, early, settings, changes)  # the memory settings, before the model loads
    validate = s.eval_every > 0 and bool(s.valid_split)
    check_splits(s.data, [s.train_split, *([s.valid_split] if validate else []), *s.splits_to_evaluate])
    tok = hf_tokenizer(s.model, local_files_only=local)
    seed_everything(s.seed)
    hf_model = _load_hf(s.model, memory, local)
    check_segment_length(s.block_size, _max_positions(hf_model), name="block_size")
    cache = s.cache_dir or str(run / "cache")
    train_corpus = _load_split(s.data, s.train_split, tok, cache)
    blocks = sum(math.ceil((int(t.numel()) + 1) / s.block_size) for t in train_corpus.tokens)
    steps = s.steps or max(1, math.ceil(s.epochs * blocks / s.batch_size))

    # warmup longer than training is refused, as in lm train
    tcfg = s.train_config(TRAIN_FLAGS + FINETUNE_FLAGS, steps=steps, warmup_steps=s.warmup)
    settings["train"] = tcfg.to_dict()
    if saved is not None:
        check_resume(run, saved, settings, changes)
    settings = {k: settings[k] for k in ("task", "base_model", "overrides", "train", "ltm_lr", "data")}
    model = HFMemoryLM(hf_model)

    def groups(m: nn.Module) -> list[dict[str, Any]]:
        inner = m.hf
        out = [{"params": [p for p in inner.base_parameters() if p.requires_grad], "lr": s.lr}]
        mem = inner.memory_parameters()
        if mem:
            out.append({"params": mem, "lr": s.ltm_lr})
        return out

    def train_stream(shard: Any) -> LaneStream:
        lanes = DocumentLanes(
            train_corpus,
            shard.global_batch_size,
            s.block_size,
            tok.eos_id,
            loop=True,
            max_positions=_max_positions(hf_model),
        )
        return LaneStream(lanes, shard.rank, shard.batch_size)

    evaluators = {}
    if validate:  # the periodic validation, blocks in order with the memory (lm train's)
        valid_corpus = _load_split(s.data, s.valid_split, tok, cache)
        evaluators["valid"] = valid_evaluator(valid_corpus, s.block_size, tok.eos_id, s.eval_segments)
    write_json(run / CONFIG_FILE, settings)
    trainer = Trainer(
        model, tcfg, train_stream, evaluators, param_groups=groups, model_config=hf_model.config.to_dict()
    )
    result = trainer.fit(resume=bool(s.resume))
    save_dir = run / "model"
    hf_model.save_pretrained(save_dir)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(s.model, local_files_only=local).save_pretrained(save_dir)
    write_json(save_dir / "finetune_meta.json", {"base_model": str(s.model), "data": str(s.data)})

    out: dict[str, Any] = {
        "machine": machine_info(),
        "base_model": str(s.model),
        "model": str(save_dir),
        "memory": not s.no_memory,
        "block_size": s.block_size,
        "lr": s.lr,
        "ltm_lr": s.ltm_lr,
        "kl_weight": hf_model.memory_config.ltm.kl_weight,
        "sticky": None if s.no_memory else bool(hf_model.memory_config.ltm.sticky),
        "training_free": None if hf_model.training_free is None else hf_model.training_free.to_dict(),
        **result.summary(),
        "eval": {},
    }
    if not result.stopped_by_signal and s.splits_to_evaluate:
        device = resolve_device(s.device)
        hf_model.to(device)
        plain = load_plain_model(s.model, local).to(device)
        for split in s.splits_to_evaluate:
            corpus = _load_split(s.data, split, tok, cache)
            res = evaluate_hf_pair(hf_model, plain, corpus, s.block_size, s.batch_size, tok.eos_id, device)
            out["eval"][split] = res
            for name, r in res.items():
                print(_summary_line(f"{name}/{split}", r))
    write_json(run / "results.json", out)
    return out


# ------------------------------------------------------------------------------------------- CLI


def _load_saved_hf(folder: str) -> nn.Module:
    return _load_hf(folder, {}, True)


def lm_inspect(s: InspectSettings) -> dict[str, Any]:
    """What the long-term memory of a ``lm train`` run or of a saved model with memory holds."""
    return run_inspect(s, load_run=load_trained_lm, load_hf=_load_saved_hf)


def add_lm_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``lm train | eval | finetune | inspect`` on an argparse subparsers object. The flags
    map onto LMTrainSettings / LMEvalSettings / LMFinetuneSettings (their defaults come from there)."""
    lm = subparsers.add_parser("lm", help="long-document language modeling (from scratch, or GPT-2 + memory)")
    sub = lm.add_subparsers(dest="lm_command", required=True)

    t = sub.add_parser(
        "train", help="train a from-scratch LM (xl | compressive | infinite | infinite_sticky)"
    )
    add_run_args(t)
    add_flags(t, LM_TRAIN_FLAGS)
    add_flags(t, MODEL_FLAGS)
    add_flags(t, memory_flags(exclude=("sticky",)))  # the memory type decides sticky
    t.add_argument("--valid-split", help="periodic evaluation split ('' = none)")
    t.add_argument("--tokenizer", help="auto | gpt2 | bpe | bytes | a saved tokenizer / GPT-2 folder")
    t.add_argument("--vocab-size", type=int, help="BPE vocabulary when training one")
    t.add_argument("--seg-len", type=int, help="T: tokens per segment")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other ModelConfig field")
    t.add_argument(
        "--ltm-zero-init-output",
        action="store_true",
        help="∞-former: start the LTM's output projection at 0 (the model starts as Transformer-XL)",
    )
    t.add_argument("--eval-segments", type=int, help="periodic validation: at most this many segments")
    t.set_defaults(**defaults_of(LMTrainSettings), lm_settings=LMTrainSettings, lm_func=lm_train)

    e = sub.add_parser("eval", help="perplexity per document / corpus and bits per byte")
    e.add_argument("--run", help="a `lm train` run folder")
    e.add_argument("--hf", help="GPT-2 + memory folder (from `lm finetune`) or a GPT-2 folder")
    e.add_argument("--base", help="plain GPT-2 to compare with (default: the fine-tune's base)")
    e.add_argument("--no-baseline", action="store_true", help="--hf: skip plain GPT-2")
    e.add_argument("--block-size", type=int, help="--hf: block length L (default: the model's)")
    e.add_argument("--data", help="corpus (default: the one the run was trained on)")
    e.add_argument("--split")
    e.add_argument("--seg-len", type=int, help="--run: segment length (default: training's)")
    e.add_argument("--batch-size", type=int, help="documents read in parallel")
    e.add_argument("--cache-dir")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"])
    e.add_argument("--allow-download", action="store_true", help="--hf: allow downloading from the hub")
    e.add_argument("--out", help="results JSON (default: <run>/eval_<split>.json)")
    e.add_argument("--threads", type=int, help="torch CPU threads (0 = torch's default)")
    add_flags(e, [PRECISION_FLAG])
    e.set_defaults(**defaults_of(LMEvalSettings), lm_settings=LMEvalSettings, lm_func=lm_eval)

    f = sub.add_parser("finetune", help="fine-tune GPT-2 + long-term memory (paper's recipe)")
    add_run_args(f)
    f.add_argument("--model", help="GPT-2 folder or hub name")
    f.add_argument("--allow-download", action="store_true", help="allow downloading --model from the hub")
    f.add_argument("--block-size", type=int, help="L: tokens per sequential block")
    f.add_argument("--epochs", type=float, help="used when --steps is 0")
    f.add_argument("--ltm-lr", type=float, help="learning rate of the new LTM weights")
    add_flags(f, memory_flags())  # default: the model's memory settings, or the Hugging Face preset
    f.add_argument("--no-memory", action="store_true", help="fine-tune GPT-2 alone with the same recipe")
    f.add_argument(
        "--training-free",
        metavar="DENSITY[:ALPHA|:softmax]",
        help="start from the training-free memory (read through the model's own attention, no new weights)",
    )
    f.add_argument("--valid-split", help="split of the periodic validation (with --eval-every)")
    f.add_argument("--eval-segments", type=int, help="periodic validation: at most this many blocks per lane")
    add_flags(f, FINETUNE_FLAGS)
    f.set_defaults(**defaults_of(LMFinetuneSettings), lm_settings=LMFinetuneSettings, lm_func=lm_finetune)
    add_inspect_parser(sub, load_run=load_trained_lm, load_hf=_load_saved_hf)  # lm inspect
    lm.set_defaults(func=run_lm)
    return lm


add_parser = add_lm_parser  # every experiment module offers add_parser(subparsers) to cli.py


def run_lm(args: argparse.Namespace) -> int:
    """Run a parsed ``lm`` command (cli.main turns bad input into a one-line error, exit status 2)."""
    set_threads(getattr(args, "threads", 0) or 0)
    out = args.lm_func(settings_from_args(args.lm_settings, args))
    return exit_status(out.get("stop_signal") if isinstance(out, dict) else None)  # 130 / 143 if interrupted


__all__ = [
    "InspectSettings",
    "LMEvalSettings",
    "LMFinetuneSettings",
    "LMTrainSettings",
    "add_lm_parser",
    "hf_eval",
    "lm_eval",
    "lm_finetune",
    "lm_inspect",
    "lm_train",
    "load_trained_lm",
]
