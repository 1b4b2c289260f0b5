"""`python -m export.inspect REPO/NAME [--version N] --input FILE --out PICTURE.png`: look inside a published model.

Reads one sequence (a CSV whose header names the model's features, extra columns such as a label ignored; a `.npy`
array [T, F]; or JSON: a list of timesteps, each a list of F numbers or an object keyed by feature name, optionally
wrapped as `{"sequence": [...]}`), inspects it with `service.inspection.Inspector` (numpy recomputation of every gate
and state from the ONNX file, checked against onnxruntime; memory by occlusion), prints a short summary and draws
one PNG: the predicted class along time with its probability, a heatmap per gate and state (units x time) for each
layer and direction, and the memory matrix with each timestep's horizon. A bad file is a logged line that says
where (file, line, column) and exit code 2; a numpy/onnxruntime mismatch is exit code 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelrepo import layout
from modelrepo.manifest import ManifestError
from service.inspection import (
    DIRECTIONS,
    GATES,
    Inspection,
    InspectionError,
    InspectionMismatch,
    Inspector,
    InvalidSequence,
    LayerTrace,
    UnsupportedGraph,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger("export.inspect")
MAX_DRAWN_LAYERS = 2  # blocks of heatmaps in the picture, one column per direction
GATE_TITLES = {
    "input": "input gate i (1 = write the candidate)",
    "forget": "forget gate f (1 = keep the cell state)",
    "cell": "candidate cell g",
    "output": "output gate o (1 = expose the cell)",
    "reset": "reset gate r (0 = ignore the previous state)",
    "update": "update gate z (1 = keep the previous state)",
    "new": "new gate n (candidate state)",
}


class InputError(ValueError):
    """The input file cannot be read as one sequence; the message names the file and the place."""


# ------------------------------------------------------------------------------------------------------ the input


def read_sequence(path: Path, feature_names: tuple[str, ...]) -> np.ndarray:
    readers = {".csv": _read_csv, ".npy": _read_npy, ".json": _read_json}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"{path}: unknown input format {path.suffix!r}; use .csv, .npy or .json")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return reader(path, feature_names)


def _read_csv(path: Path, names: tuple[str, ...]) -> np.ndarray:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [n for n in names if n not in header]
        if missing:
            raise InputError(f"{path}: line 1: the header lacks the feature column(s) {missing} (header: {header})")
        columns = [header.index(n) for n in names]
        rows = [_csv_row(path, reader.line_num, row, header, columns) for row in reader if any(c.strip() for c in row)]
    if not rows:
        raise InputError(f"{path}: no data rows after the header")
    return np.array(rows, dtype=np.float64)


def _csv_row(path: Path, line: int, row: list[str], header: list[str], columns: list[int]) -> list[float]:
    if len(row) != len(header):
        raise InputError(f"{path}: line {line}: {len(row)} fields, the header has {len(header)}")
    values = []
    for i in columns:
        try:
            value = float(row[i])
        except ValueError:
            raise InputError(f"{path}: line {line}, column {header[i]!r}: {row[i]!r} is not a number") from None
        if not math.isfinite(value):
            raise InputError(f"{path}: line {line}, column {header[i]!r}: {row[i]!r} is not finite")
        values.append(value)
    return values


def _read_npy(path: Path, names: tuple[str, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from exc
    if array.ndim != 2 or array.shape[1] != len(names) or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{path}: a {array.dtype} array of shape {list(array.shape)}, expected [T, {len(names)}]")
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        t, f = bad[0]
        raise InputError(f"{path}: [{t}, {f}] (timestep {t}, feature {names[f]!r}) is {array[t, f]}, not finite")
    return array.astype(np.float64)


def _read_json(path: Path, names: tuple[str, ...]) -> np.ndarray:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a number")

    try:
        raw = json.loads(path.read_text(), parse_constant=refuse)
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from exc
    sequence = raw.get("sequence") if isinstance(raw, dict) else raw
    if not isinstance(sequence, list) or not sequence:
        raise InputError(f'{path}: expected a non-empty list of timesteps (or {{"sequence": [...]}})')
    return np.array([_json_step(path, t, step, names) for t, step in enumerate(sequence)], dtype=np.float64)


def _json_step(path: Path, t: int, step: Any, names: tuple[str, ...]) -> list[float]:
    if isinstance(step, dict):
        missing = [n for n in names if n not in step]
        if missing:
            raise InputError(f"{path}: sequence[{t}]: missing features {missing} (expected {list(names)})")
        step = [step[n] for n in names]
    if not isinstance(step, list) or len(step) != len(names):
        size = len(step) if isinstance(step, list) else type(step).__name__
        raise InputError(f"{path}: sequence[{t}]: expected {len(names)} features, got {size}")
    for f, value in enumerate(step):
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "a boolean" if isinstance(value, bool) else type(value).__name__
            raise InputError(f"{path}: sequence[{t}][{f}] ({names[f]!r}): expected a number, got {kind}")
    return [float(v) for v in step]


# ------------------------------------------------------------------------------------------------------ the model


def version_dir(model_dir: Path, version: int | None) -> Path:
    """The published version folder asked for (the newest by default), as the service's repository scan sees it."""
    found = [v.version for v in layout.scan(model_dir.parent) if v.name == model_dir.name]
    if not found:
        raise InputError(f"{model_dir}: no published versions (expected REPO/NAME/VERSION/manifest.json)")
    chosen = found[-1] if version is None else version
    if chosen not in found:
        raise InputError(f"{model_dir}: no version {chosen}; versions: {found}")
    return model_dir / str(chosen)


