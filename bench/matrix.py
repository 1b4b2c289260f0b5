"""Who is measured on what: the contenders, and the cells (contender x model x payload x concurrency) of a full
and of a quick run. The full matrix covers every scenario for seqserve and every cell that a target of issues 4 and
9 needs for the others; the quick one only the target cells, on the small model where a target names no model.

seqserve runs twice: as it ships (an access line per request) and with its access log off, as KServe, MLServer and
the bare endpoint run here; comparisons with them use the second, so that every side does the same work."""

from __future__ import annotations

from dataclasses import dataclass

RAW_CONCURRENCY = 0  # the in-process limit has no clients: its streams are the server's workers


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    server: str | None  # None: in-process
    body: str = ""  # payload format (bench.payloads.ENCODERS)
    path: str = ""  # URL path, `{model}` filled in
    check: str = ""  # answer check (bench.payloads.CHECKS)
    per_model: bool = True


BARE_BINARY = "bare Flask+gunicorn (constant), V2 binary body"
V1 = "/v1/models/{model}/predict"
V2 = "/v2/models/{model}/infer"

CONTENDERS = {
    c.key: c
    for c in (
        Contender("raw", "onnxruntime in-process (the limit)", None),
        Contender("seqserve-json", "seqserve v1 JSON", "seqserve", "v1-json", V1, "v1-json"),
        Contender("seqserve-binary", "seqserve v1 binary", "seqserve", "v1-binary", V1, "v1-json"),
        Contender("seqserve-v2", "seqserve V2 binary", "seqserve", "v2-binary", V2, "v2"),
        Contender("quiet-json", "seqserve v1 JSON, access log off", "seqserve-quiet", "v1-json", V1, "v1-json"),
        Contender("quiet-binary", "seqserve v1 binary, access log off", "seqserve-quiet", "v1-binary", V1, "v1-json"),
        Contender("quiet-v2", "seqserve V2 binary, access log off", "seqserve-quiet", "v2-binary", V2, "v2"),
        Contender("seqserve-nobatch", "seqserve v1 JSON, batching off", "seqserve-nobatch", "v1-json", V1, "v1-json"),
        Contender("bare", "bare Flask+gunicorn (constant)", "bare", "v1-json", "/predict", "constant", per_model=False),
        Contender("bare-binary", BARE_BINARY, "bare", "v2-binary", "/predict", "constant", per_model=False),
        Contender("naive", "naive Flask+PyTorch tutorial", "naive", "v1-json", "/models/{model}/predict", "v1-json"),
        Contender("kserve-binary", "KServe V2 binary", "kserve", "v2-binary", V2, "v2"),
        Contender("kserve-json", "KServe V2 JSON", "kserve", "v2-json", V2, "v2"),
        Contender("mlserver-json", "MLServer V2 JSON", "mlserver", "v2-json", V2, "v2"),
        Contender("mlserver-pool-json", "MLServer V2 JSON, worker pool", "mlserver-pool", "v2-json", V2, "v2"),
    )
}


@dataclass(frozen=True, order=True)
class Cell:
    model: str  # "-" for the model-free bare server
    scenario: str
    concurrency: int
    contender: str


def _cells(contenders: list[str], models: list[str], scenarios: list[str], levels: list[int]) -> list[Cell]:
    cells = []
    for key in contenders:
        per_model = CONTENDERS[key].per_model
        for model in models if per_model else ["-"]:
            for scenario in scenarios:
                for c in levels if key != "raw" else [RAW_CONCURRENCY]:
                    cells.append(Cell(model, scenario, c, key))
    return cells


def full(models: list[str]) -> list[Cell]:
    every, small, large = ["1x50", "64x50", "1x500"], ["1x50", "64x50"], models[-1]
    cells = _cells(["seqserve-json"], models, every, [1, 8, 32])
    cells += _cells(["seqserve-binary"], models, ["64x50", "1x500"], [1, 8, 32])
    cells += _cells(["seqserve-binary", "seqserve-v2"], models, ["1x50"], [8])
    cells += _cells(["seqserve-v2"], models, ["64x50"], [8])
    cells += _cells(["raw"], models, every, [])
    cells += _cells(["seqserve-nobatch"], [large], ["1x50"], [1, 8, 32])
    cells += _cells(["quiet-json", "quiet-binary", "quiet-v2"], models, small, [8])
    cells += _cells(["bare"], models, ["1x50"], [1, 8, 32])
    cells += _cells(["bare", "bare-binary"], models, ["64x50"], [8])  # what reading the 64x50 bodies costs alone
    cells += _cells(
        ["naive", "kserve-binary", "kserve-json", "mlserver-json", "mlserver-pool-json"], models, small, [8]
    )
    return sorted(set(cells))


def quick(models: list[str]) -> list[Cell]:
    first, large = models[0], models[-1]
    cells = _cells(["seqserve-json"], [first], ["1x50", "64x50"], [8])
    cells += _cells(["seqserve-binary", "seqserve-v2"], [first], ["64x50"], [8])
    cells += _cells(["raw"], [first], ["64x50"], [])
    cells += _cells(["bare"], [first], ["1x50", "64x50"], [8])
    cells += _cells(["bare-binary"], [first], ["64x50"], [8])
    cells += _cells(["naive"], [first], ["64x50"], [8])
    cells += _cells(["kserve-binary", "mlserver-json", "mlserver-pool-json"], [first], ["1x50", "64x50"], [8])
    cells += _cells(["seqserve-json", "seqserve-nobatch"], [large], ["1x50"], [1, 32])
    cells += _cells(["quiet-json", "quiet-binary", "quiet-v2"], [first], ["1x50", "64x50"], [8])
    return sorted(set(cells))
