"""Medians over rounds, the targets of issues 4 and 9 with PASS/MISS, and the Markdown report
(docs/benchmarks.md)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.fixtures import MODELS
from bench.loadgen import LoadResult
from bench.matrix import CONTENDERS, RAW_CONCURRENCY, Cell
from bench.payloads import SCENARIOS

PAYLOADS = ("1x50", "64x50")


@dataclass(frozen=True)
class Summary:
    """One cell's medians over its rounds (each metric's own median)."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    rounds: int
    batch: int
    steps: int
    cpu_us: float | None = None  # server CPU time per request (per run for the in-process limit)
    round_rps: tuple[float, ...] = ()  # each round's req/s, in round order (what `paired` pairs)
    round_cpu_us: tuple[float | None, ...] = ()  # each round's CPU per request, None where not measured
    client_cpu_us: float | None = None  # the load generator's CPU time per request, on the same cores

    @property
    def sequences_per_s(self) -> float:
        return self.rps * self.batch

    @property
    def timesteps_per_s(self) -> float:
        return self.rps * self.batch * self.steps


def over_rounds(runs: list[LoadResult], batch: int, steps: int) -> Summary:
    """Each metric's median over the rounds (CPU over the rounds that measured it), errors summed."""
    cpu = [r.cpu_us_per_request for r in runs if r.cpu_us_per_request]
    client = [r.client_cpu_us_per_request for r in runs if r.client_cpu_us_per_request]
    return Summary(
        rps=statistics.median(r.rps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        errors=sum(r.errors for r in runs),
        rounds=len(runs),
        batch=batch,
        steps=steps,
        cpu_us=statistics.median(cpu) if cpu else None,
        round_rps=tuple(r.rps for r in runs),
        round_cpu_us=tuple(r.cpu_us_per_request for r in runs),
        client_cpu_us=statistics.median(client) if client else None,
    )


Rounds = tuple[float | None, ...]  # one figure per round of a run, in round order


def paired(num: Rounds, den: Rounds) -> list[float]:
    """`num / den` round by round; empty unless both sides have a figure in every round of the same run.

    Both sides of a round run minutes apart (one scenario's cells back to back), while the rounds of one run can
    sit half an hour apart, and this machine drifts over that time: every contender, raw onnxruntime included,
    slowed by up to a third from the first round of a run to the last. A ratio of two medians can pair one side's
    fast round with the other's slow one; the median of the ratios within each round cannot."""
    if not num or len(num) != len(den) or any(n is None for n in num) or any(not d for d in den):
        return []
    return [n / d for n, d in zip(num, den, strict=True)]


def paired_ratio(num: Rounds, den: Rounds, medians: float) -> tuple[float, list[float]]:
    """The median of `paired(num, den)` and those ratios; `medians` (the ratio of the two medians) and no ratios
    where the rounds do not pair."""
    rounds = paired(num, den)
    return (statistics.median(rounds) if rounds else medians), rounds


def summarize(cell: Cell, runs: list[LoadResult]) -> Summary:
    batch, steps = (int(x) for x in cell.scenario.split("x"))
    return over_rounds(runs, batch, steps)


@dataclass
class Target:
    name: str
    goal: str
    value: str = "not measured"
    passed: bool | None = None
    note: str = ""

    why: str = ""  # a miss's reason, computed from the measurements

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]

    @property
    def remark(self) -> str:
        """The note, and for a miss, why: what the measured CPU per request says about it."""
        parts = [self.note, f"why: {self.why}" if self.passed is False and self.why else ""]
        return "; ".join(p for p in parts if p)


