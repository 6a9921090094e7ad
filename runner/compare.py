"""Verdicts: a run's metrics against published values or smoke golden references.

Pure functions first (noise, tolerance, verdict, protocol fingerprints), then the
lookups (published metrics of the checkpoint a stage publishes; smoke references in
`registry/smoke_references.json`) and the scorecard picture.

Noise model (percent-scale accuracy metrics)
--------------------------------------------
For a benchmark of n items and a reference accuracy p (as a fraction):

    SE = 100 · sqrt(p (1 − p) / n)        binomial standard error, in percentage points
    g  = 100 / n                           granularity: one item moves the score by g points
    T  = 2 · SE + g                        tolerance: a ~95 % band plus one item of rounding

A recipe or a smoke reference that states a tolerance replaces T. With the absolute
difference d = |run − reference|:

    reproduced     d ≤ T / 2               (within about one SE)
    within noise   T / 2 < d ≤ T
    deviates       d > T
    not comparable the protocols differ (fingerprints, shots, eval data) or no tolerance is known

Against a published number (the published protocol, on the n actually evaluated) the verdicts are
reproduced / within noise / deviates. Against `registry/smoke_references.json`, numbers the project's
own earlier smoke runs produced, the same test is a regression check: "unchanged" (d ≤ T) or "changed"
(d > T), never "reproduced". Either way a metric on fewer than MIN_ITEMS items is "too few items to
judge": its tolerance is too wide to mean anything.

Example: p = 0.5, n = 100 → SE = 5, g = 1, T = 11; d = 5.5 is reproduced, 11 within noise, 11.01 deviates.
Metrics on a 0–1 scale (`scale=1`, e.g. TRL's rewards/accuracies) use the same formulas
with 1 in place of 100.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from registry.errors import ReproError

REPRODUCED, WITHIN_NOISE, DEVIATES, NOT_COMPARABLE = "reproduced", "within noise", "deviates", "not comparable"
# Against the project's own earlier smoke runs a comparison is a regression check, never a reproduction.
UNCHANGED, CHANGED = "unchanged", "changed"
TOO_FEW = "too few items to judge"
VERDICTS = (REPRODUCED, WITHIN_NOISE, DEVIATES, UNCHANGED, CHANGED, TOO_FEW, NOT_COMPARABLE)
FAILING = (DEVIATES, CHANGED)  # `repro compare` exits 1 on these
# Below this many items a binomial tolerance is wider than any effect worth seeing (n = 7: ±14 points for
# p = 0.5 at 2 SE + one item); such a metric is reported as too few to judge, not as a pass.
MIN_ITEMS = 30

SMOKE_REFERENCES = Path(__file__).resolve().parent.parent / "registry" / "smoke_references.json"

# Test-set sizes (public facts about the benchmark datasets, not about the recipes):
# - GSM8K: 1,319 test problems (Cobbe et al. 2021, arXiv:2110.14168; openai/gsm8k card, "main" test split).
# - MATH: 5,000 test problems (Hendrycks et al. 2021, arXiv:2103.03874); Minerva's evaluation
#   (Lewkowycz et al. 2022) and OLMES `minerva_math` use the same 5,000-problem test set.
# - IFEval: 541 prompts (Zhou et al. 2023, arXiv:2311.07911; google/IFEval card). Instruction-level
#   scores average over more items (834 instructions), so 541 is the conservative size.
# - UltraFeedback binarized test_prefs: 2,000 pairs (HuggingFaceH4/ultrafeedback_binarized card).
BENCHMARK_SIZES: dict[str, int] = {
    "GSM8K": 1319,
    "MATH": 5000,
    "IFEval": 541,
    "DPO eval rewards/accuracies": 2000,
}
# Scale of a metric's values: 100 for percentages (default), 1 for fractions.
METRIC_SCALE: dict[str, float] = {"DPO eval rewards/accuracies": 1.0}

# Protocol fields that define what was measured (the registry's MetricProtocol fields).
FINGERPRINT_FIELDS = ("harness", "task", "shots", "cot", "metric", "settings")


# ---------------------------------------------------------------- noise and verdicts


def binomial_se(p: float, n: int, scale: float = 100.0) -> float:
    """Standard error of an accuracy p (fraction in [0, 1]) measured on n items, in units of `scale`."""
    if n <= 0:
        raise ValueError(f"benchmark size must be positive, got {n}")
    p = min(max(p, 0.0), 1.0)
    return scale * math.sqrt(p * (1.0 - p) / n)


def granularity(n: int, scale: float = 100.0) -> float:
    """The smallest possible change of an accuracy on n items (one item), in units of `scale`."""
    if n <= 0:
        raise ValueError(f"benchmark size must be positive, got {n}")
    return scale / n


def noise_tolerance(reference: float, n: int, scale: float = 100.0) -> tuple[float, float, float]:
    """(T, SE, g) for a reference value on the metric's scale: T = 2·SE + g."""
    se = binomial_se(reference / scale, n, scale)
    g = granularity(n, scale)
    return 2.0 * se + g, se, g


