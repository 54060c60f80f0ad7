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
import json
import math
import os
from collections.abc import Iterator
from functools import partial
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
from ..training import TrainConfig, Trainer, evaluate_lm, load_checkpoint
from ..training.checkpoints import (
    RESUME_OVERRIDABLE,
    check_resume,
    exit_status,
    load_weights,
    parse_overrides,
)
from ..utils import check_int, check_output_path, machine_info, seed_everything, write_json
from .flags import (
    PRECISION_FLAG,
    Flag,
    add_flags,
    eval_precision,
    eval_splits,
    flat_memory,
    memory_flags,
    merge,
    overrides,
    parse_set,
    resolve_device,
    set_threads,
)
from .introspect import add_inspect_parser

CONFIG_FILE = "lm_config.json"

# ----------------------------------------------------------------------------------------- helpers


def _summary_line(name: str, res: dict[str, Any]) -> str:
    return (
        f"{name:<16} ppl {res['ppl']:10.3f}   bpb {res['bpb']:.4f}   "
        f"({res['documents']} docs, {res['tokens']:,} tokens, {res['bytes']:,} bytes)"
    )


def _load_split(source: str, split: str, tokenizer: TextTokenizer, cache_dir: str | None) -> TokenizedCorpus:
    return tokenize_documents(load_corpus_split(source, split), tokenizer, cache_dir=cache_dir)


# --------------------------------------------------------------------------------------- lm train


def lm_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train a from-scratch LM on long documents, then evaluate it; returns the results dict."""
    run = Path(args.run_dir)
    cache = args.cache_dir or str(run / "cache")
    config_path = run / CONFIG_FILE
    changes = parse_overrides(args.override, args.resume)
    _apply_overrides(args, changes, TRAIN_FLAGS + LM_TRAIN_FLAGS)
    tcfg = _train_config(args, run, TRAIN_FLAGS + LM_TRAIN_FLAGS)  # numeric flags: before any data is read
    check_int("--seg-len", args.seg_len)
    check_output_path(run, "--run-dir")
    check_output_path(args.cache_dir, "--cache-dir")
    if args.resume and not config_path.is_file():
        raise ValueError(f"--resume: {str(run)!r} holds no {CONFIG_FILE} (no `lm train` run to continue)")
    if args.resume:
        saved = json.loads(config_path.read_text())
        saved["model"] = ModelConfig.from_dict(saved["model"]).to_dict()  # a 0.2 run: its settings nested
        tok = TextTokenizer.load(run / "tokenizer")
        mcfg = _model_config(args, tok.vocab_size)
    else:
        train_docs = load_corpus_split(args.data, args.train_split)
        tok = build_tokenizer(args.tokenizer, (d.text for d in train_docs), vocab_size=args.vocab_size)
        mcfg = _model_config(args, tok.vocab_size)
        if mcfg.vocab_size != tok.vocab_size:
            raise ValueError(
                f"--set vocab_size={mcfg.vocab_size} differs from the tokenizer's {tok.vocab_size}"
            )
    check_segment_length(args.seg_len, mcfg.max_segment_len)
    settings = {
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
        },
    }
    if args.resume:  # everything is checked before anything is written
        check_resume(run, saved, settings, changes)
    check_splits(args.data, [args.train_split, args.valid_split, *eval_splits(args)])
    if not args.resume:
        tok.save(run / "tokenizer")
    train_corpus = _load_split(args.data, args.train_split, tok, cache)
    valid_corpus = _load_split(args.data, args.valid_split, tok, cache) if args.valid_split else None
    settings["data"].update(train_documents=len(train_corpus), train_tokens=train_corpus.num_tokens)
    write_json(config_path, settings)

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
            return islice(LaneStream(lanes, shard.rank, shard.batch_size), args.eval_segments or None)

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
        **result.summary(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "eval": {},
    }
    if not result.stopped_by_signal:
        device = resolve_device(args.device)
        model.to(device)
        for split in eval_splits(args):
            corpus = _load_split(args.data, split, tok, cache)
            res = evaluate_lm(
                model, corpus, args.eval_batch_size or args.batch_size, args.seg_len, tok.eos_id, device
            )
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


def lm_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate a trained run (``--run``) or GPT-2 vs GPT-2 + memory (``--hf``), in --precision."""
    check_int("--batch-size", args.batch_size)
    for name in ("seg_len", "block_size"):  # None: the run's / model's
        if getattr(args, name) is not None:
            check_int(f"--{name.replace('_', '-')}", getattr(args, name))
    check_output_path(args.out, "--out", folder=False)
    with eval_precision(args):
        return _lm_eval(args)