@dataclass
class Targets:
    results: dict[Cell, Summary]
    models: list[str]
    found: list[Target] = field(default_factory=list)

    def get(self, contender: str, model: str, scenario: str, c: int) -> Summary | None:
        s = self.results.get(Cell(model, scenario, c, contender))
        return s if s is not None and s.rps > 0 else None

    def ratio(
        self, name: str, goal: float, num: Summary | None, den: Summary | None, note: str = "", why: Why | None = None
    ) -> None:
        """`num / den` in requests/s against `goal`: the median of the ratios within each round (`paired`), or of
        the medians where the rounds do not pair; n/a when either side was not measured."""
        target = Target(name, f">= {goal:g}x" if goal >= 1 else f">= {goal:.0%}", note=note)
        if num is not None and den is not None:
            value, rounds = paired_ratio(num.round_rps, den.round_rps, num.rps / den.rps)
            percent = goal < 1
            rps = f"{num.rps:.0f} / {den.rps:.0f} req/s"
            target.value = f"{_show(value, percent)} ({rps}{by_round(rounds, percent)})"
            target.passed = value >= goal
            target.why = why(num, den) if why is not None and not target.passed else ""
        self.found.append(target)

    def cpu_ratio(
        self, name: str, goal: float, num: Summary | None, den: Summary | None, note: str = "", why: Why | None = None
    ) -> None:
        """Server CPU per request, `num / den`, at most `goal` (paired by round as `ratio`); n/a when either side
        has no CPU figure."""
        target = Target(name, f"<= {goal:g}x", note=note)
        if num is not None and den is not None and num.cpu_us and den.cpu_us:
            value, rounds = paired_ratio(num.round_cpu_us, den.round_cpu_us, num.cpu_us / den.cpu_us)
            target.value = f"{_show(value)} ({num.cpu_us:,.0f} / {den.cpu_us:,.0f} us/req{by_round(rounds)})"
            target.passed = value <= goal
            target.why = why(num, den) if why is not None and not target.passed else ""
        self.found.append(target)

    def best(self, keys: list[str], model: str, scenario: str, c: int) -> tuple[str, Summary | None]:
        found = [(k, s) for k in keys if (s := self.get(k, model, scenario, c)) is not None]
        return max(found, key=lambda ks: ks[1].rps) if found else ("", None)


def _show(ratio: float, percent: bool = False) -> str:
    return f"{ratio:.1%}" if percent else f"{ratio:.2f}x"


def by_round(rounds: list[float], percent: bool = False) -> str:
    """The ratio of each round, after the two medians, where there are several."""
    return f"; by round {', '.join(_show(r, percent) for r in rounds)}" if len(rounds) > 1 else ""


SHIPPED = ["seqserve-json", "seqserve-binary", "seqserve-v2"]  # as it ships: an access line per request
QUIET = ["quiet-json", "quiet-binary", "quiet-v2"]  # access log off, as the peers and the bare endpoint run here


def targets(results: dict[Cell, Summary], models: list[str]) -> list[Target]:
    t = Targets(results, models)
    _issue4(t, models)
    _issue9(t, models[0])
    return t.found


# Why a target was missed, from the CPU per request of the two sides (and the model's own cost, onnxruntime alone).
Why = Callable[[Summary, Summary], str]


def _cpu(s: Summary | None) -> float:
    return s.cpu_us if s is not None and s.cpu_us else float("nan")


def _beyond_model(goal: float, bare: Summary | None = None) -> Why:
    """Against raw onnxruntime: what the server spends per request beyond the model's own run, and what the goal
    leaves for it (every side here is bound by the same 2 cores, so req/s go as the inverse of CPU per request,
    the load generator's included: raw has none); with `bare`, what the bare endpoint spends receiving the same
    body and answering a constant."""

    def why(ours: Summary, raw: Summary) -> str:
        beyond, budget = _cpu(ours) - _cpu(raw), _cpu(raw) * (1 / goal - 1)
        text = (
            f"the model's run costs {_cpu(raw):,.0f} us CPU; the server spends {beyond:,.0f} us per request beyond "
            "it (the kernel receiving and sending the bodies, parsing and checking them, the hand-off to "
            f"onnxruntime's thread, the answer), where {goal:.0%} of raw's req/s leaves {budget:,.0f} us"
        )
        if ours.client_cpu_us:
            text += (
                f", {budget - ours.client_cpu_us:,.0f} us once the load generator's own "
                f"{ours.client_cpu_us:,.0f} us per request on the same cores is counted"
            )
        if bare is not None and bare.cpu_us:
            text += f"; the bare endpoint spends {bare.cpu_us:,.0f} us receiving the same body and answering a constant"
        return text

    return why


