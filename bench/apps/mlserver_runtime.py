"""An MLServer custom runtime serving the benchmark's ONNX models on onnxruntime over V2 (MLServer's REST API has
no binary tensor extension, so JSON). `bench.runner` writes the settings folder and starts it in
bench/.venv-mlserver with `mlserver start FOLDER`; `parameters.uri` is the ONNX file and
`parameters.extra.intra_op_threads` onnxruntime's thread count."""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.apps.onnx_model import SequenceSession


class OnnxSequenceRuntime(MLModel):
    async def load(self) -> bool:
        parameters = self.settings.parameters
        threads = int((parameters.extra or {}).get("intra_op_threads", 1))
        self.runner = SequenceSession(parameters.uri, threads)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        features = NumpyCodec.decode_input(payload.inputs[0])
        probabilities = self.runner.probabilities(features)
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("probabilities", probabilities)]
        )
