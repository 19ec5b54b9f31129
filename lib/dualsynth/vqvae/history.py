"""The training record of :func:`~dualsynth.vqvae.training.train_vqvae`: ``history.csv`` rows and reconstruction
snapshots (``snapshots.npz``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..io import atomic_save_npz, read_rows_csv, write_rows_csv

__all__ = ["HISTORY_COLUMNS", "VQVAEHistory"]

#: Columns of ``history.csv`` / :class:`VQVAEHistory` rows, in order.
HISTORY_COLUMNS: tuple[str, ...] = (
    "step",
    "train_loss",
    "train_recon_mse",
    "vq_loss",
    "perplexity",
    "val_recon_mse",
    "codes_used",
)



@dataclass
class VQVAEHistory:
    """Training record returned by :func:`train_vqvae`.

    ``rows``: one dict per evaluation with the keys of :data:`HISTORY_COLUMNS`.
    ``snapshots``: step -> reconstructions (n, H, W, C) float32 of
    ``snapshot_inputs`` (the first few validation images).
    ``history["val_recon_mse"]`` gives a column as a numpy array.
    ``checkpoint_on``: what the ``best`` checkpoint minimises (``val`` or ``train`` reconstruction MSE).
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)
    snapshot_inputs: np.ndarray | None = None
    data_variance: float | None = None
    checkpoint_dir: Path | None = None
    final_step: int = 0
    resumed_from_step: int = 0
    seconds_per_step: float | None = None
    checkpoint_on: str = "val"

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, column: str) -> np.ndarray:
        if column not in HISTORY_COLUMNS:
            raise KeyError(f"unknown history column {column!r}; columns: {HISTORY_COLUMNS}")
        dtype = np.int64 if column == "step" else np.float64
        return np.asarray([r[column] for r in self.rows], dtype=dtype)

    @property
    def steps(self) -> np.ndarray:
        return self["step"]

    @property
    def best_column(self) -> str:
        """The column the ``best`` checkpoint minimises: ``val_recon_mse`` or ``train_recon_mse``."""
        return "train_recon_mse" if self.checkpoint_on == "train" else "val_recon_mse"

    @property
    def best_step(self) -> int | None:
        """Step of the lowest finite value of :attr:`best_column` (the ``best`` checkpoint)."""
        best = None
        for r in self.rows:
            v = r[self.best_column]
            if math.isfinite(v) and (best is None or v < best[1]):
                best = (int(r["step"]), v)
        return None if best is None else best[0]

    def as_dict(self) -> dict[str, np.ndarray]:
        return {c: self[c] for c in HISTORY_COLUMNS}

    def to_csv(self, path: str | Path) -> None:
        _write_history_csv(Path(path), self.rows)

    @staticmethod
    def read_csv(path: str | Path) -> list[dict[str, float]]:
        return _read_history_csv(Path(path))


def _write_history_csv(path: Path, rows: Sequence[Mapping[str, float]]) -> None:
    write_rows_csv(path, HISTORY_COLUMNS, rows, int_columns=("step",))


def _read_history_csv(path: Path) -> list[dict[str, float]]:
    return read_rows_csv(path, HISTORY_COLUMNS, int_columns=("step",))


def _save_snapshots(path: Path, inputs: np.ndarray, snapshots: Mapping[int, np.ndarray]) -> None:
    arrays = {"inputs": inputs}
    for step, rec in snapshots.items():
        arrays[f"step_{int(step)}"] = rec
    atomic_save_npz(path, **arrays)


def _load_snapshots(path: Path, max_step: int) -> dict[int, np.ndarray]:
    if not path.exists():
        return {}
    out = {}
    with np.load(path) as data:
        for key in data.files:
            if key.startswith("step_"):
                step = int(key[len("step_"):])
                if step <= max_step:
                    out[step] = data[key]
    return out
