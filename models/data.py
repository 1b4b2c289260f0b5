"""From a user's file to padded training batches.

Loaders read `.mat` (a `feature` matrix of `[index, f1..fF, label]` rows, as in the classic LSTM tutorial), CSV and
NPZ into *recordings*: a feature matrix [T, F] and a label per timestep, kept as strings. The split is made on
contiguous blocks of recordings, before any statistic is fitted, so the scaler sees the training split only and
overlapping windows never straddle two splits. Windows keep the remainder of a recording as a shorter sequence.
Malformed data stops with a `DataError` that names the file, where the problem is and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

IGNORE_INDEX = -100  # label of padded timesteps: CrossEntropyLoss(ignore_index=...) skips them
MAX_CLASSES = 1000


class DataError(ValueError):
    """The data cannot be used as given; the message says which file, where, and the fix."""

    def __init__(self, source: Path | str, where: str, problem: str, fix: str) -> None:
        super().__init__(f"{source}: {where}: {problem}. Fix: {fix}")


@dataclass(frozen=True)
class Columns:
    """Which columns of a table play which role. Names for CSV; names or integer positions (negative counts
    from the end) for `.mat`. `features=None` means every column not used otherwise."""

    label: str | int
    sequence: str | int | None = None
    time: str | int | None = None
    features: tuple[str | int, ...] | None = None
    mat_variable: str = "feature"


MAT_COLUMNS = Columns(label=-1, time=0)
CSV_COLUMNS = Columns(label="label")


@dataclass
class Recording:
    features: np.ndarray  # [T, F] float32
    labels: np.ndarray  # [T] str


@dataclass
class LabelledData:
    recordings: list[Recording]
    feature_names: list[str]
    source: Path
    class_names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        labels = np.unique(np.concatenate([r.labels for r in self.recordings]))
        self.class_names = _sorted_labels(labels)
        if len(self.class_names) < 2:
            raise DataError(
                self.source,
                "labels",
                f"only one class ({self.class_names[0]!r}) occurs",
                "a classifier needs at least two classes; check the label column",
            )

    def encode(self, labels: np.ndarray) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.class_names)}
        return np.fromiter((index[label] for label in labels), dtype=np.int64, count=len(labels))


# ----------------------------------------------------------------------------------------------------- loaders


def load(path: str | Path, columns: Columns | None = None) -> LabelledData:
    """Read a `.mat`, `.csv` or `.npz` file, chosen by its extension."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "path", "no such file", "pass the path of a .mat, .csv or .npz file to --data")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return load_mat(path, columns or MAT_COLUMNS)
    if suffix == ".csv":
        return load_csv(path, columns or CSV_COLUMNS)
    if suffix == ".npz":
        return load_npz(path)
    raise DataError(path, "extension", f"unknown format {suffix!r}", "use a .mat, .csv or .npz file")


def load_mat(path: Path, columns: Columns = MAT_COLUMNS) -> LabelledData:
    from scipy.io import loadmat

    with path.open("rb") as f:
        header = f.read(128)
    if b"MATLAB 7.3" in header:
        raise DataError(
            path,
            "file format",
            "MATLAB v7.3 (HDF5) files are not supported",
            "re-save it in MATLAB with save(..., '-v7'), or export the matrix to CSV",
        )
    try:
        contents = loadmat(path)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise DataError(path, "file format", f"not a readable MATLAB file ({exc})", "re-save it with -v7") from exc
    variables = sorted(k for k in contents if not k.startswith("__"))
    if columns.mat_variable not in contents:
        raise DataError(
            path,
            f"variable {columns.mat_variable!r}",
            f"not found; the file holds {variables}",
            "name the matrix with --mat-variable",
        )
    matrix = contents[columns.mat_variable]
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise DataError(
            path,
            f"variable {columns.mat_variable!r}",
            f"is not a 2-D numeric matrix (got {getattr(matrix, 'shape', type(matrix))})",
            "store rows of [index, f1..fF, label]",
        )
    names = [str(i) for i in range(matrix.shape[1])]
    table = {name: matrix[:, i] for i, name in enumerate(names)}
    return _from_table(path, table, columns, positional=True)


def load_csv(path: Path, columns: Columns = CSV_COLUMNS) -> LabelledData:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(
            path, "file", f"not a readable CSV ({exc})", "write a header row and comma-separated rows"
        ) from exc
    table = {str(name): frame[name].to_numpy() for name in frame.columns}
    return _from_table(path, table, columns, positional=False)


