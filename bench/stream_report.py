"""The streaming part of docs/benchmarks.md (issue 8): medians over rounds, the three targets with PASS/MISS, the
tables, and how they were measured.

Targets: (a) a one-timestep stream request costs at most 1.2x the server CPU of a stateless 1x1 request on the
same protocol (v1 JSON predict for v1 tokens, V2 binary infer for V2 sequences); (b) the cost of a request does
not grow with the age of its stream: CPU per request of the last requests before `age_steps` timesteps over that of
the first ones, at most 1.2x; (c) with 32 streams on the large model, batching on gives >= 2x the throughput of
batching off (v1 tokens).
"""

from __future__ import annotations

from bench.loadgen import LoadResult
from bench.report import Summary, Target, _batching_why, _num, by_round, over_rounds, paired_ratio
from bench.streams import AGE_CHUNK, AGE_SAMPLE_S, CHUNKS, STREAMS, WAYS, AgeResult, StreamCell, StreamResults

CPU_GOAL = 1.2  # (a): stream request CPU / stateless 1x1 CPU
AGE_GOAL = 1.2  # (b): late / early CPU per request
BATCHING_GOAL = 2.0  # (c): batching on / off, req/s
BASELINES = {"v1-token": "v1-window", "v2-sqlite": "v2-window", "v2-redis": "v2-window"}
STATE_WORK = {
    "v1-token": "decoding and verifying the state token, then encoding and signing the next one (HMAC-SHA256)",
    "v2-sqlite": "reading the sequence's state from SQLite and writing the next one with a compare-and-set",
    "v2-redis": "reading the sequence's state from Redis and writing the next one with a compare-and-set, and "
    "redis-server's own CPU",
}


def summarize(cell: StreamCell, runs: list[LoadResult]) -> Summary:
    """Medians over the rounds; timesteps/s counts the new timesteps answered (batch 1 x chunk)."""
    return over_rounds(runs, batch=1, steps=cell.chunk)


def summaries(results: StreamResults) -> dict[StreamCell, Summary]:
    return {cell: summarize(cell, runs) for cell, runs in results.measured.items() if runs}


# ---------------------------------------------------------------------------------------------- targets


def targets(results: StreamResults, models: list[str]) -> list[Target]:
    found, table = [], summaries(results)

    def get(model: str, way: str, chunk: int) -> Summary | None:
        s = table.get(StreamCell(model, way, chunk, chunk))
        return s if s is not None and s.rps > 0 else None

    for m in models:
        for way, base in BASELINES.items():
            found.append(_cpu_target(m, way, base, get(m, way, 1), get(m, base, 1)))
    for way in BASELINES:
        found.append(_age_target(way, results.age_steps, results.ages.get(way, [])))
    large = models[-1]
    for chunk in CHUNKS:
        found.append(
            _batching_target(large, chunk, get(large, "v1-token", chunk), get(large, "v1-token-nobatch", chunk))
        )
    return found


def _cpu_target(model: str, way: str, base: str, stream: Summary | None, stateless: Summary | None) -> Target:
    note = "incl. redis-server's CPU" if way == "v2-redis" else ""
    baseline = "v1 JSON predict" if base == "v1-window" else "V2 binary infer"
    name = f"{model} c{STREAMS}: server CPU of a 1-timestep {WAYS[way].label} request vs a stateless 1x1 {baseline}"
    target = Target(name, f"<= {CPU_GOAL:g}x", note=note)
    if stream is not None and stateless is not None and stream.cpu_us and stateless.cpu_us:
        medians = stream.cpu_us / stateless.cpu_us
        value, rounds = paired_ratio(stream.round_cpu_us, stateless.round_cpu_us, medians)
        cpu = f"{stream.cpu_us:.0f} / {stateless.cpu_us:.0f} us CPU/req"
        target.value = f"{value:.2f}x ({cpu}{by_round(rounds)})"
        target.passed = value <= CPU_GOAL
        if not target.passed:
            target.why = (
                f"the stream request spends {stream.cpu_us - stateless.cpu_us:,.0f} us more CPU than the stateless "
                f"one, on what only it does: {STATE_WORK[way]}"
            )
    return target


