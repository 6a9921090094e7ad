"""`repro show` resolves every source id it cites to its title, URL and commit (#14 item 16)."""

from __future__ import annotations

import json


def test_show_json_resolves_every_cited_source(cli):
    code, out, err = cli("show", "tulu3-8b", "--stage", "sft", "--json")
    assert code == 0, err
    doc = json.loads(out)
    cited = {doc["layout"]["source"].split(" ", 1)[0], doc["code"]["source"].split(" ", 1)[0]}
    cited |= {item["source"].split(" ", 1)[0] for item in doc["hyperparameters"].values()}
    assert cited <= doc["sources"].keys()
    code_pin = doc["sources"][doc["code"]["source"].split(" ", 1)[0]]
    assert code_pin["title"] and code_pin["url"].startswith("https://")


def test_show_table_prints_source_urls(cli):
    code, out, _ = cli("show", "smollm2-135m", "--stage", "dpo")
    assert code == 0 and "sources:" in out and "https://" in out.split("sources:", 1)[1]
