"""The Ray side of the RLVR stage: checking and joining a cluster (or starting a small local one), and
the resources each actor asks for. The driver that runs the learner and engine actors is
runner/stages/rlvr.run_with_ray; this module imports nothing from it, and no torch, so `repro run
--ray-address` can check the address before anything heavy loads.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from registry.errors import ReproError

ROOT = Path(__file__).resolve().parents[2]  # the source tree the actors import runner from
CHECK_TIMEOUT_S = 5.0


def check_address(address: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Raise a one-line ReproError unless something answers at the Ray address within `timeout` seconds.

    Only a TCP connect to the GCS (or Ray Client) port: cheap, and it fails fast where `ray.init` would
    retry for a minute before giving up.
    """
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port_text = target.rpartition(":")
    if not sep:
        host, port_text = target, "10001" if address.startswith("ray://") else "6379"
    try:
        port = int(port_text)
    except ValueError:
        raise ReproError(f"invalid --ray-address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379)") from None
    if not host or not 0 < port < 65536:
        raise ReproError(f"invalid --ray-address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379)")
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise ReproError(f"Ray cluster at {address} does not answer ({reason} after at most {timeout:g} s); "
                         "start it with `ray start --head` or fix --ray-address") from None


# ---------------------------------------------------------------- joining a cluster


def connect(plan) -> bool:
    """Join the named cluster, or start a small local one; True when this call started Ray (and stops it)."""
    try:
        import ray
    except ImportError:
        raise ReproError("RLVR through Ray needs ray (pip install 'repro[ray]')") from None
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The actors import runner from this source tree; the stage determinism needs one torch thread there too.
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                "REPRO_TORCH_THREADS": os.environ.get("REPRO_TORCH_THREADS", "1"), "OMP_NUM_THREADS": "1"}
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "REPRO_HOME", "TOKENIZERS_PARALLELISM"):
        if key in os.environ:
            env_vars[key] = os.environ[key]
    address = plan.extra.get("ray_address")
    # log_to_driver=False: actor output would otherwise interleave with `--json` on stdout.
    if address:
        check_address(address)
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    elif on_gpus(plan):
        # The recorded launch on one node: a local instance with every GPU and CPU Ray detects.
        ray.init(include_dashboard=False, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=100_000_000, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    return True


def on_gpus(plan) -> bool:
    """The recorded profile on a CUDA machine: each actor holds a GPU (the smoke profile and --device cpu: CPUs)."""
    if plan.profile != "recorded" or plan.extra.get("device") == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def actor_resources(plan) -> dict[str, float]:
    return {"num_cpus": 1, "num_gpus": 1} if on_gpus(plan) else {"num_cpus": 1}
