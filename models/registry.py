"""The model registry: one directory per retrain run, in formats that load without running code.

``<models_dir>/run-000007/`` holds ``meta.json`` (run number, event-time cutoff, what each model
did, customers and items used, fit diagnostics, durations), ``rules.json`` (the market basket
rules of both kinds), ``forecast.json`` (the sales forecast), ``clv.json`` (BG/NBD and Gamma-Gamma
parameters, when the CLV fit succeeded) and ``als.npz`` (the ALS item factors with their product
ids, when the ALS fit succeeded; ``numpy.load(..., allow_pickle=False)`` reads it) and, when a
segment is mapped to it, ``customer2vec.npz`` (product output vectors and ids) with
``customer2vec.json`` (its parameters). No pickle:
a registry directory can be shared without trusting whoever wrote it.

A run is written to a temporary directory and renamed into place, so a reader never finds half
a run.

>>> import tempfile
>>> registry = Registry(Path(tempfile.mkdtemp()))
>>> _ = registry.save(3, {"run": 3, "cutoff": "2018-01-01T00:00:00+00:00"}, clv={"r": 0.2})
>>> [meta["run"] for meta in registry.runs()], registry.show(3)["files"]
([3], ['clv.json', 'meta.json'])
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Registry"]


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, run: int) -> Path:
        return self.root / f"run-{run:06d}"

    def save(
        self,
        run: int,
        meta: dict[str, Any],
        clv: dict[str, Any] | None = None,
        als: dict[str, np.ndarray] | None = None,
        rules: dict[str, Any] | None = None,
        forecast: dict[str, Any] | None = None,
        customer2vec: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None,
        uplift: dict[str, Any] | None = None,
    ) -> Path:
        final = self.path(run)
        staging = self.root / f".{final.name}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if clv is not None:
            (staging / "clv.json").write_text(json.dumps(clv, indent=2))
        for name, document in (("rules", rules), ("forecast", forecast), ("uplift", uplift)):
            if document is not None:
                (staging / f"{name}.json").write_text(json.dumps(document, indent=2))
        if customer2vec is not None:  # vectors as arrays, parameters as JSON: gensim's own save is pickle
            np.savez(staging / "customer2vec.npz", **customer2vec[0])
            (staging / "customer2vec.json").write_text(json.dumps(customer2vec[1], indent=2))
        if als is not None:
            np.savez(staging / "als.npz", **als)
        (staging / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        staging.rename(final)
        return final

    def runs(self) -> list[dict[str, Any]]:
        """The metadata of every run, oldest first."""
        if not self.root.is_dir():
            return []
        return [json.loads((path / "meta.json").read_text()) for path in sorted(self.root.glob("run-*"))]

    def show(self, run: int) -> dict[str, Any]:
        path = self.path(run)
        if not (path / "meta.json").is_file():
            raise FileNotFoundError(f"no run {run} in {self.root}")
        meta = json.loads((path / "meta.json").read_text())
        meta["files"] = sorted(child.name for child in path.iterdir())
        if (path / "clv.json").is_file():
            meta["clv_params"] = json.loads((path / "clv.json").read_text())
        return meta
