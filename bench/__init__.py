"""The throughput benchmark of issue 4 (`make bench`, `python -m bench`): seqserve against onnxruntime in-process,
a bare Flask+gunicorn app, a tutorial-style server, KServe and MLServer. See docs/benchmarks.md."""