# ---------------------------------------------------------------------------------------------------- the summary


def segments(labels: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """Runs of one predicted class: (label, first timestep, last timestep)."""
    runs: list[tuple[str, int, int]] = []
    for t, label in enumerate(labels):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], t)
        else:
            runs.append((label, t, t))
    return runs


def summary(title: str, source: Path, result: Inspection, out: Path, shown: int = 8) -> str:
    config, runs = result.config, segments(result.labels)
    listed = ", ".join(f"{label} t{a}-{b}" if a != b else f"{label} t{a}" for label, a, b in runs[:shown])
    more = f", … ({len(runs) - shown} more)" if len(runs) > shown else ""
    changes = len(runs) - 1
    direction = "bidirectional " if config.bidirectional else ""
    return "\n".join(
        [
            f"model    {title}: {direction}{config.cell}, {config.num_layers} layer(s) x {config.hidden_size} units, "
            f"{config.head} head, classes {list(result.classes)}",
            f"input    {source}: {result.timesteps} timesteps",
            f"classes  {listed}{more} ({changes} change{'s' if changes != 1 else ''})",
            f"horizon  mean {result.horizon.mean():.1f} steps back (median {np.median(result.horizon):.0f}, max "
            f"{result.horizon.max()}) hold 90 % of what moved each prediction",
            f"check    numpy vs onnxruntime: max |Δprobability| {result.max_difference:.1e}",
            f"picture  {out}",
        ]
    )


# ---------------------------------------------------------------------------------------------------- the picture


def _strips(result: Inspection, entry: LayerTrace) -> list[tuple[str, np.ndarray, str, float, float]]:
    """(title, values [T, H], colormap, vmin, vmax) for each heatmap of one layer/direction."""
    strips = []
    for name in GATES[result.config.cell]:
        values = entry.gates[name]
        bounded = name in ("cell", "new")
        strips.append((GATE_TITLES[name], values, "RdBu_r" if bounded else "viridis", -1.0 if bounded else 0.0, 1.0))
    if entry.cell_state is not None:
        # The 99th percentile, not the maximum: one saturated unit would wash every other one out.
        scale = max(float(np.percentile(np.abs(entry.cell_state), 99)), 1e-6)
        strips.append(
            (
                "cell state c (unbounded; colours clipped at the 99th percentile)",
                entry.cell_state,
                "RdBu_r",
                -scale,
                scale,
            )
        )
    strips.append(("hidden state h", entry.hidden, "RdBu_r", -1.0, 1.0))
    return strips


