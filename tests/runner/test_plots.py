"""The pictures and the progress bar say what happened (#14 item 14): the schedule's x is the optimizer
update, the scorecard has a labelled axis inside the score's range, the bar knows its total."""

from __future__ import annotations

import sys
import time

import pytest

pytest.importorskip("matplotlib")


def test_schedule_plot_x_axis_is_the_optimizer_update():
    """Tülu 3 8B SFT as recorded: 14,676 updates, sampled every 3rd; the warmup ends at update 440, not at
    sample ~147."""
    import matplotlib.pyplot as plt

    from runner import schedules
    from runner.plots import schedule_figure

    fig = schedule_figure("tulu3-8b", "sft", "recorded")
    try:
        (line,) = fig.axes[0].lines
        xs, ys = list(line.get_xdata()), list(line.get_ydata())
        total = xs[-1] + (xs[1] - xs[0])
        assert xs[1] - xs[0] > 1  # thinned: the case the sample index got wrong
        warmup = schedules.warmup_steps_for(total, 0.03, "open-instruct")
        peak_at = xs[ys.index(max(ys))]
        assert abs(peak_at - warmup) <= xs[1] - xs[0], (peak_at, warmup)
        assert fig.axes[0].get_xlim()[1] >= xs[-1]
    finally:
        plt.close(fig)


def test_scorecard_has_an_x_label_and_stays_inside_the_score_range():
    import matplotlib.pyplot as plt

    from runner import compare as C

    rows = [C.compare_metric("GSM8K", 0.0, None, 87.6, None, against="reference", n=1319),
            C.compare_metric("DPO eval rewards/accuracies", 0.9, None, 0.5, None, against="reference", n=2000),
            C.compare_metric("loss", 130.0, {"scale": 1}, 120.0, None, against="reference", n=100)]
    fig = C.scorecard_figure(rows, "test")
    try:
        gsm, acc, loss = fig.axes
        assert gsm.get_xlabel() == "GSM8K (%)" and acc.get_xlabel() == "DPO eval rewards/accuracies (fraction)"
        assert gsm.get_xlim() == (0.0, 100.0)  # not −50 … 150
        lo, hi = acc.get_xlim()
        assert 0.0 <= lo < 0.5 and 0.9 < hi <= 1.0
        lo, hi = loss.get_xlim()
        assert lo < 120.0 and hi > 130.0  # off the 0–1 scale: not clamped
    finally:
        plt.close(fig)


class _Plan:
    recipe, stage = "tulu3-8b", "sft"


def test_progress_bar_shows_total_and_eta(monkeypatch):
    """The stage reports its update count; the bar then renders N/TOTAL, and rich can estimate the rest."""
    from runner.commands import run as run_cli
    from runner.stages.kit import StageContext, report_total

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with run_cli._progress(_Plan(), quiet=False) as progress:
        assert progress is not None
        ctx = StageContext(plan=None, record=None, progress=progress)  # type: ignore[arg-type]
        report_total(ctx, 240)
        for step in (1, 2, 3):
            progress({"step": step, "loss": 1.0})
            time.sleep(0.02)
        task = progress.bar.tasks[0]
        assert task.total == 240 and task.completed == 3
        text = progress.bar.columns[2].render(task).plain
        assert text.startswith("3/240 steps"), text
        eta = progress.bar.columns[3].render(task).plain
        assert eta != "-:--:--" and ":" in eta, eta  # rich shows "-:--:--" when it cannot estimate


def test_progress_reaches_the_bar_from_a_run(cli, monkeypatch):
    """A real (short) smoke run tells the bar its total: --max-steps 2 of the Tülu 3 SFT."""
    from runner.commands import run as run_cli

    seen: list[int] = []
    real_total = run_cli._progress.total

    def spy(self, updates):
        seen.append(updates)
        return real_total(self, updates)

    real_init = run_cli._progress.__init__

    def loud(self, plan, quiet):
        real_init(self, plan, quiet)
        self.quiet = False  # the test's stderr is no terminal

    monkeypatch.setattr(run_cli._progress, "total", spy)
    monkeypatch.setattr(run_cli._progress, "__init__", loud)
    code, out, err = cli("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--max-steps", "2")
    assert code == 0, err
    assert seen and seen[-1] == 2