def _beyond_bare(model_alone: Summary | None) -> Why:
    """Against the bare endpoint, which answers a constant: what a prediction adds to gunicorn and Flask alone."""

    def why(ours: Summary, bare: Summary) -> str:
        return (
            f"the bare endpoint's {_cpu(bare):,.0f} us is gunicorn and Flask answering a constant (seqserve's "
            "inference requests skip both Flask and gunicorn's request objects); a prediction adds "
            f"{_cpu(ours) - _cpu(bare):,.0f} us: onnxruntime's own {_cpu(model_alone):,.0f} us, decoding and "
            "validating the body, the thread hand-off and the answer"
        )

    return why


def _against_peer(model_alone: Summary | None, goal: float) -> Why:
    """Against another server: the CPU per request of each, and the best any server could reach (the other's CPU
    over the model's own)."""

    def why(ours: Summary, theirs: Summary) -> str:
        bound = _cpu(theirs) / _cpu(model_alone)
        text = (
            f"server CPU per request: ours {_cpu(ours):,.0f} us, theirs {_cpu(theirs):,.0f} us, the model alone "
            f"{_cpu(model_alone):,.0f} us"
        )
        if bound < goal * 1.25:
            return text + f"; a server costing nothing beyond the model would reach only {bound:.2f}x"
        return text + (
            f"; ours spends {_cpu(ours) - _cpu(model_alone):,.0f} us per request beyond the model (HTTP, the "
            "framework, decoding and encoding the bodies)"
        )

    return why


def _batching_why(on: Summary, off: Summary) -> str:
    return (
        f"merging cut the CPU per request from {_cpu(off):,.0f} to {_cpu(on):,.0f} us; on this machine's cores both "
        "settings are bound by the per-request HTTP work, which batching cannot merge"
    )


def _issue4(t: Targets, models: list[str]) -> None:
    for m in models:
        raw = t.get("raw", m, "64x50", RAW_CONCURRENCY)
        for key, what, goal in (
            ("seqserve-json", "JSON", 0.5),
            ("seqserve-binary", "v1 binary", 0.75),
            ("seqserve-v2", "V2 binary", 0.75),
        ):
            ours, bare = t.get(key, m, "64x50", 8), _bare_for(t, key)
            t.ratio(f"{m} 64x50 c8: {what} vs raw onnxruntime", goal, ours, raw, why=_beyond_model(goal, bare))
    for m in models:
        bare, alone = t.get("bare", "-", "1x50", 8), t.get("raw", m, "1x50", RAW_CONCURRENCY)
        ours = t.get("seqserve-json", m, "1x50", 8)
        t.ratio(f"{m} 1x50 c8: JSON vs bare Flask+gunicorn", 0.8, ours, bare, why=_beyond_bare(alone))
    for m in models:
        naive, alone = t.get("naive", m, "64x50", 8), t.get("raw", m, "64x50", RAW_CONCURRENCY)
        ours = t.get("seqserve-json", m, "64x50", 8)
        t.ratio(f"{m} 64x50 c8: JSON vs naive tutorial server", 20, ours, naive, why=_against_peer(alone, 20))
    for peer, keys in (
        ("KServe", ["kserve-binary", "kserve-json"]),
        ("MLServer", ["mlserver-json", "mlserver-pool-json"]),
    ):
        for m in models:
            for payload in PAYLOADS:
                ours, our_best = t.best(QUIET, m, payload, 8)  # the same observable work: no access log
                theirs, their_best = t.best(keys, m, payload, 8)
                note = f"best of each: {_label(ours)} vs {_label(theirs)}" if ours and theirs else ""
                why = _against_peer(t.get("raw", m, payload, RAW_CONCURRENCY), 1.5)
                t.ratio(f"{m} {payload} c8: seqserve vs {peer}", 1.5, our_best, their_best, note, why)
    large = models[-1]
    on32, off32 = t.get("seqserve-json", large, "1x50", 32), t.get("seqserve-nobatch", large, "1x50", 32)
    t.ratio(f"{large} 1x50 c32: batching on vs off", 2, on32, off32, why=_batching_why)
    t.found.append(_added_p50(t, large))


