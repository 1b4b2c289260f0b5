"""`python -m models.train`: from a data file to a run folder (checkpoint, metrics.json, plots).

Settings come from defaults, then an optional TOML file (`--config`, flat keys named like the flags with
underscores), then the flags. Example:

    python -m models.train --data feature.mat --seq-len 20 --cell lstm --hidden 32 --out runs/tutorial

Each setting is defined once, as a dataclass field with its type and default: the data, device and output settings
in `RunConfig`, the model's in `ModelConfig` (but `input_dim` and `num_classes`, which the data decides), the
training loop's in `TrainConfig`. The flags, the TOML keys, the defaults `--help` shows and the run folder's
config.json are derived from those fields; `HELP` adds a sentence to each, and `SETTING_NAMES` keeps the documented
names of the two model fields whose flag is shorter (`--hidden`, `--layers`).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
import tomllib
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import torch
from torch.utils.data import DataLoader

from models import checkpoint, data, evaluate, trainer
from models.model import ModelConfig, SequenceClassifier

log = logging.getLogger("models.train")

# ModelConfig fields that the data decides, so they are no settings.
FROM_DATA = ("input_dim", "num_classes")
# field -> setting name, where the documented flag (and TOML key) is shorter than the ModelConfig field.
SETTING_NAMES = {"hidden_size": "hidden", "num_layers": "layers"}
# One sentence per setting, keyed by field name; `--help` adds each field's default.
HELP: dict[str, str] = {
    "data": "a .mat, .csv or .npz file (format from the extension); required",
    "label_column": "label column: a CSV header name or a .mat column index (default: label in CSV, -1 in .mat)",
    "sequence_column": "column of sequence ids; absent: one long stream",
    "time_column": "column to order rows by ('none' to keep file order; .mat default: 0)",
    "feature_columns": "feature columns (default: all others)",
    "mat_variable": "name of the matrix in a .mat file",
    "seq_len": "window length in timesteps",
    "stride": "steps between the starts of training windows (default: seq-len)",
    "split_block": "contiguous steps dealt to one split (default: 10 x seq-len)",
    "val_fraction": "share of the split blocks held out for validation",
    "test_fraction": "share of the split blocks held out for the test",
    "device": "auto (CUDA when available), cpu, cuda, cuda:1 ...",
    "out": "run folder to write (default: runs/<timestamp>)",
    "cell": "recurrent cell",
    "hidden_size": "hidden size: units per layer and direction",
    "num_layers": "stacked recurrent layers",
    "bidirectional": "also read each window backwards (such a model cannot stream)",
    "dropout": "dropout between recurrent layers and before the head",
    "head": "per-timestep: a class for every timestep; last: one per sequence, at its true last step",
    "epochs": "most epochs to train",
    "batch_size": "windows per batch",
    "lr": "Adam learning rate",
    "weight_decay": "Adam weight decay",
    "lr_step": "StepLR step size in epochs",
    "lr_gamma": "StepLR factor",
    "grad_clip": "max gradient norm, 0 to disable",
    "patience": "early stopping: epochs without validation improvement",
    "seed": "seed of the split, the shuffling and the initial weights",
    "progress": "turn off the tqdm progress bar (TOML: progress = false)",
}
GROUPS = {"run": "data, device and output", "model": "model", "train": "training"}
NO_STREAMING = (
    "bidirectional: the backward direction reads each window from its end, so no state can be carried forward"
)


@dataclass
class RunConfig:
    """One training run: the data and its windows, the device and the run folder; the model's settings (`model`:
    ModelConfig's fields by name, but those the data decides) and the training loop's `TrainConfig` (`train`)."""

    data: str = ""
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
    device: str = "auto"
    out: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    train: trainer.TrainConfig = field(default_factory=trainer.TrainConfig)

    def __post_init__(self) -> None:
        self.stride = self.stride or self.seq_len
        self.split_block = self.split_block or 10 * self.seq_len
        if not self.data:
            raise SystemExit("error: --data PATH is required (or `data = ...` in the --config file)")
        if not self.out:
            self.out = f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
        defaults = {f.name: f.default for f in fields(ModelConfig) if f.name not in FROM_DATA}
        self.model = {**defaults, **self.model}
        self.model_config(input_dim=1, num_classes=2)  # stand-in sizes: a bad setting fails before the data is read

    @classmethod
    def from_settings(cls, flat: Mapping[str, Any]) -> RunConfig:
        """From flat settings named like the flags with underscores (the TOML keys, config.json's keys)."""
        table = settings_table()
        if unknown := sorted(set(flat) - set(table)):
            raise ValueError(f"unknown settings {unknown}; known: {sorted(table)}")
        parts: dict[str, dict[str, Any]] = {part: {} for part in GROUPS}
        for name, value in flat.items():
            setting = table[name]
            parts[setting.part][setting.field] = setting.spelled(value)
        return cls(**parts["run"], model=parts["model"], train=trainer.TrainConfig(**parts["train"]))

    def settings(self) -> dict[str, Any]:
        """Every setting by its flat name: what config.json records, and what `from_settings` takes back."""
        values = {"run": vars(self), "model": self.model, "train": vars(self.train)}
        return {name: values[s.part][s.field] for name, s in settings_table().items()}

    def model_config(self, input_dim: int, num_classes: int) -> ModelConfig:
        """The model, once the data has said how many features and classes there are."""
        return ModelConfig(input_dim=input_dim, num_classes=num_classes, **self.model)

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


# ------------------------------------------------------------------------------------- settings and flags


@dataclass(frozen=True)
class Setting:
    """One flat setting: `name` is its TOML key (the flag is `--name` with hyphens); it sets `field` of a part
    ("run": RunConfig itself, "model": ModelConfig's fields, "train": TrainConfig), with that field's type and
    default."""

    name: str
    part: str
    field: str
    type: Any
    default: Any

    @property
    def choices(self) -> tuple[str, ...] | None:
        return get_args(self.type) if get_origin(self.type) is Literal else None

    def spelled(self, value: Any) -> Any:
        """A choice may be spelled with hyphens, as on the command line (`per-timestep`)."""
        return value.replace("-", "_") if self.choices and isinstance(value, str) else value

    def shown(self, value: Any) -> str:
        """A choice as the command line spells it."""
        return value.replace("_", "-") if self.choices and isinstance(value, str) else str(value)


@functools.cache
def settings_table() -> dict[str, Setting]:
    """name -> Setting for every field of RunConfig (but its parts), ModelConfig (but FROM_DATA) and TrainConfig."""
    sources = {
        "run": (RunConfig, ("model", "train")),
        "model": (ModelConfig, FROM_DATA),
        "train": (trainer.TrainConfig, ()),
    }
    table = {}
    for part, (cls, skip) in sources.items():
        hints = get_type_hints(cls)
        for f in fields(cls):
            if f.name in skip:
                continue
            name = SETTING_NAMES.get(f.name, f.name)
            table[name] = Setting(name, part, f.name, _without_none(hints[f.name]), f.default)
    return table


def _without_none(kind: Any) -> Any:
    """`X | None` -> X: None is each optional setting's default, never a value to type."""
    if get_origin(kind) in (Union, types.UnionType):
        (kind,) = (a for a in get_args(kind) if a is not type(None))
    return kind


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only the flags given, so they override the TOML file and no more
    )
    p.add_argument("--config", type=Path, help="TOML file of settings; flags override it")
    groups = {part: p.add_argument_group(title) for part, title in GROUPS.items()}
    for setting in settings_table().values():
        _add_flag(groups[setting.part], setting)
    return p


