"""``infinite-former lm inspect --run R | --hf FOLDER --text FILE [--out DIR]``: what a memory holds.

Reads one document through the model of a ``lm train`` run (``--run``) with
:func:`infinite_former.introspection.inspect_document`, or through a Hugging Face causal LM with
memory (``--hf``: a folder saved with its memory, e.g. ``<lm finetune run>/model``; tokenizer from
the folder) with :func:`infinite_former.hf.introspection.inspect_hf_document`, and writes the
figures and ``inspect.json`` (:func:`~infinite_former.introspection.write_report`) into
``<run>/inspect`` (``<FOLDER>/inspect``) or ``--out``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from ..data.tokenizer import TextTokenizer, hf_tokenizer
from ..introspection import InspectConfig, MemoryReport, inspect_document, write_report
from ..utils import check_int, check_output_path
from .flags import resolve_device

LoadRun = Callable[[str | os.PathLike], tuple[nn.Module, TextTokenizer, dict[str, Any]]]
LoadHF = Callable[[str], nn.Module]


def inspect_run(
    run: str | os.PathLike,
    text: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    device: str = "auto",
    config: InspectConfig | None = None,
    seg_len: int | None = None,
    *,
    load_run: LoadRun,
) -> dict[str, Any]:
    """Read ``text`` through the model of a ``lm train`` run; write the report into out_dir
    (default ``<run>/inspect``). Returns the JSON written."""
    body = _read_text(text)
    model, tok, saved = load_run(run)
    dev = resolve_device(device)
    model.to(dev)
    seg = seg_len if seg_len is not None else saved["data"]["seg_len"]
    report = inspect_document(model, tok.encode(body), seg, config, dev)
    report.meta.update(run=Path(run).name, text=Path(text).name, step=saved["step"])
    return _write(report, Path(out_dir) if out_dir is not None else Path(run) / "inspect")


def inspect_hf(
    folder: str | os.PathLike,
    text: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    device: str = "auto",
    config: InspectConfig | None = None,
    *,
    load_hf: LoadHF,
) -> dict[str, Any]:
    """Read ``text`` through the causal LM with memory saved in ``folder`` (its tokenizer too), in
    blocks of its block_size; write the report into out_dir (default ``<folder>/inspect``).
    load_hf(folder) -> model is experiments.lm's loader of ``lm eval --hf``. Returns the JSON written."""
    body = _read_text(text)
    _check_saved_with_memory(folder)
    from ..hf.introspection import inspect_hf_document  # deferred: transformers loads only for --hf

    tok = hf_tokenizer(folder)
    model = load_hf(str(folder))
    if not len(model.ltm):
        raise ValueError(f"--hf: {str(folder)!r} was saved without memory layers (memory_layers is empty)")
    dev = resolve_device(device)
    model.to(dev)
    report = inspect_hf_document(model, tok.encode(body), config, dev)
    report.meta.update(model=Path(folder).name, text=Path(text).name)
    return _write(report, Path(out_dir) if out_dir is not None else Path(folder) / "inspect")


def _read_text(text: str | os.PathLike) -> str:
    if not Path(text).is_file():
        raise ValueError(f"--text: {str(text)!r} is not a file")
    try:
        return Path(text).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--text: {str(text)!r} is not UTF-8 text ({e})") from e


def _check_saved_with_memory(folder: str | os.PathLike) -> None:
    """--hf must be a local model folder saved with its memory (an ``infinite-gpt2`` config, or one
    with ``infinite_memory`` settings from add_memory): a plain model's memory would be untrained."""
    if not Path(folder).is_dir() or not (Path(folder) / "config.json").is_file():
        raise ValueError(f"--hf: {str(folder)!r} is not a model folder (no config.json)")
    from transformers import AutoConfig

    from ..hf import InfiniteGPT2Config  # registers the infinite-gpt2 model type

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"--hf: cannot read the model config in {str(folder)!r}: {e}") from e
    if config.model_type != InfiniteGPT2Config.model_type and not isinstance(
        getattr(config, "infinite_memory", None), dict
    ):
        raise ValueError(
            f"--hf: {str(folder)!r} holds a {config.model_type} model without memory; give a folder saved "
            "with one (lm finetune's <run>/model, or save_pretrained of a model from hf.add_memory)"
        )


def _write(report: MemoryReport, out: Path) -> dict[str, Any]:
    """Write the report into ``out`` and print one line per layer; returns the JSON written."""
    write_report(report, out)
    data = json.loads((out / "inspect.json").read_text())
    for layer in data["layers"]:
        at = ", ".join(
            f"{int(a):,}: {v['relative_error']:.3f}" if v["relative_error"] is not None else f"{int(a):,}: –"
            for a, v in layer["reconstruction"]["at_age"].items()
        )
        med = layer["median_attention_age"]
        print(
            f"layer {layer['layer']}: median attention age {med:,.0f} tokens; "
            f"reconstruction error by age ({at})"
            if med is not None
            else f"layer {layer['layer']}: the memory was never read"
        )
    print(f"wrote {out}/{{{', '.join(data['files'].values())}}}")
    return data


def add_inspect_parser(sub: Any, load_run: LoadRun, load_hf: LoadHF) -> None:
    """Register ``lm inspect`` on the ``lm`` subparsers; load_run(run_dir) -> (model, tokenizer,
    lm_config) is experiments.lm.load_trained_lm and load_hf(folder) -> model its loader of HF
    models with memory (passed in: this module does not import lm)."""
    p = sub.add_parser("inspect", help="what the long-term memory holds and where it is read (PNGs + JSON)")
    p.add_argument("--run", default=None, help="a `lm train` run folder (memory type infinite*)")
    p.add_argument(
        "--hf",
        default=None,
        help="or a Hugging Face model folder saved with its memory (lm finetune's model/)",
    )
    p.add_argument("--text", required=True, help="a UTF-8 text file: the document to read")
    p.add_argument("--out", default=None, help="output folder (default: <run or folder>/inspect)")
    p.add_argument(
        "--seg-len", type=int, default=None, help="--run: tokens per segment (default: training's)"
    )
    p.add_argument("--grid-points", type=int, default=1024, help="cells of [0, 1] for the age map")
    p.add_argument("--max-tracked", type=int, default=2048, help="tokens tracked for reconstruction")
    p.add_argument("--seed", type=int, default=0, help="seed of sticky sampling's draws")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.set_defaults(lm_func=partial(_run_inspect, load_run=load_run, load_hf=load_hf))


def _run_inspect(args: Any, load_run: LoadRun, load_hf: LoadHF) -> dict[str, Any]:
    if (args.run is None) == (args.hf is None):
        raise ValueError("lm inspect: give exactly one of --run (a lm train run) and --hf (a model folder)")
    config = InspectConfig(grid_points=args.grid_points, max_tracked=args.max_tracked, seed=args.seed)
    if args.seg_len is not None:
        check_int("--seg-len", args.seg_len)  # 0 is not "the default"
    check_output_path(args.out, "--out")
    if args.hf is not None:
        if args.seg_len is not None:
            raise ValueError("--seg-len: only with --run (--hf reads in blocks of the model's block_size)")
        return inspect_hf(args.hf, args.text, args.out, args.device, config, load_hf=load_hf)
    return inspect_run(args.run, args.text, args.out, args.device, config, args.seg_len, load_run=load_run)
