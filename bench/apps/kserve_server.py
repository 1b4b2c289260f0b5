"""KServe's python `ModelServer` serving the benchmark's ONNX models on onnxruntime over the V2 protocol (JSON or
binary tensors), the way KServe's custom-model guide writes it. Runs in bench/.venv-kserve:

    bench/.venv-kserve/bin/python -m bench.apps.kserve_server --model h32=PATH/model.onnx --intra_op_threads 1 \
        --http_port 18105 --grpc_port 18115 --workers 2 --enable_grpc false --enable_latency_logging false

Unknown flags go to KServe's own parser (it reads them at import). With `--workers > 1` KServe spawns processes
and pickles the models into them, so the onnxruntime session is rebuilt after unpickling.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from bench.apps.onnx_model import SequenceSession


class OnnxSequenceModel(Model):
    def __init__(self, name: str, path: str, intra_op_threads: int) -> None:
        super().__init__(name)
        self.path, self.intra_op_threads = path, intra_op_threads
        self.runner: SequenceSession | None = None

    def load(self) -> bool:
        self.runner = SequenceSession(self.path, self.intra_op_threads)
        self.ready = True
        return self.ready

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "runner": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        probabilities = self.runner.probabilities(payload.inputs[0].as_numpy())
        output = InferOutput("probabilities", list(probabilities.shape), "FP32", data=probabilities)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=[output],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH of model.onnx")
    parser.add_argument("--intra_op_threads", type=int, default=1)
    args, _ = parser.parse_known_args()
    models = []
    for item in args.model:
        name, path = item.split("=", 1)
        model = OnnxSequenceModel(name, path, args.intra_op_threads)
        model.load()
        models.append(model)
    ModelServer().start(models)


if __name__ == "__main__":
    main()
