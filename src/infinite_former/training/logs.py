"""Training logs: CSV (train_log.csv, eval_log.csv) and TensorBoard (tb/), written on the main process."""

from __future__ import annotations

import csv
import os
import statistics
import time
from typing import Any


class TrainLogger:
    """CSV (train_log.csv, eval_log.csv) and TensorBoard (tb/) on the main process."""

    TRAIN_FIELDS = ["step", "loss", "aux_loss", "lr", "grad_norm", "tokens_per_s", "time"]

    def __init__(self, out_dir: str, tensorboard: bool, active: bool, start_step: int) -> None:
        self.active = active
        self.tb = None
        if not active:
            return
        os.makedirs(out_dir, exist_ok=True)
        self.train_path = os.path.join(out_dir, "train_log.csv")
        self.eval_path = os.path.join(out_dir, "eval_log.csv")
        for path in (self.train_path, self.eval_path):
            truncate_csv(path, start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=start_step + 1)
            except ImportError:  # tensorboard not installed: CSV only
                self.tb = None

    def _append(self, path: str, header: list[str], rows: list[list[Any]]) -> None:
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(header)
            w.writerows(rows)

    def train(self, step: int, loss: float, aux: float, lr: float, grad_norm: float, tok_s: float) -> None:
        if not self.active:
            return
        self._append(
            self.train_path, self.TRAIN_FIELDS, [[step, loss, aux, lr, grad_norm, tok_s, time.time()]]
        )
        if self.tb is not None:
            for k, v in (
                ("loss", loss),
                ("aux_loss", aux),
                ("lr", lr),
                ("grad_norm", grad_norm),
                ("tokens_per_s", tok_s),
            ):
                self.tb.add_scalar(f"train/{k}", v, step)

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        self._append(self.eval_path, ["step", "metric", "value"], [[step, k, v] for k, v in metrics.items()])
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def truncate_csv(path: str, step: int) -> None:
    """Drop rows logged after `step` (they belong to steps a resumed run will redo)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    if len(kept) != len(rows):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(kept)


def loss_curve(run_dir: str | os.PathLike, every: int) -> list[list[float]]:
    """[step, mean training loss over the `every` steps ending there] from a run's train_log.csv."""
    with open(os.path.join(run_dir, "train_log.csv")) as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    curve = []
    for end in range(every, rows[-1][0] + 1, every):
        window = [loss for step, loss in rows if end - every < step <= end]
        if window:
            curve.append([end, statistics.fmean(window)])
    return curve
