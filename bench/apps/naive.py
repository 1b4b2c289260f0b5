"""A tutorial-style server, as users write it: Flask's own server (`app.run`, threaded by default), PyTorch in
eager mode with its default threads, `request.get_json()` into `torch.tensor`, `jsonify` out, one model per name
loaded from its training checkpoint. Nothing here is tuned, on purpose: it is the baseline seqserve must beat.

    python -m bench.apps.naive --port 18104 --model h32=bench/results/runs/h32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from flask import Flask, jsonify, request

from models import checkpoint

app = Flask(__name__)
MODELS: dict[str, checkpoint.Checkpoint] = {}


@app.route("/models/<name>/predict", methods=["POST"])
def predict(name: str):
    ckpt = MODELS[name]
    data = request.get_json()
    features = torch.tensor(data["sequences"], dtype=torch.float32)
    lengths = torch.tensor([len(s) for s in data["sequences"]])
    with torch.no_grad():
        probabilities = torch.softmax(ckpt.model(features, lengths), dim=-1)
    predictions = []
    for sequence_probabilities in probabilities:
        labels = [ckpt.class_names[j] for j in sequence_probabilities.argmax(dim=-1).tolist()]
        predictions.append({"labels": labels, "probabilities": sequence_probabilities.tolist()})
    return jsonify({"predictions": predictions})


@app.route("/ready")
def ready():
    return jsonify({"ready": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", required=True, help="NAME=RUN_DIR")
    args = parser.parse_args()
    for item in args.model:
        name, run_dir = item.split("=", 1)
        MODELS[name] = checkpoint.load(Path(run_dir) / checkpoint.CHECKPOINT_FILE)
    app.run(host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
