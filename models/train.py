"""`python -m models.train`: from a data file to a run folder (checkpoint, metrics.json, plots).

Settings come from defaults, then an optional TOML file (`--config`, flat keys named like the flags with
underscores), then the flags. Example:

    python -m models.train --data feature.mat --seq-len 20 --cell lstm --hidden 32 --out runs/tutorial
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from models import checkpoint, data, evaluate, trainer
from models.model import ModelConfig, SequenceClassifier

log = logging.getLogger("models.train")


@dataclass
class RunConfig:
    data: str = ""
    out: str = ""
    label_column: str | None = None
    sequence_column: str | None = None
    time_column: str | None = None
    feature_columns: list[str] | None = None
    mat_variable: str = "feature"
    seq_len: int = 50
    stride: int | None = None  # default: seq_len (no overlap)
    split_block: int | None = None  # default: 10 * seq_len
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    cell: str = "lstm"
    hidden: int = 32
    layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    head: str = "per_timestep"
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_step: int = 50
    lr_gamma: float = 0.2
    grad_clip: float = 1.0
    patience: int = 20
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.head = self.head.replace("-", "_")
        self.stride = self.stride or self.seq_len
        self.split_block = self.split_block or 10 * self.seq_len
        if not self.data:
            raise SystemExit("error: --data PATH is required (or `data = ...` in the --config file)")
        if not self.out:
            self.out = f"runs/{time.strftime('%Y%m%d-%H%M%S')}"

    def columns(self) -> data.Columns:
        mat = Path(self.data).suffix.lower() == ".mat"
        default = data.MAT_COLUMNS if mat else data.CSV_COLUMNS

        def role(value: str | None, fallback: str | int | None) -> str | int | None:
            if value is None:
                return fallback
            return None if str(value).lower() == "none" else value

        return data.Columns(
            label=role(self.label_column, default.label),
            sequence=role(self.sequence_column, default.sequence),
            time=role(self.time_column, default.time),
            features=tuple(self.feature_columns) if self.feature_columns else None,
            mat_variable=self.mat_variable,
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", type=Path, help="TOML file of settings; flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="a .mat, .csv or .npz file (format from the extension)")
    g.add_argument("--label-column", help="label column: a CSV header name or a .mat column index (default: last)")
    g.add_argument("--sequence-column", help="column of sequence ids; absent: one long stream")
    g.add_argument("--time-column", help="column to order rows by ('none' to keep file order; .mat default: 0)")
    g.add_argument("--feature-columns", nargs="+", help="feature columns (default: all others)")
    g.add_argument("--mat-variable", help="name of the matrix in a .mat file (default: feature)")
    g.add_argument("--seq-len", type=int, help="window length in timesteps (default 50)")
    g.add_argument("--stride", type=int, help="steps between window starts (default: seq-len)")
    g.add_argument("--split-block", type=int, help="contiguous steps dealt to one split (default 10 x seq-len)")
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--test-fraction", type=float)
    m = p.add_argument_group("model")
    m.add_argument("--cell", choices=["rnn", "gru", "lstm"])
    m.add_argument("--hidden", type=int, help="hidden size (default 32)")
    m.add_argument("--layers", type=int)
    m.add_argument("--bidirectional", action="store_true")
    m.add_argument("--dropout", type=float)
    m.add_argument("--head", choices=["per-timestep", "per_timestep", "last"])
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--lr-step", type=int, help="StepLR step size in epochs (default 50)")
    t.add_argument("--lr-gamma", type=float, help="StepLR factor (default 0.2)")
    t.add_argument("--grad-clip", type=float, help="max gradient norm, 0 to disable (default 1.0)")
    t.add_argument("--patience", type=int, help="early stopping: epochs without validation improvement")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    t.add_argument("--no-progress", dest="progress", action="store_false")
    t.add_argument("--out", help="run folder to write (default runs/<timestamp>)")
    return p


def resolve_config(argv: list[str] | None = None) -> RunConfig:
    args = vars(build_parser().parse_args(argv))
    settings: dict[str, Any] = {}
    if (config_path := args.pop("config", None)) is not None:
        with config_path.open("rb") as f:
            settings = tomllib.load(f)
        known = {f.name for f in fields(RunConfig)}
        if unknown := sorted(set(settings) - known):
            raise SystemExit(f"error: {config_path}: unknown settings {unknown}; known: {sorted(known)}")
    settings.update(args)
    return RunConfig(**settings)


def run(cfg: RunConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer.seed_everything(cfg.seed)
    device = trainer.pick_device(cfg.device)
    dataset = data.load(cfg.data, cfg.columns())
    split = data.split_blocks(dataset, cfg.split_block, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    log.info(
        "%s: %d recordings, %d features, classes %s; split blocks train/val/test %d/%d/%d",
        cfg.data,
        len(dataset.recordings),
        len(dataset.feature_names),
        dataset.class_names,
        len(split.train),
        len(split.val),
        len(split.test),
    )
    loaders = _loaders(cfg, dataset, split)
    model_config = ModelConfig(
        input_dim=len(dataset.feature_names),
        num_classes=len(dataset.class_names),
        cell=cfg.cell,
        hidden_size=cfg.hidden,
        num_layers=cfg.layers,
        bidirectional=cfg.bidirectional,
        dropout=cfg.dropout,
        head=cfg.head,
    )
    model = SequenceClassifier(model_config)
    model.set_normalization(*data.fit_normalization(split.train))  # training split only
    model.to(device)
    log.info("model %s: %d parameters, device %s", model_config, model.parameter_count(), device)
    # The training loop's settings are the run's settings of the same names.
    train_config = trainer.TrainConfig(**{f.name: getattr(cfg, f.name) for f in fields(trainer.TrainConfig)})
    history = trainer.fit(model, loaders["train"], loaders["val"], train_config)
    test = trainer.evaluate(model, loaders["test"], device)
    metrics = evaluate.classification_metrics(test.y_true, test.y_pred, dataset.class_names)
    metrics.update(
        split="test",
        unit="timestep" if cfg.head == "per_timestep" else "sequence",
        test_loss=test.loss,
        parameter_count=model.parameter_count(),
        best_epoch=history.best_epoch,
        epochs_run=len(history.train_loss),
    )
    _write_run(out, cfg, model, dataset, history, metrics)
    log.info("test accuracy %.4f, macro-F1 %.4f -> %s", metrics["accuracy"], metrics["macro_f1"], out)
    return metrics


def _loaders(cfg: RunConfig, dataset: data.LabelledData, split: data.Split) -> dict[str, DataLoader]:
    def loader(recordings: list[data.Recording], stride: int, shuffle: bool) -> DataLoader:
        windows = data.WindowDataset(dataset, recordings, cfg.seq_len, stride)
        generator = torch.Generator().manual_seed(cfg.seed)
        return DataLoader(
            windows, batch_size=cfg.batch_size, shuffle=shuffle, collate_fn=data.collate, generator=generator
        )

    # Evaluation windows do not overlap, so every held-out timestep counts once.
    return {
        "train": loader(split.train, cfg.stride, shuffle=True),
        "val": loader(split.val, cfg.seq_len, shuffle=False),
        "test": loader(split.test, cfg.seq_len, shuffle=False),
    }


def _write_run(
    out: Path,
    cfg: RunConfig,
    model: SequenceClassifier,
    dataset: data.LabelledData,
    history: trainer.History,
    metrics: dict[str, Any],
) -> None:
    checkpoint.save(
        out / checkpoint.CHECKPOINT_FILE,
        checkpoint.Checkpoint(
            model,
            dataset.feature_names,
            dataset.class_names,
            cfg.seq_len,
            extra={"data": str(cfg.data), "seed": cfg.seed, "stride": cfg.stride},
        ),
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "history.json").write_text(json.dumps(asdict(history), indent=2))
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    evaluate.plot_curves(history, out / "curves.png")
    evaluate.plot_confusion(metrics["confusion_matrix"], dataset.class_names, out / "confusion_matrix.png")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = resolve_config(argv)
    try:
        run(cfg)
    except data.DataError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
