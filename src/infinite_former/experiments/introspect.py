"""``infinite-former lm inspect --run R --text FILE [--out DIR]``: what a trained ∞-former's memory holds.

Reads one document through the model of a ``lm train`` run with
:func:`infinite_former.introspection.inspect_document` and writes the figures and ``inspect.json``
(:func:`~infinite_former.introspection.write_report`) into ``<run>/inspect`` or ``--out``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from ..data.tokenizer import TextTokenizer
from ..introspection import InspectConfig, inspect_document, write_report
from .flags import resolve_device

LoadRun = Callable[[str | os.PathLike], tuple[nn.Module, TextTokenizer, dict[str, Any]]]


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
    if not Path(text).is_file():
        raise ValueError(f"--text: {str(text)!r} is not a file")
    try:
        body = Path(text).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--text: {str(text)!r} is not UTF-8 text ({e})") from e
    model, tok, saved = load_run(run)
    dev = resolve_device(device)
    model.to(dev)
    seg = seg_len or saved["data"]["seg_len"]
    report = inspect_document(model, tok.encode(body), seg, config, dev)
    report.meta.update(run=Path(run).name, text=Path(text).name, step=saved["step"])
    out = Path(out_dir) if out_dir is not None else Path(run) / "inspect"
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


def add_inspect_parser(sub: Any, load_run: LoadRun) -> None:
    """Register ``lm inspect`` on the ``lm`` subparsers; load_run(run_dir) -> (model, tokenizer,
    lm_config) is experiments.lm.load_trained_lm (passed in: this module does not import lm)."""
    p = sub.add_parser("inspect", help="what the long-term memory holds and where it is read (PNGs + JSON)")
    p.add_argument("--run", required=True, help="a `lm train` run folder (memory type infinite*)")
    p.add_argument("--text", required=True, help="a UTF-8 text file: the document to read")
    p.add_argument("--out", default=None, help="output folder (default: <run>/inspect)")
    p.add_argument("--seg-len", type=int, default=None, help="tokens per segment (default: training's)")
    p.add_argument("--grid-points", type=int, default=1024, help="cells of [0, 1] for the age map")
    p.add_argument("--max-tracked", type=int, default=2048, help="tokens tracked for reconstruction")
    p.add_argument("--seed", type=int, default=0, help="seed of sticky sampling's draws")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.set_defaults(lm_func=partial(_run_inspect, load_run=load_run))


def _run_inspect(args: Any, load_run: LoadRun) -> dict[str, Any]:
    config = InspectConfig(grid_points=args.grid_points, max_tracked=args.max_tracked, seed=args.seed)
    return inspect_run(args.run, args.text, args.out, args.device, config, args.seg_len, load_run=load_run)
