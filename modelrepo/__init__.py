"""The model repository contract, shared by the training side (which writes it) and the service (which reads it).

`REPO/NAME/VERSION/{model.onnx, model.pt, manifest.json}`, plus an optional `REPO/NAME/config.json` of serving
settings. This package owns that layout (`layout`) and the manifest's typed form (`manifest`): how a version is
named, found, written atomically, read and verified. It imports neither torch nor Flask, so both sides can use it.
"""
