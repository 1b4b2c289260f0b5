"""The servers the benchmark runs besides seqserve: the framework's ceiling, a tutorial-style server, and the
custom ONNX model/runtime that KServe and MLServer serve (those two run in their own venvs)."""
