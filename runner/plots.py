"""`repro plot schedule` and `repro plot curves`: PNG pictures people would rather look at than read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from registry.errors import ReproError

CURVE_KEYS = ("loss", "lr", "grad_norm", "rewards_accuracy", "rewards_margin", "accuracy", "reward_mean", "kl",
              "non_stop_rate", "response_length", "loss_web", "loss_code", "loss_math")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def schedule_points(recipe: str, stage: str, profile: str) -> tuple[list[int], list[float], str]:
    """(update, LR) of every optimizer update (every stride-th for long runs), as the recorded code steps
    its scheduler."""
    from registry.cli import registry
    from registry.derive import optimizer_steps
    from runner import schedules
    from runner.plan import resolve

    reg = registry()
    plan = resolve(reg, recipe, stage, profile)
    hp = plan.hyperparameters
    if profile == "recorded":
        total = optimizer_steps(reg.model, reg.stage(recipe, stage))
        if not total:
            raise ReproError(f"the total optimizer steps of {recipe}:{stage} ({profile}) are not derivable from "
                             "the recorded values")
    elif stage == "rlvr":
        total = hp["total_episodes"] // hp["effective_batch_size"] * hp.get("num_ppo_epochs", 1)
    elif stage == "pretrain":
        total = hp["train_steps"]
    else:
        total = None
    from runner.stages.kit import schedule_spec

    # A smoke tuning stage: its updates and schedule as the stage itself sizes them, from its examples.
    spec = schedule_spec(plan, _smoke_examples(plan) if total is None else None, total, 1)
    total, length, per_update = spec.total_updates, spec.schedule_steps, spec.steps_per_update
    warmup = spec.warmup_steps
    fn = schedules.build_schedule(hp.get("lr_scheduler", "linear"), length, warmup, **spec.wsd)
    stride = max(1, total // 4000)  # millions of steps: plot a thinned curve, exact at the sampled points
    # x is the optimizer update itself, not the sample's index: a thinned curve must still put the
    # warmup's end at its update (440 for the Tülu 3 8B SFT, sampled every 3rd update).
    updates = list(range(0, total, stride))
    points = [schedules.lr_at_update(fn, k + 1, per_update, hp["learning_rate"]) for k in updates]
    label = f"{hp.get('lr_scheduler')} · peak {hp['learning_rate']:g} · {total:,} updates · warmup {warmup:,}"
    if (length, per_update) != (total, 1):
        label += f" · schedule of {length:,} steps" + (f", {per_update} per update" if per_update > 1 else "")
    return updates, points, label if stride == 1 else label + f" (every {stride} updates)"


def _smoke_examples(plan) -> int:
    """How many training examples the smoke stage forms from its data, encoded as the stage encodes it (SFT
    packs rows into blocks; DPO drops and the RM filters over-long pairs)."""
    from runner.data.tokenizer import fixture_tokenizer
    from runner.stages.kit import train_rows

    rows, tokenizer = train_rows(plan), fixture_tokenizer(plan)
    if plan.stage == "sft":
        from runner.stages.sft import encode

        return len(encode(plan, rows, tokenizer)[0])
    if plan.stage == "dpo":
        from runner.stages.dpo import encode_pairs

        return len(encode_pairs(plan, rows, tokenizer)[0])
    if plan.stage == "rm":
        from runner.stages import rm

        return len(rm.encode_pairs(rows, tokenizer, plan.chat_template, rm.token_limit(plan))[0])
    return len(rows)


def schedule_figure(recipe: str, stage: str, profile: str):
    """The schedule as a matplotlib figure (the caller saves and closes it)."""
    updates, points, label = schedule_points(recipe, stage, profile)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(updates, points)
    ax.set_title(f"{recipe}:{stage} learning rate ({profile})\n{label}", fontsize=9)
    ax.set_xlabel("optimizer update (sampled)" if "every" in label else "optimizer update")
    ax.set_ylabel("learning rate")
    ax.set_xlim(0, max(updates[-1], 1))
    fig.tight_layout()
    return fig


def schedule_cmd(recipe: str, stage: str = typer.Option(..., "--stage", "-s"),
                 profile: str = typer.Option("recorded", "--profile"),
                 output: Path = typer.Option(..., "--output", "-o", help="PNG file to write")):
    """The learning rate of every optimizer update, as the recorded code stepped it."""
    fig = schedule_figure(recipe, stage, profile)
    plt = _pyplot()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    typer.echo(f"wrote {output}")


def curves_cmd(run: str, output: Optional[Path] = typer.Option(None, "--output", "-o"),
               keys: list[str] = typer.Option([], "--key", help="metric to plot (repeatable)")):
    """A run's per-step curves (loss, lr, rewards, ...)."""
    from registry.db import session_scope
    from registry.queries import get_run

    with session_scope() as session:
        row = get_run(session, run)
        if row is None:
            raise ReproError(f"unknown run {run!r}; see `repro runs`")
        run_dir = Path(row.run_dir)
    steps = json.loads((run_dir / "run.json").read_text())["steps"]
    if not steps:
        raise ReproError(f"run {run} recorded no steps")
    available = [k for k in CURVE_KEYS if any(k in s for s in steps)]
    wanted = keys or available[:4]
    unknown = [k for k in wanted if not any(k in s for s in steps)]
    if unknown:
        raise ReproError(f"run {run} has no metric {unknown[0]!r} (available: {', '.join(available)})")
    plt = _pyplot()
    fig, axes = plt.subplots(len(wanted), 1, figsize=(8, 2.2 * len(wanted)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], wanted):
        xs = [s["step"] for s in steps if key in s]
        ax.plot(xs, [s[key] for s in steps if key in s])
        ax.set_ylabel(key)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"{row.recipe}:{row.stage} — {row.id}", fontsize=9)
    fig.tight_layout()
    output = output or run_dir / "curves.png"
    fig.savefig(output, dpi=110)
    plt.close(fig)
    typer.echo(f"wrote {output}")


def register(plot_app: typer.Typer) -> None:
    plot_app.command("schedule")(schedule_cmd)
    plot_app.command("curves")(curves_cmd)
