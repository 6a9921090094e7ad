"""A gated model or dataset without a token: one line, exit 2, nothing written.

Tests never reach the Hub, so a small HTTP server on 127.0.0.1 answers every request the way the Hub
answers for a gated repository to a caller without a token: 401 with `X-Error-Code: GatedRepo`. The
real clients (huggingface_hub's `hf_hub_download`, `datasets.load_dataset`) talk to it through
HF_ENDPOINT, in a `repro` subprocess (both libraries read HF_ENDPOINT when they are imported), so the
refusal comes from the library's own error classes, as it would on a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.runner.test_hub_data import SFT_135M, UF, dpo_argv, smoltalk_mirror, tiny_smollm2  # noqa: F401

pytestmark = pytest.mark.slow  # two cold `repro` processes


class GatedHub(BaseHTTPRequestHandler):
    """Every path is a gated repository; the request log is kept so the test can see it was asked."""

    seen: list[str] = []

    def _gated(self) -> None:
        type(self).seen.append(f"{self.command} {self.path}")
        body = json.dumps({"error": "Access to this repository is restricted. You must be authenticated."}).encode()
        self.send_response(401)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to this repository is restricted.")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = _gated

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def gated_hub():
    GatedHub.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), GatedHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def repro_against(hub: str, tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "REPRO_DATABASE_URL", "REPRO_HUB_MIRROR")}
    env.update(HF_ENDPOINT=hub, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_IMPLICIT_TOKEN="1", HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5",
               REPRO_HOME=str(tmp_path / "repro-home"), REPRO_RUNS_DIR=str(tmp_path / "runs"))
    return subprocess.run([sys.executable, "-m", "runner.cli", *argv], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[2], timeout=300)


def assert_refused_cleanly(proc: subprocess.CompletedProcess, tmp_path: Path, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "huggingface-cli login" in proc.stderr and "--hub-mirror" in proc.stderr, proc.stderr
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_gated_model_without_a_token_is_refused(gated_hub, tmp_path):
    mirror = smoltalk_mirror(tmp_path / "m")  # the data is local; the init model is only on the (gated) Hub
    proc = repro_against(gated_hub, tmp_path, [*SFT_135M, "--hub-mirror", str(mirror)])
    assert_refused_cleanly(proc, tmp_path, "model HuggingFaceTB/SmolLM2-135M@main is gated and no token was given")
    assert any("HuggingFaceTB/SmolLM2-135M" in line for line in GatedHub.seen), GatedHub.seen


def test_gated_dataset_without_a_token_is_refused(gated_hub, tmp_path, tiny_smollm2):  # noqa: F811
    proc = repro_against(gated_hub, tmp_path, dpo_argv(None, tiny_smollm2))
    assert_refused_cleanly(proc, tmp_path, f"{UF}@unpinned split train_prefs: gated on the Hub and no token was given")
    assert any(UF in line for line in GatedHub.seen), GatedHub.seen
