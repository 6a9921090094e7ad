"""`repro eval`, `repro compare` and `repro plot scorecard`, as plain typer command functions.

runner/cli.py registers them with `register(app)` (and `register_plot(plot_app)` for the
scorecard). These functions parse options and print; the evaluation and its record are
runner/eval_run.py (which says what TARGET may be) and runner/records.record_eval, the
comparison is runner/compare.comparison_document. Those, and torch with them, are imported
inside the functions so `repro list` stays light.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from registry.cli import console, emit_json, fmt
from registry.errors import ReproError, RunFailed


def eval_cmd(target: str = typer.Argument(..., help="a run id, a checkpoint name or a model directory"),
             suite: str = typer.Option(..., "--suite", help="published (the family's published protocols on "
                                                          "real data), verifiers, gsm8k, math, ifeval, "
                                                          "preference, heldout"),
             tasks: Optional[str] = typer.Option(None, "--tasks", help="--suite published: comma-separated tasks "
                                                 "(hellaswag, piqa, arc, mmlu_cloze, gsm8k, winogrande, "
                                                 "openbookqa, commonsense_qa)"),
             threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
             data: Optional[str] = typer.Option(None, "--data", help="JSONL eval data (default: the suite's fixture)"),
             reference: Optional[str] = typer.Option(None, "--reference",
                                                     help="reference model for DPO implicit rewards"),
             profile: str = typer.Option("smoke", "--profile",
                                         help="smoke, or recorded (names the published protocol)"),
             chat_template: Optional[str] = typer.Option(None, "--chat-template", help="tulu or chatml"),
             verifier_version: Optional[str] = typer.Option(None, "--verifier-version",
                                                            help="release-2024-11 or corrected (default: the "
                                                                 "run's stage, else release-2024-11)"),
             max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens"),
             batch_size: int = typer.Option(16, "--batch-size"),
             limit: Optional[int] = typer.Option(None, "--limit", help="evaluate N rows only (--suite published: "
                                                 "the harness's seeded subset, recorded; else the first N)"),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")):
    """Run an evaluation suite and record each metric with its protocol."""
    if suite == "published":
        from runner.eval_run import evaluate_published

        doc = evaluate_published(target, tasks, limit, threads)
        return emit_json(doc) if as_json else _print_published(doc)
    if tasks is not None:
        raise ReproError("--tasks applies to --suite published only")
    from runner.eval_run import evaluate_target

    doc = evaluate_target(target, suite, data=data, reference=reference, profile=profile,
                          chat_template=chat_template, verifier_version=verifier_version,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit)
    if as_json:
        return emit_json(doc)
    from rich.table import Table

    table = Table(title=f"eval {suite} on {doc['target']} → run {doc['run']}")
    for col in ("metric", "value", "n", "protocol"):
        table.add_column(col, overflow="fold")
    for m in doc["metrics"]:
        p = m["protocol"]
        stands = ""
        if "published" in p:
            stands = f" (stands for {p['published'].get('task') or p['published'].get('harness')})"
        table.add_row(m["name"], f"{m['value']:.4g}", str(p.get("n")), f"{p['settings']}{stands}")
    console().print(table)


def _print_published(doc: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"eval published on {doc['target']} → run {doc['run']}")
    for col in ("metric", "value", "n", "SE", "task", "deviations"):
        table.add_column(col, overflow="fold")
    for m in doc["metrics"]:
        p = m["protocol"]
        table.add_row(m["name"], f"{m['value']:.2f}", f"{p['n']}/{p['n_total']}", f"{p['standard_error']:.2f}",
                      p["published"]["task"], "; ".join(p["deviations"]))
    console().print(table)
    console().print(f"compare with the published numbers: repro compare {doc['run']}")


# ---------------------------------------------------------------- compare


def compare_cmd(run: str = typer.Argument(..., help="run id (or unique prefix)"),
                against: Optional[str] = typer.Option(None, "--against",
                                                      help="compare with this checkpoint's published metrics"),
                plot: Optional[str] = typer.Option(None, "--plot", help="also write the scorecard PNG here"),
                as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")):
    """A run's metrics against published (or smoke reference) values, with a verdict per metric."""
    from runner.compare import comparison_document

    doc = comparison_document(run, against)
    comparisons = doc.pop("comparisons")
    if plot:
        from runner.compare import scorecard_png

        doc["scorecard"] = str(scorecard_png(comparisons, plot, f"{doc['run']} ({doc['recipe_stage']})"))
    if as_json:
        emit_json(doc)
    else:
        _print_comparison(doc)
    from runner.compare import FAILING

    deviating = [f"{m['name']} ({m['verdict']})" for m in doc["metrics"] if m["verdict"] in FAILING]
    if deviating:
        raise RunFailed(f"{len(deviating)} metric(s) outside tolerance: {', '.join(deviating)}")


def _print_comparison(doc: dict[str, Any]) -> None:
    from rich.table import Table

    against = doc["published_checkpoint"] or "smoke references"
    table = Table(title=f"compare {doc['run']} ({doc['recipe_stage']}) against {against}")
    for col in ("metric", "run", "reference", "n", "SE", "difference", "tolerance", "verdict", "reason"):
        table.add_column(col, overflow="fold")
    colors = {"reproduced": "green", "within noise": "yellow", "deviates": "red", "not comparable": "dim",
              "unchanged": "green", "changed": "red", "too few items to judge": "dim"}
    out = console()
    if not doc["metrics"]:
        out.print(f"no metric of run {doc['run']} has a counterpart in {against}")
    for m in doc["metrics"]:
        tol = "—" if m["tolerance"] is None else f"±{m['tolerance']:.3g} ({m['tolerance_source']})"
        se = "—" if m.get("standard_error") is None else f"{m['standard_error']:.2f}"
        table.add_row(m["name"], fmt(round(m["value"], 4)), f"{fmt(m['reference'])} ({m['against']})",
                      "—" if m.get("n") is None else str(m["n"]), se, f"{m['difference']:+.3g}", tol,
                      f"[{colors[m['verdict']]}]{m['verdict']}[/]", m["reason"] or "")
    if doc["metrics"]:
        out.print(table)
    if doc["no_counterpart"]:
        out.print("no published or reference counterpart: " + ", ".join(doc["no_counterpart"]))


def scorecard_cmd(run: str = typer.Argument(..., help="run id (or unique prefix)"),
                  output: Optional[str] = typer.Option(None, "--output", "-o", help="PNG path "
                                                       "(default: RUN_DIR/scorecard.png)"),
                  against: Optional[str] = typer.Option(None, "--against")):
    """PNG: the run against the published (or reference) values per metric, with the tolerance band."""
    from runner.compare import comparison_document, scorecard_png

    doc = comparison_document(run, against)
    path = Path(output) if output else Path(doc["run_dir"]) / "scorecard.png"
    scorecard_png(doc["comparisons"], path, f"{doc['run']} ({doc['recipe_stage']})")
    sys.stdout.write(f"{path}\n")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)


def register_plot(plot_app: typer.Typer) -> None:
    plot_app.command("scorecard")(scorecard_cmd)


__all__ = ["eval_cmd", "compare_cmd", "scorecard_cmd", "register", "register_plot"]