def _add_flag(group: argparse._ArgumentGroup, setting: Setting) -> None:
    flag, help_text = "--" + setting.name.replace("_", "-"), HELP[setting.field]
    if setting.type is bool:  # the flag turns the default over: --bidirectional, --no-progress
        action = "store_false" if setting.default else "store_true"
        flag = "--no-" + flag[2:] if setting.default else flag
        group.add_argument(flag, dest=setting.name, action=action, help=help_text)
        return
    if setting.default not in (None, ""):
        help_text += f" (default: {setting.shown(setting.default)})"
    group.add_argument(flag, dest=setting.name, help=help_text, **_value_kwargs(setting))


def _value_kwargs(setting: Setting) -> dict[str, Any]:
    if setting.choices:
        shown = ",".join(setting.shown(c) for c in setting.choices)
        return {
            "type": setting.spelled,
            "choices": setting.choices,
            "metavar": f"{{{shown}}}",
        }
    if get_origin(setting.type) is list:
        return {"type": get_args(setting.type)[0], "nargs": "+"}
    return {"type": setting.type}


def resolve_config(argv: list[str] | None = None) -> RunConfig:
    args = vars(build_parser().parse_args(argv))
    config_path = args.pop("config", None)
    settings = _read_settings(config_path) if config_path is not None else {}
    try:
        return RunConfig.from_settings({**settings, **args})
    except (TypeError, ValueError) as exc:
        where = f"{config_path} with the flags" if config_path else "flags"
        raise SystemExit(f"error: {where}: {exc}") from None


