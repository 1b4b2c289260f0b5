"""docs/benchmarks.md: what was run, on what, the targets, the table, how it was measured, what was skipped."""

from __future__ import annotations

import datetime as dt

from bench import environment, lane_cost, report, stream_report, validation_cost
from bench.report import Target
from bench.run import Run


def render(
    run: Run,
    summaries: dict,
    found: list[Target],
    validation: validation_cost.ValidationCost | str,
    elapsed_s: float,
    beside: list[lane_cost.LaneCost] | str = "SKIPPED: not measured",
) -> str:
    o = run.options
    mode = "quick (a smoke run: its numbers are not the report)" if o.quick else "full"
    if o.part != "all":
        mode += f", `--part {o.part}` only"
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); rerun it to update this page, do not edit it by hand.",
        "",
        f"- **Command:** `{o.command}`",
        f"- **When:** {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, {elapsed_s / 60:.1f} min; mode: {mode}",
        f"- **Rounds:** {o.rounds} x {o.duration:g} s per cell ({o.warmup:g} s warm-up before a cell's first round), "
        "medians over rounds",
        f"- **Machine:** {environment.machine()}",
        *[f"- **Versions:** {v}" if i == 0 else f"  {v}" for i, v in enumerate(environment.versions(o.loadgen))],
        f"- **CPU budget, every contender:** {o.budget.describe()}",
    ]
    if run.truncated:
        lines.append(f"- **Truncated:** {run.truncated}")
    lines += ["", "## Targets (issues 4, 8 and 9)", "", *report.targets_table(found), ""]
    if o.part != "streams":
        lines += ["## Validation cost (64 x 50 JSON, in-process)", "", *_validation(validation), ""]
        lines += ["## Beside the model (64 x 50 binary requests, in-process)", "", *_beside(beside), ""]
        lines += ["## Results", "", *report.results_table(summaries), ""]
    if run.stream_results is not None:
        lines += stream_report.section(run.stream_results, list(run.models))
    lines += ["## Skipped", ""] + ([f"- {s}" for s in run.skipped] or ["- nothing"]) + [""]
    lines += _method(run)
    return "\n".join(lines) + "\n"


def _validation(v: validation_cost.ValidationCost | str) -> list[str]:
    if isinstance(v, str):
        return [v]
    verdict = "PASS" if v.passed else "MISS"
    return [
        f"Model {v.model}: whole request {v.request_ms:.2f} ms (Flask's test client into the real app, which "
        f"takes it through its inference lane, `service/lane.py`), JSON parse "
        f"({v.parser}) {v.parse_ms:.2f} ms, validation ({v.validator}) "
        f"{v.validate_ms:.2f} ms = **{v.share:.1%}** of the request (budget <= {validation_cost.BUDGET:.0%}): "
        f"**{verdict}**. Medians of repeated calls.",
    ]


def _beside(costs: list[lane_cost.LaneCost] | str) -> list[str]:
    if isinstance(costs, str):
        return [costs]
    lines = [
        f"Model {costs[0].model}, `python -m bench.lane_cost`: one 64 x 50 request through the app's inference lane, "
        "in-process (no sockets), CPU of one thread, medians of rounds. *Own code*: the request's decoding, checks, "
        "batcher, metrics and answer, with a stand-in for the model's run; *warm*: back to back; *after a run*: each "
        "right after a real run of the model, which fills the core's caches with its own data, so the Python that "
        "follows starts cold, as it does in a server. The socket side (the kernel, gevent, the hand-off to "
        "onnxruntime's thread) comes on top in the served rows.",
        "",
        "| format | model's run | whole answer | beside the run | own code, warm | own code, after a run | "
        "answer encoding, warm |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [
        f"| {c.name} | {c.model_us:,.0f} us | {c.whole_us:,.0f} us | **{c.beside_us:,.0f} us** | {c.hot_us:,.0f} us "
        f"| **{c.cold_us:,.0f} us** | {c.encode_us:,.0f} us |"
        for c in costs
    ]
    return lines