def _age_target(way: str, steps: int, ages: list[AgeResult]) -> Target:
    """late/early CPU per request within each round whose streams all reached `steps`, and the median of those
    (the rounds that fell short count only when none reached it, and then without a verdict)."""
    target = Target(
        f"{WAYS[way].label}: request cost flat from step 10 to step {steps:,}", f"late/early <= {AGE_GOAL:g}x"
    )
    if not ages:
        return target
    measured = [
        (late / early, age)
        for age in ages
        if (early := age.early.cpu_us_per_request) and (late := age.late.cpu_us_per_request)
    ]
    reached = [(ratio, age) for ratio, age in measured if age.reached >= age.target]
    counted, median = reached or measured, ages[len(ages) // 2]
    if counted:
        ratio, median = sorted(counted, key=lambda pair: pair[0])[(len(counted) - 1) // 2]
        where = " in the median round" if len(counted) > 1 else ""
        early, late = median.early.cpu_us_per_request, median.late.cpu_us_per_request
        target.value = f"{ratio:.2f}x ({early:.0f} -> {late:.0f} us CPU/req{where}{by_round([r for r, _ in counted])})"
        target.passed = ratio <= AGE_GOAL if reached else None
    target.note = f"{median.model}, {median.chunk} timesteps/request; p50 {median.early.p50_ms:.2f} -> "
    target.note += f"{median.late.p50_ms:.2f} ms"
    if short := [age.reached for age in ages if age.reached < age.target]:
        target.note += f"; the slowest stream reached only {min(short):,} timesteps in time ({len(short)} of "
        target.note += f"{len(ages)} runs)"
    return target


def _batching_target(model: str, chunk: int, on: Summary | None, off: Summary | None) -> Target:
    name = f"{model} c{STREAMS}, {chunk} timestep(s)/request: v1 stream batching on vs off"
    target = Target(name, f">= {BATCHING_GOAL:g}x")
    if on is not None and off is not None:
        value, rounds = paired_ratio(on.round_rps, off.round_rps, on.rps / off.rps)
        target.value = f"{value:.2f}x ({on.rps:.0f} / {off.rps:.0f} req/s{by_round(rounds)})"
        target.passed = value >= BATCHING_GOAL
        if not target.passed:
            target.why = _batching_why(on, off)
    return target


# ----------------------------------------------------------------------------------------------- tables


def _row_order(cell: StreamCell, models: list[str]) -> tuple[int, int, int, int]:
    model = models.index(cell.model) if cell.model in models else len(models)
    return model, cell.chunk, list(WAYS).index(cell.way), cell.window


def results_table(results: StreamResults, models: list[str]) -> list[str]:
    lines = [
        "| how | model | new timesteps/request | timesteps sent/request | streams | req/s | timesteps/s | p50 ms | "
        "p99 ms | server CPU us/req | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    table = summaries(results)
    for cell in sorted(table, key=lambda c: _row_order(c, models)):
        s = table[cell]
        lines.append(
            f"| {WAYS[cell.way].label} | {cell.model} | {cell.chunk} | {cell.window} | {cell.streams} | "
            f"{_num(s.rps)} | {_num(s.timesteps_per_s)} | {_num(s.p50_ms)} | {_num(s.p99_ms)} | "
            f"{_num(s.cpu_us) if s.cpu_us is not None else '-'} | {s.errors} |"
        )
    return lines


def age_table(results: StreamResults) -> list[str]:
    lines = [
        "| how | model | timesteps/request | streams | round | age all reached | window | median age | req/s | "
        "p50 ms | p99 ms | server CPU us/req |",
        "|---|---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|",
    ]
    for way, runs in results.ages.items():
        for age in runs:
            for name, window, step in (("early", age.early, age.early_step), ("late", age.late, age.late_step)):
                cpu = window.cpu_us_per_request
                lines.append(
                    f"| {WAYS[way].label} | {age.model} | {age.chunk} | {STREAMS} | {age.round} | {age.reached:,} | "
                    f"{name} | {step:,.0f} | {_num(window.rps)} | {_num(window.p50_ms)} | {_num(window.p99_ms)} | "
                    f"{_num(cpu) if cpu is not None else '-'} |"
                )
    return lines


def section(results: StreamResults, models: list[str]) -> list[str]:
    lines = ["## Streams (issue 8)", ""]
    if results.truncated:
        lines += [f"Truncated: {results.truncated}.", ""]
    lines += [*results_table(results, models), ""]
    errors = sum(age.errors for runs in results.ages.values() for age in runs)
    lines += [f"### Stream age (errors: {errors})", ""]
    lines += [*age_table(results), ""] if results.ages else ["not measured", ""]
    return lines


def method(results: StreamResults, minutes: float) -> list[str]:
    return [
        f"- **Streams:** {STREAMS} concurrent streams per row, closed loop: a stream sends its next request only "
        "after the answer to the previous one. The load generator is Python (`bench/stream_client.py`, "
        f"`bench/stream_load.py`; wrk cannot carry a token from one answer to the next): {results.processes} "
        "spawned processes, each running its share of the streams on one asyncio loop, one keep-alive HTTP/1.1 "
        "connection per stream to 127.0.0.1. Each measurement starts new streams: every stream connects and sends "
        "one uncounted first request, then all start together and run for the measurement's seconds (requests "
        "answered in that time count; server CPU is read at its start and end). Every answer is read: HTTP 200, "
        "and the step count the server reports (`steps`, V2 `sequence_steps`) must be the stream's own, else it "
        "counts as an error and the stream restarts. Before any load, three requests of one stream per row are "
        f"checked against onnxruntime in-process on every timestep the model read (within 1e-4). Rounds in a new "
        f"seeded order per round, at most {minutes:g} min (`--stream-minutes`).",
        '- **Ways:** v1 tokens: `POST /v1/models/<m>/stream`, JSON `{"timesteps": [...], "state": <the previous '
        "answer's token>}`. V2 sequences: `POST /v2/models/<m>/infer`, binary tensor, `sequence_id` (unique per "
        "stream and measurement), `sequence_start` on the first request, and one uncounted last request with "
        "`sequence_end`; on the server's embedded SQLite store, or on a seqserve started with "
        "`SEQSERVE_SEQUENCE_STORE=redis://127.0.0.1:<port>/0` and a `redis-server` (no persistence) started by "
        "the benchmark on 127.0.0.1; the Redis rows' server CPU includes redis-server's. Stateless: `predict` "
        "with the last 50 or 500 timesteps (the client keeps the history and starts with a full window), 1 or 10 "
        "of them new per request; the 1x1 rows (v1 JSON predict and V2 binary infer with one timestep) are the "
        "baselines of the CPU target. timesteps/s counts new timesteps answered per second (req/s x new "
        "timesteps per request).",
        f"- **Stream age:** {STREAMS} streams of {AGE_CHUNK}-timestep requests on the small model run until every "
        f"stream has seen {results.age_steps:,} timesteps (or a time cap), the server's CPU read every "
        f"{AGE_SAMPLE_S * 1000:g} ms. Streams run at different speeds (their keep-alive connections are spread "
        "unevenly over the server's workers), so the windows are cut by age: the early window runs from the start "
        f"until the fastest stream has answered {results.age_window} requests (every request in it comes from a "
        f"younger stream), the late window over the slowest stream's last {results.age_window} requests up to "
        f"{results.age_steps:,} timesteps (every request in it comes from a stream at least that old; the faster "
        "ones keep going, so every stream is running). CPU per request: the server's CPU in the window "
        "(interpolated between readings) over the requests answered in it; the verdict is on CPU, p50 is shown "
        "beside it; the median age of the requests in each window is in the table. One age run per way in each "
        "round: a window lasts a fraction of a second, so a single run can catch a passing stall; the verdict is "
        "the median of the rounds' late/early ratios.",
        "- **Batching target (streams):** the same v1 token load on the batching-off seqserve.",
        "- **Ratios:** the CPU and batching targets take the ratio within each round and report the median of "
        "those, as the main targets do.",
    ]
