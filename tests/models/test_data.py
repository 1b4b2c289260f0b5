"""Loaders on files written here, every malformed-data error, windows, splits and padding."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.io import savemat

from models import data
from models.data import Columns, DataError
from tests.conftest import FEATURE_NAMES, make_stream, write_csv_sequences, write_csv_stream, write_mat, write_npz

# ----------------------------------------------------------------------------------------------------- loaders


def test_mat_in_tutorial_layout(tmp_path):
    features, labels = make_stream(120, classes=[1, 2, 3], seed=2)
    path = write_mat(tmp_path / "feature.mat", features, labels, shuffle_seed=0)
    loaded = data.load(path)
    assert loaded.feature_names == ["f1", "f2", "f3", "f4", "f5", "f6"]  # index and label columns left out
    assert loaded.class_names == ["1", "2", "3"]
    [recording] = loaded.recordings
    np.testing.assert_allclose(recording.features, features)  # rows put back in index order
    assert recording.labels.tolist() == [str(v) for v in labels]
    assert recording.features.dtype == np.float32


def test_mat_variable_and_columns_are_configurable(tmp_path):
    features, labels = make_stream(60, num_features=3, classes=[0, 1], seed=3)
    matrix = np.column_stack([labels, features, np.arange(60)]).astype(np.float64)  # label first, index last
    savemat(tmp_path / "x.mat", {"recording": matrix})
    loaded = data.load(tmp_path / "x.mat", Columns(label=0, time=-1, mat_variable="recording"))
    assert loaded.class_names == ["0", "1"]
    np.testing.assert_allclose(loaded.recordings[0].features, features)


def test_csv_with_sequence_and_time_columns_is_reordered(tmp_path):
    sequences = [make_stream(n, seed=n) for n in (15, 22, 9)]
    path = write_csv_sequences(tmp_path / "seqs.csv", sequences)
    assert pd.read_csv(path)["t"].is_monotonic_increasing is False  # really shuffled on disk
    loaded = data.load(path, Columns(label="label", sequence="seq", time="t"))
    assert loaded.feature_names == list(FEATURE_NAMES)
    assert len(loaded.recordings) == 3
    for recording, (features, labels) in zip(loaded.recordings, sequences, strict=True):
        np.testing.assert_allclose(recording.features, features, rtol=1e-6)
        assert recording.labels.tolist() == labels.tolist()


def test_csv_as_one_long_stream(tmp_path):
    features, labels = make_stream(80, seed=4)
    loaded = data.load(write_csv_stream(tmp_path / "stream.csv", features, labels))
    [recording] = loaded.recordings
    np.testing.assert_allclose(recording.features, features, rtol=1e-6)
    assert recording.labels.tolist() == labels.tolist()
    assert loaded.class_names == sorted(set(labels.tolist()))


def test_npz_padded_sequences_with_lengths(tmp_path):
    features, labels = make_stream(3 * 12, seed=5)
    lengths = np.array([12, 7, 1])
    path = write_npz(tmp_path / "d.npz", features.reshape(3, 12, 6), labels.reshape(3, 12), lengths)
    loaded = data.load(path)
    assert [len(r.labels) for r in loaded.recordings] == [12, 7, 1]
    np.testing.assert_array_equal(loaded.recordings[1].features, features.reshape(3, 12, 6)[1, :7])
    assert loaded.recordings[1].labels.tolist() == labels.reshape(3, 12)[1, :7].tolist()
    assert loaded.feature_names == ["f1", "f2", "f3", "f4", "f5", "f6"]


def test_npz_one_label_per_sequence(tmp_path):
    features = np.random.default_rng(0).normal(size=(4, 5, 2)).astype(np.float32)
    np.savez(tmp_path / "d.npz", features=features, labels=np.array(["a", "b", "a", "b"]))
    loaded = data.load(tmp_path / "d.npz")
    assert [r.labels.tolist() for r in loaded.recordings][1] == ["b"] * 5


def test_numeric_labels_are_strings_in_numeric_order(tmp_path):
    features, labels = make_stream(90, classes=[2, 10, 1], seed=6)
    loaded = data.load(write_mat(tmp_path / "f.mat", features, labels))
    assert loaded.class_names == ["1", "2", "10"]
    assert loaded.encode(np.array(["10", "1"])).tolist() == [2, 0]


# ------------------------------------------------------------------------------------------ malformed data


def _message(path, columns=None) -> str:
    with pytest.raises(DataError) as caught:
        data.load(path, columns)
    message = str(caught.value)
    assert str(path) in message
    assert "Fix: " in message
    return message


def test_missing_mat_variable(tmp_path):
    features, labels = make_stream(40, classes=[0, 1])
    path = write_mat(tmp_path / "f.mat", features, labels, variable="data")
    message = _message(path)
    assert "variable 'feature'" in message
    assert "['data']" in message
    assert "--mat-variable" in message


def test_matlab_v73_file(tmp_path):
    path = tmp_path / "big.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    path.write_bytes(header.ljust(128, b" ") + b"\x89HDF\r\n\x1a\n" + bytes(64))
    message = _message(path)
    assert "v7.3" in message
    assert "-v7" in message


def test_nan_names_file_row_and_column(tmp_path):
    features, labels = make_stream(30, seed=7)
    features[3, 1] = np.nan  # data row 3 is line 5 of the file (line 1 is the header)
    message = _message(write_csv_stream(tmp_path / "s.csv", features, labels))
    assert "row 5, column 'ay'" in message
    assert "not finite" in message
    assert "fill or drop" in message


def test_inf_in_mat_names_row_and_column(tmp_path):
    features, labels = make_stream(30, classes=[1, 2], seed=8)
    features[4, 2] = np.inf  # matrix row 5 (1-based, as MATLAB counts), third feature
    message = _message(write_mat(tmp_path / "f.mat", features, labels))
    assert "row 5, column 'f3'" in message
    assert "value inf" in message


def test_nan_in_npz_names_recording_row_and_column(tmp_path):
    features = np.zeros((2, 4, 3), dtype=np.float32)
    features[1, 2, 0] = -np.inf
    message = _message(write_npz(tmp_path / "d.npz", features, np.array([["a"] * 4, ["b"] * 4])))
    assert "recording 1, row 2, column 'f1'" in message


def test_npz_with_object_arrays_is_refused(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((3, 2)), np.zeros((4, 2))
    np.savez(tmp_path / "ragged.npz", features=ragged, labels=np.array(["a", "b"]))
    message = _message(tmp_path / "ragged.npz")
    assert "pickle" in message
    assert "lengths" in message


def test_npz_without_labels(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.zeros((4, 2)), y=np.zeros(4))
    message = _message(tmp_path / "d.npz")
    assert "arrays ['labels']" in message
    assert "['features', 'y']" in message


def test_single_class(tmp_path):
    features, _ = make_stream(30)
    message = _message(write_csv_stream(tmp_path / "s.csv", features, np.array(["walk"] * 30)))
    assert "only one class ('walk')" in message
    assert "at least two classes" in message


def test_too_few_columns(tmp_path):
    savemat(tmp_path / "f.mat", {"feature": np.column_stack([np.arange(10.0), np.arange(10.0) % 2])})
    message = _message(tmp_path / "f.mat")
    assert "2 columns leave no feature column" in message
    assert "at least one feature" in message


def test_fractional_label_column(tmp_path):
    features, _ = make_stream(30, seed=9)
    labels = np.tile([0.0, 1.0, 2.0], 10)
    labels[7] = 1.5
    message = _message(write_csv_stream(tmp_path / "s.csv", features, labels))
    assert "column 'label', row 9" in message
    assert "1.5 is not a whole number" in message
    assert "--label-column" in message


def test_integer_measurements_are_not_classes(tmp_path):
    features, _ = make_stream(200, seed=10)
    message = _message(write_csv_stream(tmp_path / "s.csv", features, np.arange(200)))
    assert "200 distinct labels in 200 rows" in message
    assert "--label-column" in message


def test_unknown_column_name(tmp_path):
    features, labels = make_stream(30)
    message = _message(write_csv_stream(tmp_path / "s.csv", features, labels), Columns(label="activity"))
    assert "label column 'activity'" in message
    assert "not found; the header has" in message
    assert "'label'" in message
    assert "--label-column" in message


def test_column_index_out_of_range(tmp_path):
    features, labels = make_stream(30, classes=[0, 1])
    message = _message(write_mat(tmp_path / "f.mat", features, labels), Columns(label=12))
    assert "label column 12" in message
    assert "8 columns" in message


def test_non_numeric_feature_column(tmp_path):
    pd.DataFrame({"a": ["x", "y"] * 5, "label": [0, 1] * 5}).to_csv(tmp_path / "s.csv", index=False)
    message = _message(tmp_path / "s.csv")
    assert "column 'a'" in message
    assert "not numeric" in message


@pytest.mark.parametrize(("name", "problem"), [("missing.csv", "no such file"), ("data.txt", "unknown format")])
def test_missing_file_or_unknown_format(tmp_path, name, problem):
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text("1,2\n")
    assert problem in _message(path)


# ------------------------------------------------------------------------------------- windows and splitting


@pytest.mark.parametrize(
    ("length", "seq_len", "stride", "expected"),
    [
        (25, 10, 10, [(0, 10), (10, 20), (20, 25)]),
        (20, 10, 10, [(0, 10), (10, 20)]),
        (7, 10, 10, [(0, 7)]),
        (10, 10, 3, [(0, 10)]),
        (14, 10, 3, [(0, 10), (3, 13), (6, 14)]),
        (0, 10, 10, []),
    ],
)
def test_window_bounds(length, seq_len, stride, expected):
    assert data.window_bounds(length, seq_len, stride) == expected


@pytest.mark.parametrize(("seq_len", "stride"), [(1, 1), (4, 1), (4, 3), (4, 4), (7, 3), (7, 7)])
def test_windows_cover_every_step_and_keep_the_remainder(seq_len, stride):
    """With stride <= seq_len no step is lost; a longer stride skips steps by design."""
    for length in range(1, 30):
        bounds = data.window_bounds(length, seq_len, stride)
        covered = set().union(*(range(s, e) for s, e in bounds))
        assert covered == set(range(length)), (length, bounds)
        assert all(0 < e - s <= seq_len for s, e in bounds)
        assert bounds[-1][1] == length
        assert [s for s, _ in bounds] == sorted({s for s, _ in bounds})


@pytest.mark.parametrize(("seq_len", "stride"), [(0, 1), (3, 0)])
def test_window_bounds_refuses_empty_windows(seq_len, stride):
    with pytest.raises(ValueError, match="must be >= 1"):
        data.window_bounds(10, seq_len, stride)


def test_window_dataset_and_collate(tmp_path):
    features, labels = make_stream(25, seed=11, segment=(4, 6))
    loaded = data.load(write_csv_stream(tmp_path / "s.csv", features, labels))
    windows = data.WindowDataset(loaded, loaded.recordings, seq_len=10, stride=10)
    assert [len(y) for _, y in windows] == [10, 10, 5]
    tail_x, tail_y = windows[2]
    np.testing.assert_allclose(tail_x.numpy(), features[20:], rtol=1e-6)
    assert tail_y.tolist() == loaded.encode(labels[20:]).tolist()

    batch_x, lengths, batch_y = data.collate([windows[2], windows[0]])
    assert batch_x.shape == (2, 10, 6)
    assert lengths.tolist() == [5, 10]
    assert (batch_x[0, 5:] == 0).all()
    assert (batch_y[0, 5:] == data.IGNORE_INDEX).all()
    assert batch_y.dtype == torch.int64
    assert batch_y[1].tolist() == loaded.encode(labels[:10]).tolist()


def _split(tmp_path, steps=400, block=40, seed=0):
    features, labels = make_stream(steps, seed=12)
    loaded = data.load(write_csv_stream(tmp_path / "s.csv", features, labels))
    return loaded, data.split_blocks(loaded, block, 0.2, 0.2, seed)


def test_split_blocks_are_disjoint_contiguous_and_cover_everything(tmp_path):
    loaded, split = _split(tmp_path)
    blocks = [r.features for part in (split.train, split.val, split.test) for r in part]
    assert (len(split.train), len(split.val), len(split.test)) == (6, 2, 2)
    assert all(len(b) == 40 for b in blocks)
    rows = np.concatenate(blocks)
    ordered = rows[np.lexsort(rows.T[::-1])]
    expected = loaded.recordings[0].features
    np.testing.assert_array_equal(ordered, expected[np.lexsort(expected.T[::-1])])


def test_split_depends_on_seed_only(tmp_path):
    _, first = _split(tmp_path, seed=3)
    _, again = _split(tmp_path, seed=3)
    _, other = _split(tmp_path, seed=4)

    def starts(split):
        return [r.features[0, 0] for r in split.test]

    assert starts(first) == starts(again)
    assert starts(first) != starts(other)


def test_too_little_data_to_split(tmp_path):
    with pytest.raises(DataError, match=re.escape("make only 2 split blocks")):
        _split(tmp_path, steps=60, block=40)


def test_normalisation_is_fitted_on_the_given_recordings_only(tmp_path):
    _, split = _split(tmp_path)
    mean, std = data.fit_normalization(split.train)
    train_rows = np.concatenate([r.features for r in split.train]).astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), train_rows.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), train_rows.std(0), rtol=1e-6)