def _lm_eval(args: argparse.Namespace) -> dict[str, Any]:
    if args.hf:
        return hf_eval(args)
    if not args.run:
        raise ValueError("lm eval: give --run RUN_DIR (a `lm train` run) or --hf PATH (GPT-2 + memory)")
    device = resolve_device(args.device)
    model, tok, saved = load_trained_lm(args.run)
    model.to(device)
    source = args.data or saved["data"]["source"]
    seg_len = args.seg_len if args.seg_len is not None else saved["data"]["seg_len"]
    corpus = _load_split(source, args.split, tok, args.cache_dir or str(Path(args.run) / "cache"))
    res = evaluate_lm(model, corpus, args.batch_size, seg_len, tok.eos_id, device)
    print(_summary_line(f"{saved['model']['memory_type']}/{args.split}", res))
    out = {
        "machine": machine_info(precision=args.precision),
        "run": str(args.run),
        "step": saved["step"],
        "memory_type": saved["model"]["memory_type"],
        "data": str(source),
        "split": args.split,
        "seg_len": seg_len,
        "tokenizer": tok.kind,
        "results": res,
    }
    write_json(args.out or Path(args.run) / f"eval_{args.split}.json", out)
    return out


# ------------------------------------------------------------------------- GPT-2 + memory (hf)


def _load_hf_memory_model(path: str, overrides: dict[str, Any], local_files_only: bool) -> nn.Module:
    """Any supported causal LM (GPT-2, Llama, Qwen2, Mistral, GPT-NeoX, a saved model with memory)."""
    from ..hf import load_model

    try:
        return load_model(path, local_files_only=local_files_only, **overrides)
    except OSError as e:
        raise ValueError(f"model: cannot load a causal LM from {path!r}: {e}") from e