def _read_settings(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        settings = tomllib.load(f)
    if unknown := sorted(set(settings) - set(settings_table())):
        raise SystemExit(f"error: {path}: unknown settings {unknown}; known: {sorted(settings_table())}")
    return settings


# ------------------------------------------------------------------------------------------------ the run


def run(cfg: RunConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer.seed_everything(cfg.train.seed)
    device = trainer.pick_device(cfg.device)
    dataset = data.load(cfg.data, cfg.columns())
    split = data.split_blocks(dataset, cfg.split_block, cfg.val_fraction, cfg.test_fraction, cfg.train.seed)
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
    model = SequenceClassifier(cfg.model_config(len(dataset.feature_names), len(dataset.class_names)))
    model.set_normalization(*data.fit_normalization(split.train))  # training split only
    model.to(device)
    log.info("model %s: %d parameters, device %s", model.config, model.parameter_count(), device)
    history = trainer.fit(model, loaders["train"], loaders["val"], cfg.train)
    metrics = _test_metrics(model, loaders["test"], dataset, split.test, cfg.seq_len)
    metrics.update(
        parameter_count=model.parameter_count(), best_epoch=history.best_epoch, epochs_run=len(history.train_loss)
    )
    _write_run(out, cfg, model, dataset, history, metrics)
    log.info(
        "test accuracy %.4f (each window from a zero state), streaming %s, macro-F1 %.4f -> %s",
        metrics["accuracy"],
        "n/a (bidirectional)" if metrics["streaming_accuracy"] is None else f"{metrics['streaming_accuracy']:.4f}",
        metrics["macro_f1"],
        out,
    )
    return metrics


def _test_metrics(
    model: SequenceClassifier,
    loader: DataLoader,
    dataset: data.LabelledData,
    blocks: list[data.Recording],
    seq_len: int,
) -> dict[str, Any]:
    """Accuracy and the rest with each test window run alone from a zero state, and the streaming accuracy."""
    device = next(model.parameters()).device
    test = trainer.evaluate(model, loader, device)
    metrics = evaluate.classification_metrics(test.y_true, test.y_pred, dataset.class_names)
    metrics.update(
        split="test",
        unit="timestep" if model.config.head == "per_timestep" else "sequence",
        test_loss=test.loss,
        **_streaming_metrics(model, dataset, blocks, seq_len, device),
    )
    return metrics


def _streaming_metrics(
    model: SequenceClassifier,
    dataset: data.LabelledData,
    blocks: list[data.Recording],
    seq_len: int,
    device: torch.device,
) -> dict[str, Any]:
    """`streaming_accuracy`: each test block's windows in time order with the state carried from one to the next,
    as a stream is served; None for a bidirectional model, with the reason in `streaming_unavailable`."""
    if model.config.bidirectional:
        return {"streaming_accuracy": None, "streaming_unavailable": NO_STREAMING}
    # the test loader's windows, block by block: they do not overlap, so each block's stream is the whole block
    streams = [data.WindowDataset(dataset, [block], seq_len, seq_len) for block in blocks]
    accuracy = trainer.evaluate_streaming(model, streams, device).accuracy
    return {"streaming_accuracy": accuracy, "streaming_unavailable": None}


def _loaders(cfg: RunConfig, dataset: data.LabelledData, split: data.Split) -> dict[str, DataLoader]:
    def loader(recordings: list[data.Recording], stride: int, shuffle: bool) -> DataLoader:
        windows = data.WindowDataset(dataset, recordings, cfg.seq_len, stride)
        generator = torch.Generator().manual_seed(cfg.train.seed)
        return DataLoader(
            windows, batch_size=cfg.train.batch_size, shuffle=shuffle, collate_fn=data.collate, generator=generator
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
            extra={"data": str(cfg.data), "seed": cfg.train.seed, "stride": cfg.stride},
        ),
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "history.json").write_text(json.dumps(asdict(history), indent=2))
    (out / "config.json").write_text(json.dumps(cfg.settings(), indent=2))
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