def load_npz(path: Path) -> LabelledData:
    """`features`: [T, F] (one stream) or [N, T, F] (with optional `lengths` [N]: ragged sequences padded);
    `labels`: per timestep ([T], [N, T]) or per recording ([N]); optional `feature_names`. No object arrays."""
    try:
        # np.load is lazy: an object array fails only when read, so read every array inside the try.
        with np.load(path, allow_pickle=False) as npz:
            archive = dict(npz)
    except ValueError as exc:
        raise DataError(
            path,
            "file",
            f"cannot be read without pickle ({exc})",
            "save plain arrays with np.savez; pad ragged sequences to [N, T, F] and add `lengths` [N]",
        ) from exc
    missing = [key for key in ("features", "labels") if key not in archive]
    if missing:
        raise DataError(
            path, f"arrays {missing}", f"missing; the file holds {sorted(archive)}", "save `features` and `labels`"
        )
    features, labels = archive["features"], archive["labels"]
    if features.ndim == 2:
        features, labels = features[None], labels[None]
    if features.ndim != 3:
        raise DataError(path, "features", f"has shape {features.shape}", "use [T, F] or [N, T, F]")
    n, t, f = features.shape
    lengths = archive["lengths"] if "lengths" in archive else np.full(n, t)
    if labels.shape == (n,):
        labels = np.repeat(labels[:, None], t, axis=1)
    if labels.shape != (n, t):
        raise DataError(path, "labels", f"has shape {labels.shape}, features {features.shape}", "use [N, T] or [N]")
    names = [str(x) for x in archive["feature_names"]] if "feature_names" in archive else _default_names(f)
    if len(names) != f:
        raise DataError(path, "feature_names", f"names {len(names)} features, the data has {f}", "name each one")
    recordings = []
    for i in range(n):
        length = int(lengths[i])
        if not 1 <= length <= t:
            raise DataError(path, f"lengths[{i}]", f"is {length}", f"use 1..{t}")
        x = features[i, :length]
        _check_finite(path, x, names, row_offset=0, where_prefix=f"recording {i}, ")
        recordings.append(Recording(x.astype(np.float32), _label_strings(path, labels[i, :length], "labels")))
    return LabelledData(recordings, names, path)


# ------------------------------------------------------------------------------------------- table handling


def _from_table(path: Path, table: dict[str, np.ndarray], columns: Columns, positional: bool) -> LabelledData:
    names = list(table)
    resolve = _resolver(path, names, positional)
    label = resolve(columns.label, "label")
    sequence = resolve(columns.sequence, "sequence") if columns.sequence is not None else None
    time = resolve(columns.time, "time") if columns.time is not None else None
    used = {label, sequence, time} - {None}
    if columns.features is not None:
        feature_cols = [resolve(c, "feature") for c in columns.features]
    else:
        feature_cols = [n for n in names if n not in used]
    if not feature_cols:
        raise DataError(
            path,
            "columns",
            f"{len(names)} columns leave no feature column after label/sequence/time",
            "a row needs at least one feature besides the label (and index) columns",
        )
    for name in feature_cols:
        if not np.issubdtype(table[name].dtype, np.number):
            raise DataError(path, f"column {name!r}", "is not numeric", "drop it or pass --feature-columns")
    features = np.stack([table[n].astype(np.float64) for n in feature_cols], axis=1)
    feature_names = [f"f{i + 1}" if positional else n for i, n in enumerate(feature_cols)]
    _check_finite(path, features, feature_names, row_offset=1 if positional else 2)
    labels = _label_strings(path, table[label], f"column {label!r}", row_offset=1 if positional else 2)
    order = np.arange(len(labels))
    groups = table[sequence] if sequence is not None else np.zeros(len(labels))
    if time is not None:
        order = np.lexsort((table[time], groups))  # stable: by sequence, then time
    elif sequence is not None:
        order = np.argsort(groups, kind="stable")
    recordings = []
    sorted_groups = groups[order]
    bounds = np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1
    for idx in np.split(order, bounds):
        recordings.append(Recording(features[idx].astype(np.float32), labels[idx]))
    return LabelledData(recordings, feature_names, path)


def _resolver(path: Path, names: list[str], positional: bool):
    def resolve(column: str | int, role: str) -> str:
        if positional:
            try:
                return names[int(column)]
            except (IndexError, ValueError):
                raise DataError(
                    path,
                    f"{role} column {column!r}",
                    f"out of range: the matrix has {len(names)} columns",
                    f"pick --{role}-column in {-len(names)}..{len(names) - 1}",
                ) from None
        if str(column) not in names:
            raise DataError(
                path, f"{role} column {column!r}", f"not found; the header has {names}", f"pass --{role}-column"
            )
        return str(column)

    return resolve


def _check_finite(path: Path, x: np.ndarray, names: list[str], row_offset: int, where_prefix: str = "") -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            path,
            f"{where_prefix}row {row + row_offset}, column {names[col]!r}",
            f"value {x[row, col]} is not finite ({int(bad.sum())} such values in all)",
            "fill or drop missing and infinite values before training",
        )