def verdict(value: float, reference: float, tolerance: float) -> str:
    """reproduced (d ≤ T/2), within noise (d ≤ T), deviates (d > T); d = |value − reference|."""
    if tolerance < 0 or math.isnan(tolerance):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    d = abs(value - reference)
    # A hair of slack so that hand-computed boundaries (5.5 against 11 / 2) hold in floating point.
    eps = 1e-9 * max(1.0, abs(reference), tolerance)
    if d <= tolerance / 2 + eps:
        return REPRODUCED
    if d <= tolerance + eps:
        return WITHIN_NOISE
    return DEVIATES


# ---------------------------------------------------------------- protocols


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        text = " ".join(value.split()).lower()
        return text or None
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in sorted(value.items()) if _norm(v) is not None}
    return value


def normalized_protocol(protocol: dict[str, Any] | None, fields: Iterable[str] = FINGERPRINT_FIELDS) -> dict[str, Any]:
    """The fingerprinted fields: strings lower-cased with whitespace collapsed; unstated fields are None."""
    protocol = protocol or {}
    return {f: _norm(protocol.get(f)) for f in fields}


def fingerprint(protocol: dict[str, Any] | None, fields: Iterable[str] = FINGERPRINT_FIELDS) -> str:
    """sha256 (16 hex digits) of the normalized protocol fields."""
    blob = json.dumps(normalized_protocol(protocol, fields), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def claimed_protocol(protocol: dict[str, Any] | None) -> dict[str, Any]:
    """What a run metric's protocol stands for: its `published` protocol when it names one
    (`repro eval --profile recorded`), else the protocol itself."""
    protocol = protocol or {}
    return protocol.get("published") or protocol


def protocol_differences(run: dict[str, Any] | None, ref: dict[str, Any] | None,
                         fields: Iterable[str] = FINGERPRINT_FIELDS) -> list[str]:
    a, b = normalized_protocol(run, fields), normalized_protocol(ref, fields)
    return [f"{f}: {a[f]!r} vs {b[f]!r}" for f in fields if a[f] != b[f]]


def comparability(run_protocol: dict[str, Any] | None, ref_protocol: dict[str, Any] | None,
                  against: str) -> str | None:
    """None when the run's metric and the reference measure the same thing, else the reason.

    against="published": the run's claimed protocol must match the published one on the fields the
    claim states (a claim leaves e.g. the printed `settings` text to the table it points at); the
    shots the run actually used must equal the published shots.
    against="reference": the whole normalized protocol must match, and so must the eval data hash.
    """
    run_protocol = run_protocol or {}
    ref_protocol = ref_protocol or {}
    if against == "published":
        claim = claimed_protocol(run_protocol)
        fields = [f for f in FINGERPRINT_FIELDS if _norm(claim.get(f)) is not None]
        if "published" not in run_protocol:
            fields = list(FINGERPRINT_FIELDS)
        if fingerprint(claim, fields) != fingerprint(ref_protocol, fields):
            return "protocol fingerprints differ (" + "; ".join(protocol_differences(claim, ref_protocol, fields)) + ")"
        ran, published = run_protocol.get("shots"), ref_protocol.get("shots")
        if "published" in run_protocol and published is not None and ran is not None and int(ran) != int(published):
            return f"run used {ran} shots, the published protocol {published}"
        return None
    if fingerprint(run_protocol) != fingerprint(ref_protocol):
        return "protocol fingerprints differ (" + "; ".join(protocol_differences(run_protocol, ref_protocol)) + ")"
    a, b = run_protocol.get("data_sha256"), ref_protocol.get("data_sha256")
    if a and b and a != b:
        return f"evaluated on different data (sha256 {a[:12]} vs {b[:12]})"
    return None


# ---------------------------------------------------------------- one comparison


@dataclass
class Comparison:
    name: str
    value: float
    reference: float | None
    against: str  # "published" | "reference"
    verdict: str
    source: str | None = None  # checkpoint name or recipe:stage of the reference
    difference: float | None = None
    tolerance: float | None = None
    tolerance_source: str | None = None  # "stated" | "binomial"
    standard_error: float | None = None
    granularity: float | None = None
    n: int | None = None
    reason: str | None = None
    run_fingerprint: str | None = None
    reference_fingerprint: str | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    reference_protocol: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare_metric(name: str, value: float, protocol: dict[str, Any] | None, reference: float,
                   reference_protocol: dict[str, Any] | None, *, against: str, source: str | None = None,
                   stated_tolerance: float | None = None, n: int | None = None,
                   scale: float | None = None) -> Comparison:
    """One metric's verdict. `n` is the benchmark size behind the reference (for the binomial
    tolerance); without it or a stated tolerance the metric is not comparable."""
    protocol = protocol or {}
    reference_protocol = reference_protocol or {}
    scale = scale if scale is not None else float(protocol.get("scale") or METRIC_SCALE.get(name, 100.0))
    out = Comparison(name=name, value=float(value), reference=float(reference), against=against, verdict=NOT_COMPARABLE,
                     source=source, difference=float(value) - float(reference), n=n,
                     run_fingerprint=fingerprint(claimed_protocol(protocol) if against == "published" else protocol),
                     reference_fingerprint=fingerprint(reference_protocol), protocol=protocol,
                     reference_protocol=reference_protocol)
    reason = comparability(protocol, reference_protocol, against)
    ran = protocol.get("n")
    if not reason and against == "published" and n and ran and int(ran) != int(n):
        # A published score covers the whole benchmark; a subset (or a fixture standing in for it) is not it.
        reason = f"evaluated {ran} items; the published benchmark has {n}"
    if reason:
        out.reason = reason
        return out
    if stated_tolerance is not None:
        out.tolerance, out.tolerance_source = float(stated_tolerance), "stated"
    elif n:
        out.tolerance, out.standard_error, out.granularity = noise_tolerance(float(reference), int(n), scale)
        out.tolerance_source = "binomial"
    else:
        out.reason = "no tolerance: the benchmark size is unknown and none is stated"
        return out
    out.verdict = verdict(float(value), float(reference), out.tolerance)
    if against == "reference":  # a regression check against our own earlier run
        counted = out.tolerance_source == "binomial" and n is not None
        if counted and int(n) < MIN_ITEMS:
            out.verdict = TOO_FEW
            out.reason = f"n = {n}: a ±{out.tolerance:.3g} tolerance cannot tell a change (needs n >= {MIN_ITEMS})"
        else:
            out.verdict = CHANGED if out.verdict == DEVIATES else UNCHANGED
            out.reason = "regression check against the project's own earlier smoke run, not a published number"
    return out


# ---------------------------------------------------------------- published-suite metrics


def published_se(reference: float, parts: list[dict[str, Any]], scale: float = 100.0) -> float:
    """SE of the run's score if the true accuracy were the published one, from the n actually evaluated;
    an averaged benchmark (ARC = mean of Easy and Challenge) combines its parts' SEs."""
    p = min(max(reference / scale, 0.0), 1.0)
    return scale * math.sqrt(sum(p * (1 - p) / part["n"] for part in parts)) / len(parts)


def compare_published_suite(name: str, value: float, protocol: dict[str, Any], row: dict[str, Any],
                            source: str | None) -> Comparison:
    """A `--suite published` metric against the published number of the same benchmark.

    Comparable when the published row's harness, shots, task and metric (those it states) equal the
    protocol the run implements. The tolerance is T = 2·SE + g for the n evaluated (SE at the published
    accuracy, g = one item); verdicts as `verdict()`; n < MIN_ITEMS is too few to judge. The reason names
    every way the run departs from the published run (subset, split, few-shot pool, weights, dtype).
    """
    ref_protocol = row.get("protocol") or {}
    claim = protocol.get("published") or {}
    n = int(protocol.get("n") or 0)
    out = Comparison(name=name, value=float(value), reference=float(row["value"]), against="published",
                     verdict=NOT_COMPARABLE, source=source, difference=float(value) - float(row["value"]), n=n,
                     run_fingerprint=protocol.get("fingerprint") or fingerprint(claim),
                     reference_fingerprint=fingerprint(ref_protocol), protocol=protocol,
                     reference_protocol=ref_protocol)
    clashes = [f"{f}: {claim.get(f)!r} vs published {ref_protocol.get(f)!r}" for f in ("harness", "task", "shots",
                                                                                        "metric")
               if ref_protocol.get(f) is not None and _norm(claim.get(f)) != _norm(ref_protocol.get(f))]
    if clashes:
        out.reason = "protocols differ (" + "; ".join(clashes) + ")"
        return out
    parts = protocol.get("parts") or [{"n": n}]
    se = published_se(float(row["value"]), parts)
    g = 100.0 / n if n else float("inf")
    out.standard_error, out.granularity, out.tolerance, out.tolerance_source = se, g, 2 * se + g, "binomial"
    notes = list(protocol.get("deviations") or [])
    if n < MIN_ITEMS:
        out.verdict = TOO_FEW
        out.reason = "; ".join([f"n = {n} (needs >= {MIN_ITEMS})"] + notes)
        return out
    out.verdict = verdict(float(value), float(row["value"]), out.tolerance)
    out.reason = "; ".join([f"SE {se:.2f} at n = {n}"] + notes)
    return out


# ---------------------------------------------------------------- smoke references


def smoke_references_path() -> Path:
    return Path(os.environ.get("REPRO_SMOKE_REFERENCES") or SMOKE_REFERENCES)


def load_smoke_references(path: str | Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """{"recipe:stage": {metric: {"value", "tolerance" (optional), "protocol", "n" (optional)}}}."""
    path = Path(path) if path is not None else smoke_references_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReproError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ReproError(f"{path}: expected an object keyed 'recipe:stage'")
    for key, metrics in data.items():
        if ":" not in key or not isinstance(metrics, dict):
            raise ReproError(f"{path}: {key!r}: expected 'recipe:stage' -> {{metric: {{value, tolerance, protocol}}}}")
        for name, entry in metrics.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("value"), (int, float)):
                raise ReproError(f"{path}: {key}.{name}: needs a numeric 'value'")
            tol = entry.get("tolerance")
            if tol is not None and (not isinstance(tol, (int, float)) or tol < 0):
                raise ReproError(f"{path}: {key}.{name}: 'tolerance' must be a non-negative number")
    return data


def reference_entry(value: float, protocol: dict[str, Any] | None, tolerance: float | None = None) -> dict[str, Any]:
    """One entry for smoke_references.json, from a golden run's metric (protocol kept whole)."""
    entry: dict[str, Any] = {"value": float(value), "protocol": protocol or {}}
    if tolerance is not None:
        entry["tolerance"] = float(tolerance)
    return entry


# ---------------------------------------------------------------- a run's comparison


def published_checkpoint(registry, recipe: str, stage: str) -> str | None:
    """The checkpoint whose published metrics a stage's run is compared with: among the stage's outputs
    that carry metrics, the last public one (the final release rather than internal intermediates)."""
    try:
        st = registry.stage(recipe, stage)
    except ReproError:
        return None
    checkpoints = registry.model.checkpoints
    with_metrics = [o.checkpoint for o in st.outputs
                    if checkpoints.get(o.checkpoint) and checkpoints[o.checkpoint].metrics]
    public = [c for c in with_metrics if not c.startswith("internal:")]
    return (public or with_metrics or [None])[-1]


def compare_run(metrics: list[dict[str, Any]], *, published: list[dict[str, Any]], published_source: str | None,
                references: dict[str, dict[str, Any]], reference_source: str | None,
                prefer_published: bool) -> tuple[list[Comparison], list[str]]:
    """Compare each metric ({name, value, protocol}) with its counterpart.

    A metric goes against the published value when the run is a recorded-profile run or its protocol
    names the published protocol it stands for; otherwise against the smoke reference. Published rows
    are {benchmark, value, protocol, size?, tolerance?}; a benchmark published under several protocols
    is matched to the one with the same fingerprint, else reported not comparable against the first.
    Returns (comparisons, names with no counterpart).
    """
    by_benchmark: dict[str, list[dict[str, Any]]] = {}
    for row in published:
        by_benchmark.setdefault(row["benchmark"], []).append(row)
    results: list[Comparison] = []
    unmatched: list[str] = []
    for m in metrics:
        protocol = m.get("protocol") or {}
        if protocol.get("suite") == "published":  # the published protocol itself, on real data
            rows = by_benchmark.get(m["name"], [])
            if rows:
                results.append(compare_published_suite(m["name"], m["value"], protocol, rows[0], published_source))
            else:
                unmatched.append(m["name"])
            continue
        use_published = prefer_published or "published" in protocol
        candidates = by_benchmark.get(m["name"], []) if use_published else []
        ref = references.get(m["name"]) if not use_published else None
        if use_published and candidates:
            claim = fingerprint(claimed_protocol(protocol))
            row = next((r for r in candidates if fingerprint(r["protocol"]) == claim), None)
            if row is None:  # the closest one by reason: any without a fingerprint clash on stated fields
                row = next((r for r in candidates if comparability(protocol, r["protocol"], "published") is None),
                           candidates[0])
            n = row.get("size") or BENCHMARK_SIZES.get(m["name"])
            results.append(compare_metric(m["name"], m["value"], protocol, row["value"], row["protocol"],
                                          against="published", source=published_source,
                                          stated_tolerance=row.get("tolerance"), n=n))
        elif ref is not None:
            n = ref.get("n") or protocol.get("n")
            results.append(compare_metric(m["name"], m["value"], protocol, ref["value"], ref.get("protocol"),
                                          against="reference", source=reference_source,
                                          stated_tolerance=ref.get("tolerance"), n=n))
        else:
            unmatched.append(m["name"])
    return results, unmatched


def summary(comparisons: list[Comparison]) -> dict[str, int]:
    return {v: sum(c.verdict == v for c in comparisons) for v in VERDICTS}


def latest_metrics(session, run_id: str) -> list[dict[str, Any]]:
    """A run's metrics as compared: its latest eval value of each name, then the final metrics no eval
    metric shadows."""
    from registry.queries import run_metrics

    latest: dict[str, dict[str, Any]] = {}
    for row in run_metrics(session, run_id, kind="eval"):  # in written order: a later row replaces an earlier one
        latest[row.name] = {"name": row.name, "value": row.value, "protocol": row.protocol or {}, "kind": "eval"}
    for row in run_metrics(session, run_id, kind="final"):
        if row.name not in latest:
            latest.setdefault(row.name, {"name": row.name, "value": row.value, "protocol": row.protocol or {},
                                         "kind": "final"})
    return list(latest.values())


def comparison_document(run_ref: str, against: str | None = None) -> dict[str, Any]:
    """Everything `repro compare` prints, for one run (plus "comparisons", the Comparison objects the
    scorecard draws)."""
    from registry.db import session_scope
    from registry.queries import get_run
    from registry.recipes import load_recipes

    with session_scope() as session:
        run = get_run(session, run_ref)
        if run is None:
            raise ReproError(f"unknown run {run_ref!r}; see `repro runs`")
        metrics = latest_metrics(session, run.id)
        run_id, run_dir, profile, plan = run.id, run.run_dir, run.profile, run.plan or {}
        recipe_stage = plan.get("recipe_stage") if run.stage == "eval" else f"{run.recipe}:{run.stage}"
    if not metrics:
        raise ReproError(f"run {run_id} has no metrics to compare; evaluate it first "
                         f"(repro eval {run_id} --suite verifiers|preference|heldout)")
    reg = load_recipes()
    checkpoint = against or plan.get("published_checkpoint") or plan.get("checkpoint")
    if checkpoint is None and recipe_stage and ":" in recipe_stage:
        checkpoint = published_checkpoint(reg, *recipe_stage.split(":", 1))
    if against is not None and against not in reg.model.checkpoints:
        from registry.errors import unknown

        raise unknown("checkpoint", against, reg.model.checkpoints)
    ckpt = reg.model.checkpoints.get(checkpoint) if checkpoint else None
    published = [{"benchmark": m.benchmark, "value": m.value, "protocol": m.protocol.model_dump()}
                 for m in (ckpt.metrics if ckpt else [])]
    references = load_smoke_references().get(recipe_stage, {}) if recipe_stage else {}
    comparisons, unmatched = compare_run(metrics, published=published, published_source=checkpoint if ckpt else None,
                                         references=references, reference_source=recipe_stage,
                                         prefer_published=profile == "recorded" or against is not None)
    return {"run": run_id, "run_dir": run_dir, "profile": profile, "recipe_stage": recipe_stage or "external",
            "published_checkpoint": checkpoint if ckpt else None, "comparisons": comparisons,
            "metrics": [c.to_json() for c in comparisons], "no_counterpart": unmatched,
            "summary": summary(comparisons)}


# ---------------------------------------------------------------- scorecard


VERDICT_COLORS = {REPRODUCED: "#2a9d4b", WITHIN_NOISE: "#e0a100", DEVIATES: "#d62828", NOT_COMPARABLE: "#8a8a8a",
                  UNCHANGED: "#2a9d4b", CHANGED: "#d62828", TOO_FEW: "#8a8a8a"}


def _scale_of(c: Comparison) -> float:
    return float((c.protocol or {}).get("scale") or METRIC_SCALE.get(c.name, 100.0))


def _score_limits(c: Comparison, span: float) -> tuple[float, float]:
    """The x range of one row: the points with room around them, but never past what the score can be
    (an accuracy of 0–100 %, or 0–1, drawn on −50…150 % reads as a broken plot)."""
    lo, hi = min(c.reference, c.value) - span * 0.6, max(c.reference, c.value) + span * 0.6
    scale = _scale_of(c)
    if 0.0 <= min(c.reference, c.value) and max(c.reference, c.value) <= scale:
        lo, hi = max(lo, 0.0), min(hi, scale)
    return lo, hi


def _score_label(c: Comparison) -> str:
    scale = _scale_of(c)
    unit = "%" if scale == 100.0 else ("fraction" if scale == 1.0 else f"0–{scale:g}")
    return f"{c.name} ({unit})"


def scorecard_png(comparisons: list[Comparison], path: str | Path, title: str) -> Path:
    """The scorecard figure written as a PNG."""
    import matplotlib.pyplot as plt

    fig = scorecard_figure(comparisons, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scorecard_figure(comparisons: list[Comparison], title: str):
    """One row per metric: the reference (line), its tolerance band (shaded) and the run (dot,
    coloured by verdict). Each row has its own x-axis, since metrics differ in scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for c in comparisons if c.reference is not None]
    if not rows:
        raise ReproError("nothing to plot: no metric has a published or reference counterpart")
    fig, axes = plt.subplots(len(rows), 1, figsize=(7.5, 0.9 + 0.85 * len(rows)), squeeze=False)
    for ax, c in zip(axes[:, 0], rows):
        ref, tol = c.reference, c.tolerance
        span = max(abs(c.value - ref), tol or 0.0, abs(ref) * 0.05, 1e-6) * 1.6
        if tol is not None:
            ax.axvspan(ref - tol, ref + tol, color="#9ecae1", alpha=0.45, lw=0)
            ax.axvspan(ref - tol / 2, ref + tol / 2, color="#6baed6", alpha=0.45, lw=0)
        ax.axvline(ref, color="#08519c", lw=1.5)
        ax.plot([c.value], [0], "o", ms=9, color=VERDICT_COLORS[c.verdict], zorder=3)
        ax.set_xlim(*_score_limits(c, span))
        ax.set_xlabel(_score_label(c), fontsize=8)
        ax.set_yticks([])
        ax.set_ylabel(c.name, rotation=0, ha="right", va="center", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        label = f"{c.value:.4g} vs {c.against} {ref:.4g}" + (f" ± {tol:.3g}" if tol is not None else "")
        ax.set_title(f"{c.verdict}: {label}", fontsize=8, loc="left", color=VERDICT_COLORS[c.verdict])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


__all__ = [
    "REPRODUCED", "WITHIN_NOISE", "DEVIATES", "NOT_COMPARABLE", "UNCHANGED", "CHANGED", "TOO_FEW", "FAILING",
    "MIN_ITEMS", "VERDICTS", "compare_published_suite", "published_se", "BENCHMARK_SIZES", "FINGERPRINT_FIELDS",
    "binomial_se", "granularity", "noise_tolerance", "verdict", "normalized_protocol", "fingerprint",
    "claimed_protocol", "protocol_differences", "comparability", "Comparison", "compare_metric",
    "load_smoke_references", "reference_entry", "smoke_references_path", "published_checkpoint", "compare_run",
    "summary", "scorecard_png", "scorecard_figure",
]