def _method(run: Run) -> list[str]:
    o, b = run.options, run.options.budget
    load = (
        "`wrk -t1 -cN --latency` with `bench/wrk/post.lua` (POSTs a body read from a file). One wrk thread: the "
        "load generator shares the 2 cores with the server under test and takes up to one of them, which caps "
        "every contender alike; not pinned with taskset, which would crowd the server onto one core"
        if run.options.loadgen == "wrk"
        else "the Python load generator (`--loadgen python`, or wrk was missing): one thread and keep-alive "
        "connection per client in one process; weaker than wrk (the GIL caps it), so the fastest servers are "
        "understated"
    )
    return [
        "## How it is measured",
        "",
        "- **Models:** LSTM per-timestep classifiers on 6 features, h32 (hidden 32, 1 layer) and h128 (hidden 128, "
        "2 layers), trained 2 epochs on a synthetic stream by `python -m models.train` and published by "
        "`python -m export` into `bench/results/model_repository` (cached; accuracy is irrelevant).",
        "- **Payloads:** one seeded float32 batch per scenario (sequences x steps x 6), encoded as v1 JSON "
        "(orjson's float32 shortest repr), v1 raw float32 (`Seqserve-Shape`), V2 binary tensors (`binary_data_output`)"
        " and V2 JSON; every contender gets the same numbers and returns per-timestep probabilities (v1 and the naive "
        "server also labels).",
        "- **Answers checked first:** one request per contender, model and payload must answer 200 with "
        "probabilities within 1e-4 of onnxruntime run in-process (the bare server: its constant); a contender that "
        "fails is skipped with the reason, never measured.",
        f"- **Load:** {load}. Closed loop, N = concurrent connections, keep-alive, {run.options.duration:g} s per "
        "measurement, 10 s per-request timeout. Errors (non-2xx, socket errors, timeouts) are counted and excluded "
        "from req/s.",
        "- **Noise:** all servers run side by side, idle when not measured; each round runs every scenario's cells "
        "in a new seeded random order; the table shows each metric's median over rounds. A target's ratio is the "
        "median over rounds of the ratio within each round (its two sides run minutes apart, one scenario's cells "
        "back to back, while a run's rounds sit up to half an hour apart, and this machine drifts), with each "
        "round's ratio shown; where the rounds do not pair (a failed or truncated round), the ratio of the medians.",
        f"- **raw (the limit):** `session.run` in-process on the same batches, {b.workers} thread(s) (one per server "
        f"worker) each with its own session of {b.intra_op_threads} intra-op thread(s); onnxruntime releases the GIL "
        "so they run in parallel like the worker processes. Its p50/p99 are per `run` call, its CPU per `run`.",
        "- **Server CPU us/req:** user + system CPU time of every process of the server under test (its process "
        "group, from /proc) during the measurement, over the requests answered: the cost of a request, which the "
        "other load on this shared machine disturbs far less than throughput. The load generator's own CPU is not "
        "in it.",
        "- **Client CPU us/req:** the load generator's own user + system CPU time (wrk's, from the rusage of the "
        "finished child) over the requests answered. It runs on the same 2 cores, so at a given req/s what it spends "
        "the server cannot; the in-process limit has no client. The 64x50 targets' reasons subtract it from what "
        "a goal leaves the server.",
        '- **seqserve:** `gunicorn --config gunicorn.conf.py "service:create_app()"` with the service\'s defaults '
        "except `SEQSERVE_MODEL_REPOSITORY`, `SEQSERVE_BIND`, and `SEQSERVE_BATCHING=false` for the batching-off "
        "server; per-request JSON logs on (the default) go to `bench/results/logs/`. The rows marked *access log off* "
        "run a third seqserve with `SEQSERVE_LOG_REQUESTS=false`: KServe, MLServer and the bare endpoint log no "
        "requests here, so the comparisons with them use those rows (the same observable work), and issue 9's "
        "targets are shown for both settings. Every gunicorn (seqserve and the bare endpoint) parses requests with "
        'gunicorn-h1c (`http_parser = "fast"`).',
        "- **bare Flask+gunicorn:** `bench/apps/bare.py` under the same gunicorn.conf.py, worker class and workers: "
        "reads the body, answers a constant. It also reads the 64x50 bodies (the JSON one, and the V2 binary one as "
        "*V2 binary body*): what receiving them costs with no work done, which the 64x50 targets' reasons quote.",
        "- **naive tutorial server:** `bench/apps/naive.py`: Flask's built-in server via `app.run()` (threaded, as "
        "tutorials start it), PyTorch eager with default threads, `models.checkpoint.load(run/checkpoint.pt)`, "
        "`request.get_json()` -> `torch.tensor` -> `model(features, lengths)` + softmax -> `jsonify` with class-name "
        "labels and probabilities.",
        "- **KServe:** `kserve.ModelServer` with a custom `kserve.Model` on onnxruntime "
        f"(`bench/apps/kserve_server.py`), {b.workers} uvicorn worker(s) of {b.intra_op_threads} onnxruntime "
        "thread(s), latency logging and access logs off, gRPC off; measured with V2 binary tensors and V2 JSON, the "
        "better one counts for the targets. KServe 0.21 turns a binary input tensor into Python lists and back "
        "(`InferRequest.from_bytes`), so its binary path is not much cheaper than JSON on large payloads.",
        "- **MLServer:** an `MLModel` runtime on onnxruntime (`bench/apps/mlserver_runtime.py`), V2 JSON (MLServer's "
        "REST API has no binary tensor extension), debug and gzip off, two ways: inference in the server process "
        f"(`parallel_workers: 0`, one session of {b.workers * b.intra_op_threads} threads) and in a pool of "
        f"{b.workers} inference process(es) of {b.intra_op_threads} thread(s) (`parallel_workers: {b.workers}`); "
        "neither wins on both payloads, so the better one counts for the targets. uvloop is pinned to 0.21.0: "
        "with >= 0.22 MLServer 1.7.1's inference workers crash at start (SeldonIO/MLServer#2286).",
        "- **Batching target:** the same seqserve with `SEQSERVE_BATCHING=false` as the baseline.",
        "- **Validation cost:** in-process (no sockets); see its section.",
        *(stream_report.method(run.stream_results, o.stream_minutes) if run.stream_results is not None else []),
        "",
    ]