def _label_strings(path: Path, labels: np.ndarray, where: str, row_offset: int = 0) -> np.ndarray:
    """Labels as strings; numeric labels must be whole numbers (classes, not measurements)."""
    if labels.dtype.kind in "fc":
        if not np.isfinite(labels).all():
            row = int(np.flatnonzero(~np.isfinite(labels))[0])
            raise DataError(
                path, f"{where}, row {row + row_offset}", "label is missing or not finite", "label every row"
            )
        fractional = np.flatnonzero(labels != np.round(labels))
        if fractional.size:
            row = int(fractional[0])
            raise DataError(
                path,
                f"{where}, row {row + row_offset}",
                f"label {labels[row]} is not a whole number: the label column must hold discrete classes",
                "point --label-column at the class column, or bin the values into classes",
            )
        labels = labels.astype(np.int64)
    if labels.dtype.kind == "O" and any(v is None or (isinstance(v, float) and v != v) for v in labels):
        raise DataError(path, where, "some labels are empty", "label every row")
    strings = labels.astype(str)
    distinct = np.unique(strings)
    if len(distinct) > MAX_CLASSES or (labels.dtype.kind in "iu" and len(distinct) > max(50, len(labels) // 2)):
        raise DataError(
            path,
            where,
            f"{len(distinct)} distinct labels in {len(labels)} rows look like a measurement, not classes",
            "point --label-column at the class column",
        )
    return strings


def _sorted_labels(labels: np.ndarray) -> list[str]:
    try:
        return sorted((str(x) for x in labels), key=int)
    except ValueError:
        return sorted(str(x) for x in labels)


def _default_names(count: int) -> list[str]:
    return [f"f{i + 1}" for i in range(count)]


# ------------------------------------------------------------------------------------- windows and splitting


def window_bounds(length: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) windows of `seq_len` every `stride` steps, plus the uncovered tail as a shorter window."""
    if seq_len < 1 or stride < 1:
        raise ValueError(f"seq_len and stride must be >= 1, got {seq_len}, {stride}")
    if length <= seq_len:
        return [(0, length)] if length else []
    bounds = [(s, s + seq_len) for s in range(0, length - seq_len + 1, stride)]
    tail = bounds[-1][0] + stride
    if bounds[-1][1] < length:
        bounds.append((min(tail, length - 1), length))
    return bounds


@dataclass
class Split:
    train: list[Recording]
    val: list[Recording]
    test: list[Recording]


def split_blocks(data: LabelledData, block: int, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Cut recordings into contiguous blocks of at most `block` steps and deal them out to the splits."""
    units = [
        Recording(r.features[s : s + block], r.labels[s : s + block])
        for r in data.recordings
        for s in range(0, len(r.labels), block)
    ]
    if len(units) < 3:
        raise DataError(
            data.source,
            "size",
            f"{sum(len(r.labels) for r in data.recordings)} timesteps make only {len(units)} split blocks",
            "provide more data or lower --split-block (default 10 x --seq-len)",
        )
    order = np.random.default_rng(seed).permutation(len(units))
    n_test = max(1, round(test_fraction * len(units)))
    n_val = max(1, round(val_fraction * len(units)))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    if len(train) == 0:
        raise DataError(data.source, "size", "no block is left for training", "provide more data")

    def pick(idx: np.ndarray) -> list[Recording]:
        return [units[i] for i in sorted(idx)]

    return Split(pick(train), pick(val), pick(test))


def fit_normalization(recordings: Sequence[Recording]) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation per feature over every timestep of the given (training) recordings."""
    stacked = np.concatenate([r.features for r in recordings]).astype(np.float64)
    return torch.from_numpy(stacked.mean(0)).float(), torch.from_numpy(stacked.std(0)).float()


class WindowDataset(TorchDataset):
    """Windows of encoded recordings: (features [t, F] float32, labels [t] int64)."""

    def __init__(self, data: LabelledData, recordings: Sequence[Recording], seq_len: int, stride: int) -> None:
        self.items: list[tuple[Tensor, Tensor]] = []
        for r in recordings:
            encoded = torch.from_numpy(data.encode(r.labels))
            features = torch.from_numpy(r.features)
            for start, end in window_bounds(len(r.labels), seq_len, stride):
                self.items.append((features[start:end], encoded[start:end]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.items[index]


def collate(items: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad to the longest window: features [B, T, F], lengths [B], labels [B, T] (IGNORE_INDEX on padding)."""
    lengths = torch.tensor([len(y) for _, y in items], dtype=torch.int64)
    features = torch.nn.utils.rnn.pad_sequence([x for x, _ in items], batch_first=True)
    labels = torch.nn.utils.rnn.pad_sequence([y for _, y in items], batch_first=True, padding_value=IGNORE_INDEX)
    return features, lengths, labels