def _load_plain_model(path: str, local_files_only: bool) -> nn.Module:
    """The base model without memory (the baseline of lm eval --hf / lm finetune)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=local_files_only)
    except OSError as e:
        raise ValueError(f"cannot load the plain model from {path!r}: {e}") from e


def _max_positions(model: nn.Module) -> int | None:
    return model.decoder_layout.max_positions


def _hf_tokenizer(path: str, local_files_only: bool) -> TextTokenizer:
    return hf_tokenizer(path, local_files_only=local_files_only)


def hf_eval(args: argparse.Namespace) -> dict[str, Any]:
    """``lm eval --hf PATH``: GPT-2 (``--base``, default: the run's base model) vs GPT-2 + memory."""
    from ..hf.training import evaluate_hf_pair

    device = resolve_device(args.device)
    local = not args.allow_download
    path = str(args.hf)
    meta_path = Path(path) / "finetune_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    base = args.base or meta.get("base_model")
    memory_model = _load_hf_memory_model(path, {}, local).to(device)
    block = args.block_size if args.block_size is not None else memory_model.memory_config.block_size
    check_segment_length(block, _max_positions(memory_model), name="block_size")
    if block != memory_model.memory_config.block_size:
        memory_model = _load_hf_memory_model(path, {"block_size": block}, local).to(device)
    plain = None
    if base and not args.no_baseline:
        plain = _load_plain_model(base, local).to(device)
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
    write_json(args.out or Path(path) / f"eval_{args.split}.json", out)
    return out


def lm_finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune a causal LM + long-term memory on long documents (paper's recipe), then evaluate."""
    from ..hf.training import HFMemoryLM, evaluate_hf_pair

    run = Path(args.run_dir)
    local = not args.allow_download
    changes = parse_overrides(args.override, args.resume)
    _apply_overrides(args, changes, TRAIN_FLAGS + FINETUNE_FLAGS)
    check_int("--block-size", args.block_size)
    check_output_path(run, "--run-dir")
    check_output_path(args.cache_dir, "--cache-dir")
    if not (args.epochs > 0 and math.isfinite(args.epochs)):
        raise ValueError(f"--epochs must be a number > 0, got {args.epochs}")
    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0 (0: from --epochs), got {args.steps}")
    # numeric flags before any data is read (steps from --epochs is known only after tokenizing)
    _train_config(args, run, TRAIN_FLAGS + FINETUNE_FLAGS, steps=args.steps or max(args.warmup, 1))
    memory = flat_memory({"block_size": args.block_size, **overrides(args, memory_flags())})
    if args.no_memory:
        memory["memory_layers"] = []
    settings: dict[str, Any] = {
        "task": "lm_finetune",
        "base_model": str(args.model),
        "overrides": memory,
        "ltm_lr": args.ltm_lr,
        "data": {"source": str(args.data), "train_split": args.train_split, "block_size": args.block_size},
    }
    saved = None
    if args.resume:
        if not (run / CONFIG_FILE).is_file():
            raise ValueError(
                f"--resume: {str(run)!r} holds no {CONFIG_FILE} (no `lm finetune` run to continue)"
            )
        saved = json.loads((run / CONFIG_FILE).read_text())
        early = {k: v for k, v in saved.items() if k != "train"}
        check_resume(run, early, settings, changes)  # the memory settings, before the model loads
    check_splits(args.data, [args.train_split, *eval_splits(args)])
    tok = _hf_tokenizer(args.model, local)
    seed_everything(args.seed)
    hf_model = _load_hf_memory_model(args.model, memory, local)
    check_segment_length(args.block_size, _max_positions(hf_model), name="block_size")
    cache = args.cache_dir or str(run / "cache")
    train_corpus = _load_split(args.data, args.train_split, tok, cache)
    blocks = sum(math.ceil((int(t.numel()) + 1) / args.block_size) for t in train_corpus.tokens)
    steps = args.steps or max(1, math.ceil(args.epochs * blocks / args.batch_size))

    # warmup longer than training is refused, as in lm train
    tcfg = _train_config(args, run, TRAIN_FLAGS + FINETUNE_FLAGS, steps=steps, warmup_steps=args.warmup)
    settings["train"] = tcfg.to_dict()
    if saved is not None:
        check_resume(run, saved, settings, changes)
    settings = {k: settings[k] for k in ("task", "base_model", "overrides", "train", "ltm_lr", "data")}
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
            max_positions=_max_positions(hf_model),
        )
        return LaneStream(lanes, shard.rank, shard.batch_size)

    write_json(run / CONFIG_FILE, settings)
    trainer = Trainer(model, tcfg, train_stream, param_groups=groups, model_config=hf_model.config.to_dict())
    result = trainer.fit(resume=bool(args.resume))
    save_dir = run / "model"
    hf_model.save_pretrained(save_dir)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(args.model, local_files_only=local).save_pretrained(save_dir)
    write_json(save_dir / "finetune_meta.json", {"base_model": str(args.model), "data": str(args.data)})

    out: dict[str, Any] = {
        "machine": machine_info(),
        "base_model": str(args.model),
        "model": str(save_dir),
        "memory": not args.no_memory,
        "block_size": args.block_size,
        "lr": args.lr,
        "ltm_lr": args.ltm_lr,
        "kl_weight": hf_model.memory_config.ltm.kl_weight,
        "sticky": None if args.no_memory else bool(hf_model.memory_config.ltm.sticky),
        **result.summary(),
        "eval": {},
    }
    if not result.stopped_by_signal and eval_splits(args):
        device = resolve_device(args.device)
        hf_model.to(device)
        plain = _load_plain_model(args.model, local).to(device)
        for split in eval_splits(args):
            corpus = _load_split(args.data, split, tok, cache)
            res = evaluate_hf_pair(
                hf_model, plain, corpus, args.block_size, args.batch_size, tok.eos_id, device
            )
            out["eval"][split] = res
            for name, r in res.items():
                print(_summary_line(f"{name}/{split}", r))
    write_json(run / "results.json", out)
    return out


# ------------------------------------------------------------------------------------------- CLI


# flag -> TrainConfig field, for lm train and lm finetune (finetune sets other defaults)
TRAIN_FLAGS: list[Flag] = [
    Flag("--batch-size", "batch_size", int, "B: parallel document lanes (global batch)", default=8),
    Flag("--steps", "steps", int, "optimizer steps", default=1000),
    Flag("--warmup", "warmup_steps", int, "linear warmup steps", default=100, dest="warmup"),
    Flag("--weight-decay", "weight_decay", float, "AdamW weight decay", default=0.0),
    Flag("--ckpt-every", "ckpt_every", int, "checkpoint every N steps (0: at the end)", default=0),
    Flag("--log-every", "log_every", int, "log every N steps", default=10),
    Flag("--seed", "seed", int, "seed of initialisation and training", default=0),
    Flag("--device", "device", str, "auto | cpu | cuda", default="auto", choices=("auto", "cpu", "cuda")),
    PRECISION_FLAG,
]
# lm train only: flag -> TrainConfig field
LM_TRAIN_FLAGS: list[Flag] = [
    Flag("--lr", "lr", float, "peak learning rate (AdamW)", default=2.5e-4),
    Flag("--min-lr-ratio", "min_lr_ratio", float, "final lr / peak lr of the cosine", default=0.0),
    Flag("--clip", "clip", float, "gradient-norm clipping (0: off)", default=0.25),
    Flag("--eval-batch-size", "eval_batch_size", int, "lanes of the periodic evaluation"),
    Flag("--eval-every", "eval_every", int, "evaluate every N steps (0: at the end only)", default=0),
]
# lm finetune only: flag -> TrainConfig field
FINETUNE_FLAGS: list[Flag] = [
    Flag("--lr", "lr", float, "learning rate of GPT-2's weights", default=5e-5),
    Flag("--clip", "clip", float, "gradient-norm clipping (0: off)", default=1.0),
]
# lm train: flag -> ModelConfig field (--set KEY=VALUE reaches every other field)
MODEL_FLAGS: list[Flag] = [
    Flag("--memory-type", "memory_type", str, "memory type", default="infinite_sticky", choices=MEMORY_TYPES),
    Flag("--d-model", "d_model", int, "model width e", default=128),
    Flag("--n-layers", "n_layers", int, "layers", default=2),
    Flag("--n-heads", "n_heads", int, "attention heads H", default=4),
    Flag("--d-inner", "d_inner", int, "feed-forward width", default=512),
    Flag("--dropout", "dropout", float, "dropout", default=0.1),
    Flag("--mem-len", "mem_len", int, "short-term memory length", default=128),
    Flag("--cmem-len", "cmem_len", int, "compressive: compressed memory slots", default=64),
    Flag("--compression-rate", "compression_rate", int, "compressive: compression rate c", default=2),
    *memory_flags(exclude=("sticky",)),  # the memory type decides sticky
]


def _train_config(args: argparse.Namespace, run: Path, flags: list[Flag], **fields: Any) -> TrainConfig:
    """TrainConfig from the command's flags, plus per-command fields."""
    given = overrides(args, flags)
    outputs = dict(out_dir=str(run), progress=not args.no_progress, tensorboard=not args.no_tensorboard)
    return TrainConfig(**{**given, **outputs, **fields})


def _apply_overrides(args: argparse.Namespace, changes: dict[str, Any], flags: list[Flag]) -> None:
    """Put ``--override KEY=VALUE`` values in place of the flags they change."""
    attrs = {f.field: f.attr for f in flags} | {"ltm_lr": "ltm_lr"}
    for key, value in changes.items():
        if key not in attrs or not hasattr(args, attrs[key]):
            raise ValueError(f"--override: {key!r} is not a setting of this command")
        setattr(args, attrs[key], value)


def _model_config(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    """ModelConfig from lm train's flags and --set overrides (which take precedence)."""
    given = overrides(args, MODEL_FLAGS)
    aliases = {old: f"ltm.{new}" for old, new in MODEL_LEGACY_02.items()}  # 0.2's --set ltm_num_bins=8
    return ModelConfig(**merge({"vocab_size": vocab_size}, given, parse_set(args.set, ModelConfig, aliases)))


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, help="corpus: folder with train/ valid/ test/, a folder/.txt, or hf:NAME"
    )
    p.add_argument("--run-dir", default="runs/lm", help="output folder (checkpoints, logs, results.json)")
    p.add_argument("--train-split", default="train")
    p.add_argument(
        "--eval-splits", nargs="*", default=["valid", "test"], help="splits evaluated after training"
    )
    p.add_argument("--cache-dir", default=None, help="token cache (default: <run-dir>/cache)")
    add_flags(p, TRAIN_FLAGS)
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>'s latest checkpoint")
    p.add_argument(
        "--override",
        action="append",
        metavar="KEY=VALUE",
        help=f"with --resume: change one of {', '.join(RESUME_OVERRIDABLE)} (settings must otherwise match)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")


def add_lm_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``lm train | eval | finetune | inspect`` on an argparse subparsers object."""
    lm = subparsers.add_parser("lm", help="long-document language modeling (from scratch, or GPT-2 + memory)")
    sub = lm.add_subparsers(dest="lm_command", required=True)

    t = sub.add_parser(
        "train", help="train a from-scratch LM (xl | compressive | infinite | infinite_sticky)"
    )
    _common_args(t)
    add_flags(t, LM_TRAIN_FLAGS)
    add_flags(t, MODEL_FLAGS)
    t.add_argument("--valid-split", default="valid", help="periodic evaluation split ('' = none)")
    t.add_argument(
        "--tokenizer", default="auto", help="auto | gpt2 | bpe | bytes | a saved tokenizer / GPT-2 folder"
    )
    t.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary when training one")
    t.add_argument("--seg-len", type=int, default=128, help="T: tokens per segment")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other ModelConfig field")
    t.add_argument(
        "--ltm-zero-init-output",
        action="store_true",
        help="∞-former: start the LTM's output projection at 0 (the model starts as Transformer-XL)",
    )
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
    add_flags(e, [PRECISION_FLAG])
    e.set_defaults(lm_func=lm_eval)

    f = sub.add_parser("finetune", help="fine-tune GPT-2 + long-term memory (paper's recipe)")
    _common_args(f)
    add_flags(f, FINETUNE_FLAGS)
    f.set_defaults(steps=0, batch_size=1, warmup=0, run_dir="runs/lm_finetune")
    f.add_argument("--model", default="gpt2", help="GPT-2 folder or hub name")
    f.add_argument("--allow-download", action="store_true", help="allow downloading --model from the hub")
    f.add_argument("--block-size", type=int, default=512, help="L: tokens per sequential block")
    f.add_argument("--epochs", type=float, default=1.0, help="used when --steps is 0")
    f.add_argument("--ltm-lr", type=float, default=2.5e-4, help="learning rate of the new LTM weights")
    add_flags(f, memory_flags())  # default: the model's memory settings, or the Hugging Face preset
    f.add_argument("--no-memory", action="store_true", help="fine-tune GPT-2 alone with the same recipe")
    f.set_defaults(lm_func=lm_finetune)
    add_inspect_parser(  # lm inspect: what the long-term memory holds
        sub,
        load_run=load_trained_lm,
        load_hf=partial(_load_hf_memory_model, overrides={}, local_files_only=True),
    )
    lm.set_defaults(func=run_lm)
    return lm


add_parser = add_lm_parser  # every experiment module offers add_parser(subparsers) to cli.py


def run_lm(args: argparse.Namespace) -> int:
    """Run a parsed ``lm`` command (cli.main turns bad input into a one-line error, exit status 2)."""
    set_threads(getattr(args, "threads", 0))
    out = args.lm_func(args)
    return exit_status(out.get("stop_signal") if isinstance(out, dict) else None)  # 130 / 143 if interrupted
