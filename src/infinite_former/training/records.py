"""Resumable benchmark runs: one JSON record per (variant, seed), written as each run finishes.

    records = RunRecords("results/x_runs", settings_hash(SETTINGS))
    records.run_missing(seeds, variants, run_one, describe)   # skips what is done
    by_variant = records.load(variants)                        # {variant: {seed: record}}

A record counts only under the settings that wrote it: it carries ``settings_key`` (a short hash
of the settings), and records of other settings are skipped and ignored. So a long benchmark can
be stopped, its finished records committed, and ``run_missing`` started again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import nn

from ..utils import machine_info, write_json
from .logs import loss_curve


def settings_hash(settings: Any) -> str:
    """12 hex digits of the SHA-1 of ``settings`` as sorted-key JSON."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def per_document_nll(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{document: {nll, tokens, bytes}} (summed NLL in nats) from an evaluation's per-document
    perplexities: what a record keeps for the paired statistics."""
    return {
        doc: {"nll": math.log(v["ppl"]) * v["tokens"], "tokens": v["tokens"], "bytes": v["bytes"]}
        for doc, v in result["per_document"].items()
    }


def nll_per_token(per_document: dict[str, dict[str, float]], docs: list[str]) -> list[float]:
    """Mean NLL per token of each of ``docs`` (one seed's units for infinite_former.stats)."""
    return [per_document[d]["nll"] / per_document[d]["tokens"] for d in docs]


def parameter_counts(model: nn.Module, base: nn.Module) -> dict[str, int]:
    """{"total", "base", "memory"}: the parameters of ``model``, of ``base`` (the same model without
    its memory, e.g. built from the same config with the memory off), and what the memory adds."""
    total, own = (sum(p.numel() for p in m.parameters()) for m in (model, base))
    return {"total": total, "base": own, "memory": total - own}


def finished_run(summary: dict[str, Any], run_dir: str | os.PathLike, started: float) -> dict[str, Any]:
    """The fields every record keeps of a finished training run: ``summary`` is
    ``TrainResult.summary()``, ``started`` the ``time.perf_counter()`` before the run."""
    return {
        "train_seconds": summary["train_seconds"],
        "seconds": time.perf_counter() - started,
        "final_train_loss": summary["train_loss_last"],
        "loss_curve": loss_curve(run_dir, every=100),
        "machine": machine_info(precision=summary.get("precision")),
    }


def portable_path(path: str | os.PathLike) -> str:
    """A path as a results file records it, without the machine's absolute prefix: from its ``runs``
    folder on (``runs/gpt2-shakespeare/...``) where it has one, else its last part."""
    parts = Path(path).parts
    return str(Path(*parts[parts.index("runs") :])) if "runs" in parts else Path(path).name


class RunRecords:
    """The folder of one benchmark's records, ``<variant>-seed<k>.json``, under one settings key."""

    def __init__(self, folder: str | os.PathLike, key: str) -> None:
        self.folder, self.key = Path(folder), key

    def path(self, variant: str, seed: int) -> Path:
        return self.folder / f"{variant}-seed{seed}.json"

    def done(self, variant: str, seed: int) -> bool:
        path = self.path(variant, seed)
        return path.is_file() and json.loads(path.read_text()).get("settings_key") == self.key

    def write(self, variant: str, seed: int, record: dict[str, Any]) -> None:
        write_json(
            self.path(variant, seed), {"variant": variant, "seed": seed, "settings_key": self.key, **record}
        )

    def run_missing(
        self,
        seeds: Iterable[int],
        variants: Iterable[str],
        run_one: Callable[[str, int], dict[str, Any]],
        describe: Callable[[dict[str, Any]], str] = lambda rec: "",
    ) -> None:
        """Run and record every (variant, seed) not done yet, seed-major, so that a partial
        benchmark stays balanced across variants."""
        variants = list(variants)
        for seed in seeds:
            for variant in variants:
                if self.done(variant, seed):
                    print(f"skip {self.path(variant, seed).name} (done)", flush=True)
                    continue
                record = run_one(variant, seed)
                self.write(variant, seed, record)
                print(f"seed {seed} {variant:16s} {describe(record)}", flush=True)

    def load(self, variants: Iterable[str]) -> dict[str, dict[int, dict[str, Any]]]:
        """{variant: {seed: record}} of the records made under this key."""
        out: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in variants}
        for path in sorted(self.folder.glob("*-seed*.json")):
            rec = json.loads(path.read_text())
            if rec.get("settings_key") == self.key and rec.get("variant") in out:
                out[rec["variant"]][rec["seed"]] = rec
        return out


__all__ = [
    "RunRecords",
    "finished_run",
    "nll_per_token",
    "parameter_counts",
    "per_document_nll",
    "portable_path",
    "settings_hash",
]
