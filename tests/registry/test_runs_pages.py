"""`repro runs` pages newest first, by offset or by cursor, without repeats or gaps."""

from __future__ import annotations

import json

from registry.db import session_scope
from tests.registry.graph_helpers import record_run

# (id, recipe, minutes after T0): two runs share a timestamp, so order falls back to the id.
RUNS = [("r1", "tulu3-8b", 0), ("r2", "smollm2-135m", 1), ("r3", "tulu3-8b", 2), ("r4", "tulu3-8b", 2),
        ("r5", "smollm2-135m", 3), ("r6", "tulu3-8b", 4), ("r7", "tulu3-8b", 5)]
NEWEST_FIRST = ["r7", "r6", "r5", "r4", "r3", "r2", "r1"]


def _runs(db_url) -> None:
    with session_scope(db_url) as s:
        for run_id, recipe, minutes in RUNS:
            record_run(s, run_id, recipe=recipe, minutes=minutes)


def _ids(cli, *argv) -> list[str]:
    code, out, err = cli("runs", "--json", *argv)
    assert code == 0, err
    return [r["id"] for r in json.loads(out)]


def test_offset_pages_cover_every_run_once(db_url, cli):
    _runs(db_url)
    pages = [_ids(cli, "--limit", "3", "--offset", str(k)) for k in (0, 3, 6)]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sum(pages, []) == NEWEST_FIRST


def test_cursor_pages_cover_every_run_once(db_url, cli):
    _runs(db_url)
    seen, after = [], []
    while True:
        page = _ids(cli, "--limit", "2", *after)
        if not page:
            break
        seen += page
        after = ["--after", page[-1]]
    assert seen == NEWEST_FIRST


def test_recipe_filter_and_next_page_hint(db_url, cli):
    _runs(db_url)
    expected = [r for r in NEWEST_FIRST if dict((i, rec) for i, rec, _ in RUNS)[r] == "tulu3-8b"]
    assert _ids(cli, "--recipe", "tulu3-8b", "--limit", "50") == expected
    assert _ids(cli, "--recipe", "tulu3-8b", "--limit", "2", "--after", expected[1]) == expected[2:4]
    code, out, _ = cli("runs", "--limit", "2", "--recipe", "tulu3-8b")
    assert code == 0 and f"next page: repro runs --limit 2 --after {expected[1]} --recipe tulu3-8b" in out


def test_bad_page_arguments_are_one_line(db_url, cli):
    _runs(db_url)
    for argv, fragment in ((["--limit", "0"], "--limit must be ≥ 1"), (["--offset", "-1"], "--offset ≥ 0"),
                           (["--after", "no-such-run"], "unknown run 'no-such-run' for --after"),
                           (["--recipe", "tulu-8b"], "did you mean 'tulu3-8b'")):
        code, out, err = cli("runs", *argv)
        assert code == 2 and fragment in err and err.count("\n") == 1 and out == "", (argv, err)


def test_runs_on_no_database_lists_nothing_and_creates_nothing(cli, isolated_home):
    code, out, err = cli("runs", "--json")
    assert code == 0 and json.loads(out) == [], err
    assert not (isolated_home / "repro.db").exists()


def test_cold_path_pages_exactly_as_the_sqlalchemy_path(db_url, cli, monkeypatch):
    import registry.light_db as light

    _runs(db_url)
    with session_scope(db_url) as s:  # a dead run, reported interrupted by both paths
        record_run(s, "dead", minutes=9, status="running", pid=2 ** 22 + 11,
                   hostname=__import__("socket").gethostname(),
                   deviations=[{"key": "epochs", "recorded": 3, "used": 1}])
    real, taken = light.runs_page, []

    def spy(*args):
        page = real(*args)
        taken.append(page is not None)
        return page

    for argv in (["--json"], ["--json", "--limit", "2", "--offset", "1"], ["--json", "--after", "r5"],
                 ["--recipe", "tulu3-8b", "--limit", "2"], ["--json", "--after", "nope"], ["--limit", "3"]):
        monkeypatch.setattr(light, "runs_page", spy)
        cold = cli("runs", *argv)
        monkeypatch.setattr(light, "runs_page", lambda *a: None)
        assert cli("runs", *argv) == cold, argv
    assert taken and all(taken)
    code, out, _ = cli("runs", "--json", "--limit", "1")
    assert json.loads(out)[0]["status"] == "interrupted" and json.loads(out)[0]["deviations"][0]["used"] == 1