def _class_colors(classes: tuple[str, ...]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"] if len(classes) <= 10 else colormaps["tab20"]
    return {name: palette(i % palette.N) for i, name in enumerate(classes)}


def _draw_probabilities(ax: Axes, result: Inspection) -> None:
    colors = _class_colors(result.classes)
    steps = np.arange(result.timesteps)
    for label, a, b in segments(result.labels):
        ax.axvspan(a - 0.5, b + 0.5, color=colors[label], alpha=0.18, linewidth=0)
    for c, name in enumerate(result.classes):
        ax.plot(steps, result.probabilities[:, c], color=colors[name], linewidth=1.8, label=name)
    ax.plot(steps, result.probabilities.max(axis=1), "k.", markersize=3, label="predicted")
    ax.set(xlim=(-0.5, result.timesteps - 0.5), ylim=(-0.02, 1.02), ylabel="probability")
    ax.set_title("predicted class (background) and class probabilities", loc="left", fontsize=10)
    ax.legend(loc="center right", fontsize=8, framealpha=0.85)
    if result.config.head == "last":
        ax.set_xlabel("timestep t (last head: the answer for the sequence cut after t)", fontsize=8)


def _draw_heatmap(fig: Figure, ax: Axes, cax: Axes, strip: tuple, steps: int) -> None:
    title, values, cmap, vmin, vmax = strip
    image = ax.imshow(
        values.T,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extent=(-0.5, steps - 0.5, -0.5, values.shape[1] - 0.5),
    )
    ax.set_title(title, loc="left", fontsize=9)
    ax.set_ylabel("unit", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.colorbar(image, cax=cax).ax.tick_params(labelsize=7)


def _draw_memory(fig: Figure, ax: Axes, result: Inspection) -> None:
    from matplotlib.colors import SymLogNorm

    memory, steps = result.memory, result.timesteps
    scale = max(float(np.abs(memory).max()), 1e-9)
    # Symmetric log colours: confident predictions move by 1e-4 while uncertain ones move by 0.5; both must show.
    norm = SymLogNorm(linthresh=scale * 1e-3, vmin=-scale, vmax=scale, base=10)
    extent = (-0.5, steps - 0.5, -0.5, steps - 0.5)
    image = ax.imshow(
        memory, origin="lower", cmap="RdBu_r", norm=norm, interpolation="nearest", extent=extent, aspect="auto"
    )
    t = np.arange(steps)
    ax.step(t - result.horizon + 0.5, t, where="mid", color="black", linewidth=1.0, label="horizon (90 % to its right)")
    ax.plot([-0.5, steps - 0.5], [-0.5, steps - 0.5], color="0.4", linewidth=0.6, linestyle=":")
    ax.set(xlabel="input timestep t' (replaced by the training mean)", ylabel="output timestep t")
    ax.set_title(
        "memory: Δp(class predicted at t) when x_t' is occluded\n"
        "red: x_t' supported that class; blue: it argued against it",
        loc="left",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, ticks=_log_ticks(scale, norm.linthresh))
    bar.set_label("Δp (symmetric log scale)", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _log_ticks(scale: float, linthresh: float) -> list[float]:
    """0 and ±10^k from the linear threshold up to the largest |Δp|: no labels crowding the linear middle."""
    powers = [10.0**k for k in range(math.ceil(math.log10(linthresh)), math.floor(math.log10(scale)) + 1)]
    return sorted([-p for p in powers] + [0.0] + powers)


def _draw_horizon(ax: Axes, result: Inspection) -> None:
    t = np.arange(result.timesteps)
    ax.plot(t, result.horizon, color="black", linewidth=1.2)
    ax.axhline(result.horizon.mean(), color="0.5", linestyle="--", linewidth=0.8)
    ax.set(xlim=(-0.5, result.timesteps - 0.5), ylim=(0, None), xlabel="timestep t", ylabel="steps back")
    ax.set_title(
        f"horizon: steps back holding 90 % of |memory| (mean {result.horizon.mean():.1f}, dashed)",
        loc="left",
        fontsize=10,
    )


def draw(result: Inspection, title: str, out: Path) -> None:
    """One PNG: probabilities on top, then one block of heatmaps per layer (a column per direction), and the memory
    matrix with the horizon on the right. Layers beyond MAX_DRAWN_LAYERS are left out (and the title says so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = result.config
    entries = [e for e in result.layers if e.layer < MAX_DRAWN_LAYERS]
    per_entry = len(_strips(result, entries[0]))
    rows, cols = per_entry * min(config.num_layers, MAX_DRAWN_LAYERS), config.num_directions
    height = 2.8 + 1.45 * rows
    fig = plt.figure(figsize=(8.0 * cols + 7.0, height))
    # A fixed grid, not constrained layout: with dozens of heatmaps and colorbars that solver takes seconds.
    margin = 0.55 / height
    outer = fig.add_gridspec(
        1, 2, width_ratios=[2.0 * cols, 1.6], left=0.04, right=0.95, top=1 - 1.9 * margin, bottom=margin, wspace=0.15
    )
    gap = 0.85  # inches between the probabilities and the first heatmap's title
    left = outer[0].subgridspec(2, 1, height_ratios=[1.6, 1.0 * rows], hspace=gap / ((height - 1.4 - gap) / 2))
    # Each heatmap's colorbar gets a narrow column of its own, and so does the probability panel of a single
    # column, so that its time axis lines up with the heatmaps below it.
    bar = {"width_ratios": [1.0, 0.02], "wspace": 0.02}
    prob_ax = fig.add_subplot(left[0].subgridspec(1, 2, **bar)[0] if cols == 1 else left[0])
    _draw_probabilities(prob_ax, result)
    columns = left[1].subgridspec(1, cols, wspace=0.12)
    grids = [columns[c].subgridspec(rows, 2, hspace=0.75, **bar) for c in range(cols)]
    for entry in entries:
        grid = grids[DIRECTIONS.index(entry.direction)]
        for i, strip in enumerate(_strips(result, entry)):
            row = entry.layer * per_entry + i
            ax = fig.add_subplot(grid[row, 0], sharex=prob_ax)
            _draw_heatmap(fig, ax, fig.add_subplot(grid[row, 1]), strip, result.timesteps)
            if i == 0:
                heading = f"layer {entry.layer} {entry.direction}: {strip[0]}"
                ax.set_title(heading, loc="left", fontsize=9, fontweight="bold")
        ax.set_xlabel("timestep", fontsize=8)
    right = outer[1].subgridspec(2, 1, height_ratios=[2.6, 1.0], hspace=0.25)
    _draw_memory(fig, fig.add_subplot(right[0]), result)
    _draw_horizon(fig.add_subplot(right[1]), result)
    left_out = config.num_layers - MAX_DRAWN_LAYERS
    note = f" (layers {MAX_DRAWN_LAYERS}-{config.num_layers - 1} not drawn)" if left_out > 0 else ""
    fig.suptitle(f"inside {title}{note}", fontsize=13, x=0.01, y=1 - 0.25 / height, horizontalalignment="left")
    fig.savefig(out, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a model folder of a repository: REPO/NAME")
    p.add_argument("--version", type=int, help="default: the newest")
    p.add_argument("--input", type=Path, required=True, help="one sequence: .csv (header of features), .npy, .json")
    p.add_argument("--out", type=Path, required=True, help="the picture to write (PNG)")
    p.add_argument("--max-timesteps", type=int, help="the inspection length limit (default: by head)")
    return p


def inspect_file(
    model_dir: Path, version: int | None, source: Path, max_timesteps: int | None
) -> tuple[Path, Inspection]:
    folder = version_dir(model_dir, version)
    threads = min(4, os.cpu_count() or 1)
    inspector = Inspector.from_version(folder, max_timesteps=max_timesteps, threads=threads)
    return folder, inspector.inspect(read_sequence(source, inspector.feature_names))


def _title(model_dir: Path, folder: Path, source: Path, result: Inspection) -> str:
    config = result.config
    kind = f"{'bidirectional ' if config.bidirectional else ''}{config.cell}"
    return (
        f"{model_dir.name} version {folder.name} ({kind}, {config.num_layers} x {config.hidden_size} units, "
        f"{config.head} head) on {source.name}, {result.timesteps} timesteps"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        folder, result = inspect_file(args.model, args.version, args.input, args.max_timesteps)
    except InvalidSequence as exc:  # the inspector's own checks (length limit, float32 range) name no file
        log.error("%s: %s", args.input, exc)
        return 2
    except (InspectionMismatch, UnsupportedGraph) as exc:
        log.error("%s", exc)
        return 1
    except (InputError, InspectionError, ManifestError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        draw(result, _title(args.model, folder, args.input, result), args.out)
    except OSError as exc:
        log.error("%s: cannot write the picture (%s)", args.out, exc)
        return 2
    print(summary(f"{args.model} version {folder.name}", args.input, result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
