"""Does a version's ONNX graph take and give what its manifest says? Checked once per load, before the warm-up.

The sha256 check (modelrepo.manifest.verify) proves the files are the ones the manifest was written for; it cannot
catch a manifest written wrong, or a graph exported from another model and re-hashed. Requests are validated against
the manifest (feature count, tensor names and shapes), so a disagreement would surface as onnxruntime errors on live
traffic. Here the manifest is checked against itself (feature names, `input_dim` and the `features` tensor agree;
class names and the class axis agree) and against the input and output metadata of the onnxruntime session: the same
tensor names, datatypes and ranks, and every axis the graph fixes is fixed to the same size in the manifest. A graph
axis that is dynamic (a name or unknown) accepts whatever the manifest fixes; a manifest axis that is dynamic (batch,
time) must be dynamic in the graph too, or batching would break. Any disagreement is a `ManifestError` naming the file,
the tensor and the axis, so the version is refused with that reason and the one already serving stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from modelrepo.manifest import Manifest, ManifestError, TensorSpec

ORT_TYPES = {"FP32": "tensor(float)", "INT64": "tensor(int64)"}


class NodeArg(Protocol):
    name: str
    type: str
    shape: Sequence[Any]


class Session(Protocol):
    def get_inputs(self) -> Sequence[NodeArg]: ...

    def get_outputs(self) -> Sequence[NodeArg]: ...

    def get_overridable_initializers(self) -> Sequence[NodeArg]: ...


def check(path: Path, manifest: Manifest, session: Session) -> None:
    problems = manifest_problems(manifest)
    # An initializer listed among the graph's inputs (older exports: the zero h0/c0) is an input that may be left out.
    inputs = [*session.get_inputs(), *session.get_overridable_initializers()]
    problems += tensor_problems("input", manifest.inputs, inputs)
    problems += tensor_problems("output", manifest.outputs, session.get_outputs())
    if problems:
        raise ManifestError(f"{path} does not fit its manifest: {'; '.join(problems)}")


def manifest_problems(manifest: Manifest) -> list[str]:
    problems = []
    features = manifest.input("features")
    if features is None:
        return ["the manifest lists no 'features' input"]
    names, declared = len(manifest.feature_names), manifest.model.input_dim
    if features.shape[-1] != names or declared != names:
        problems.append(
            f"the manifest disagrees on the feature count: {names} feature_names, model.input_dim {declared}, "
            f"input 'features' last axis {features.shape[-1]}"
        )
    classes = len(manifest.class_names)
    for output in manifest.outputs:
        if output.name in ("probabilities", "logits") and output.shape[-1] != classes:
            problems.append(f"output {output.name!r} has {output.shape[-1]} classes, the manifest names {classes}")
    return problems


def tensor_problems(kind: str, declared: Sequence[TensorSpec], graph: Sequence[NodeArg]) -> list[str]:
    by_name = {arg.name: arg for arg in graph}
    expected = [t.name for t in declared]
    if set(expected) != set(by_name):
        return [f"graph {kind}s {sorted(by_name)}, manifest {kind}s {sorted(expected)}"]
    problems = []
    for spec in declared:
        arg = by_name[spec.name]
        if ORT_TYPES.get(spec.datatype) != arg.type:
            problems.append(f"{kind} {spec.name!r} is {arg.type} in the graph, {spec.datatype} in the manifest")
        if len(arg.shape) != len(spec.shape):
            problems.append(
                f"{kind} {spec.name!r} has rank {len(arg.shape)} in the graph, {len(spec.shape)} in the manifest"
            )
            continue
        for axis, (ours, theirs) in enumerate(zip(spec.shape, arg.shape, strict=True)):
            if isinstance(theirs, int) and ours != theirs:
                problems.append(
                    f"{kind} {spec.name!r} axis {axis} is {theirs} in the graph, {ours!r} in the manifest"
                    + (" (feature count)" if spec.name == "features" and axis == len(spec.shape) - 1 else "")
                )
    return problems