def _issue9(t: Targets, small: str) -> None:
    """Issue 9's targets on the small model, for seqserve as it ships and with its access log off."""
    bare, raw = t.get("bare", "-", "1x50", 8), t.get("raw", small, "64x50", RAW_CONCURRENCY)
    alone = t.get("raw", small, "1x50", RAW_CONCURRENCY)
    _, kserve = t.best(["kserve-binary", "kserve-json"], small, "1x50", 8)
    for keys, setting in ((SHIPPED, "access log on"), (QUIET, "access log off")):
        json, binary, v2 = (t.get(k, small, "64x50", 8) for k in keys)
        one = t.get(keys[0], small, "1x50", 8)
        _, best = t.best(keys, small, "1x50", 8)
        name = f"{small} 1x50 c8 JSON, {setting}: server CPU vs bare Flask+gunicorn"
        t.cpu_ratio(name, 1.6, one, bare, why=_beyond_bare(alone))
        name = f"{small} 1x50 c8, {setting}: best seqserve vs KServe's best"
        t.ratio(name, 1.3, best, kserve, why=_against_peer(alone, 1.3))
        for key, what, goal, ours in zip(
            keys, ("v1 JSON", "v1 raw float32", "V2 binary"), (0.35, 0.70, 0.75), (json, binary, v2), strict=True
        ):
            name = f"{small} 64x50 c8 {what}, {setting}: vs raw onnxruntime"
            t.ratio(name, goal, ours, raw, why=_beyond_model(goal, _bare_for(t, key)))


def _bare_for(t: Targets, key: str) -> Summary | None:
    """The bare endpoint on a 64x50 body as large as the one contender `key` sends (JSON, or binary)."""
    return t.get("bare" if CONTENDERS[key].body.endswith("json") else "bare-binary", "-", "64x50", 8)


def _added_p50(t: Targets, model: str) -> Target:
    target = Target(f"{model} 1x50 c1: p50 added by batching", "<= 0.5 ms")
    on, off = t.get("seqserve-json", model, "1x50", 1), t.get("seqserve-nobatch", model, "1x50", 1)
    if on is not None and off is not None:
        added = on.p50_ms - off.p50_ms
        target.value = f"{added:+.2f} ms ({on.p50_ms:.2f} vs {off.p50_ms:.2f} ms)"
        target.passed = added <= 0.5
    return target


def _label(key: str) -> str:
    return CONTENDERS[key].label


# ------------------------------------------------------------------------------------------------ tables


def _num(x: float) -> str:
    if x != x:  # NaN
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def results_table(results: dict[Cell, Summary]) -> list[str]:
    lines = [
        "| contender | model | payload | clients | req/s | sequences/s | timesteps/s | p50 ms | p99 ms | "
        "server CPU us/req | client CPU us/req | errors |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for cell in sorted(results, key=_row_order):
        s = results[cell]
        clients = "in-process" if cell.concurrency == RAW_CONCURRENCY else str(cell.concurrency)
        lines.append(
            f"| {_label(cell.contender)} | {cell.model} | {cell.scenario} | {clients} | {_num(s.rps)} | "
            f"{_num(s.sequences_per_s)} | {_num(s.timesteps_per_s)} | {_num(s.p50_ms)} | {_num(s.p99_ms)} | "
            f"{_num(s.cpu_us) if s.cpu_us is not None else '-'} | "
            f"{_num(s.client_cpu_us) if s.client_cpu_us is not None else '-'} | {s.errors} |"
        )
    return lines


def _row_order(c: Cell) -> tuple[int, int, int, int]:
    """Payloads and models in the order they are defined (small first), then contenders, then clients."""
    scenarios = [s.name for s in SCENARIOS]
    models = ["-", *(m.name for m in MODELS)]
    return scenarios.index(c.scenario), models.index(c.model), list(CONTENDERS).index(c.contender), c.concurrency


def targets_table(found: list[Target]) -> list[str]:
    lines = ["| target | goal | measured | verdict | note |", "|---|---|---|---|---|"]
    lines += [f"| {t.name} | {t.goal} | {t.value} | **{t.verdict}** | {t.remark} |" for t in found]
    return lines
