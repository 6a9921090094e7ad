"""The child side of the TRL 0.12 reference: runs inside the side venv (trl 0.12.2, transformers 4.46.3).

Run by path with `python _trl012_child.py REQUEST.json REPLY.json WORKDIR`; it imports nothing of this
project (the project's transformers 5 is not on its path). It does what alignment-handbook ae3f44f's
run_dpo.py / run_sft.py did before handing the data to TRL (the chat template applied with the model's
own tokenizer, an empty system turn inserted, a leading BOS stripped from DPO completions), then trains
with TRL's own trainer for `max_steps` updates and reports what TRL computed.

Two things differ from the recorded launch, neither of which changes the numbers compared:
  * the sampler is sequential over the rows given (the parent sends the first update's examples in the
    order its own stage draws them), so both sides see the same batch;
  * the loss of each micro-step is read in `compute_loss`, because the HF Trainer rounds the logged loss
    to 4 decimals;
  * DPO: the loss is divided by the accumulation steps as the recorded DeepSpeed launch did
    (`deepspeed_scaling`, see `trainer_class`); off, the gradient of a one-process CPU run is GA times
    larger (measured: grad norm 136.80654907 against 68.40327454 at GA 2, exactly 2x).

Request: {"task": "dpo" | "sft", "model": DIR, "rows": [...], "config": {...}, "steps": N}
Reply: {"versions": {...}, "updates": [{"loss", "grad_norm", "lr", <TRL's logged metrics>}], ...}
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any


def legacy_folder(src: Path, dst: Path) -> Path:
    """The model folder in the layout transformers 4.46 reads.

    repro's published checkpoint was saved by transformers 5: `rope_parameters` instead of `rope_theta`
    (4.46 would silently fall back to θ = 10,000), `dtype` instead of `torch_dtype`, the tokenizer class
    `TokenizersBackend` and the chat template in chat_template.jinja. The weights and tokenizer.json are
    linked unchanged; only these keys are translated, and the parent checks the result (the tokens TRL
    produced and the log-probs it computed) against repro's own.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(src):
        if name.endswith(".safetensors") or name in ("tokenizer.json", "generation_config.json"):
            os.symlink(src / name, dst / name)
    config = json.loads((src / "config.json").read_text())
    rope = config.pop("rope_parameters", None)
    if rope:
        if rope.get("rope_type", "default") != "default":
            raise SystemExit(f"rope_type {rope.get('rope_type')!r} has no transformers 4.46 translation here")
        config["rope_theta"] = rope["rope_theta"]
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    tok = json.loads((src / "tokenizer_config.json").read_text())
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    template = src / "chat_template.jinja"
    if template.is_file() and "chat_template" not in tok:
        tok["chat_template"] = template.read_text()
    (dst / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    return dst


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    # alignment-handbook get_tokenizer: a missing pad token becomes the EOS
    if tok.pad_token_id is None:
        tok.pad_token_id = tok.eos_token_id
    return tok


def insert_empty_system(messages: list[dict], tok: Any) -> list[dict]:
    # alignment-handbook maybe_insert_system_message
    messages = [dict(m) for m in messages]
    template = tok.chat_template or ""
    if messages and messages[0]["role"] != "system" and ("system" in template or "<|im_start|>" in template):
        messages.insert(0, {"role": "system", "content": ""})
    return messages


def dpo_texts(row: dict, tok: Any) -> dict[str, str]:
    """alignment-handbook apply_chat_template(task="dpo") and run_dpo.py's column renames."""
    prompt = insert_empty_system(row["chosen"][:-1], tok)
    out = {"prompt": tok.apply_chat_template(prompt, tokenize=False)}
    for side in ("chosen", "rejected"):
        text = tok.apply_chat_template(row[side][-1:], tokenize=False)
        if tok.bos_token and text.startswith(tok.bos_token):
            text = text[len(tok.bos_token):]
        out[side] = text
    return out


def sft_text(row: dict, tok: Any) -> str:
    """alignment-handbook apply_chat_template(task="sft")."""
    return tok.apply_chat_template(insert_empty_system(row["messages"], tok), tokenize=False)


class Recorder:
    """Per-update loss (unrounded, from training_step), TRL's logged metrics, and the forward widths."""

    def __init__(self) -> None:
        self.micro = []
        self.updates = []
        self.widths = []
        self.started = self.seconds = self.cpu_seconds = None
        self.stop_after = 1

    def hook(self, _module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.widths.append(list(ids.shape))


def Clock(recorder: Recorder) -> Any:
    """Wall time of each update (forwards, backwards, clipping, optimizer step), for the benchmark."""
    import time

    from transformers import TrainerCallback

    class _Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            recorder.started = (time.perf_counter(), time.process_time())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # CPU time as well: with one torch thread it barely moves with a shared machine's load
            recorder.seconds = time.perf_counter() - recorder.started[0]
            recorder.cpu_seconds = time.process_time() - recorder.started[1]
            if state.global_step >= recorder.stop_after:
                # the schedule is sized by `schedule_steps` (the stage's full length); training stops here
                control.should_training_stop = True

    return _Clock()


def trainer_class(base: type, recorder: Recorder, deepspeed_scaling: bool = False) -> type:
    import torch

    class Replay(base):
        def _get_train_sampler(self) -> Any:
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            loss = out[0] if return_outputs else out
            ga = self.args.gradient_accumulation_steps
            # What the Trainer reports for this micro-step: the loss over the accumulation when it was
            # given the batch's token count, else loss / GA (training_step's return value).
            recorder.micro.append(float(loss.detach()) / (1 if num_items_in_batch is not None else ga))
            if deepspeed_scaling and num_items_in_batch is None:
                # The recorded launch ran under DeepSpeed, whose engine divides every micro-step's loss by
                # the accumulation steps before backward. transformers 4.46.3 without DeepSpeed divides by
                # nothing when the batch has no `labels` (DPO batches have none), so on one CPU process
                # the gradient would be the sum over micro-steps, GA times the recorded one.
                loss = loss / ga
            return (loss, out[1]) if return_outputs else loss

        def log(self, logs: dict, *a: Any, **k: Any) -> Any:
            training = "loss" in logs
            # DPOTrainer.log adds its stored metrics (rewards/*, logps/*) to `logs` in place
            result = super().log(logs, *a, **k)
            if training:
                entry = dict(logs)
                entry["loss"] = sum(recorder.micro)  # the same sum the Trainer rounds to 4 decimals
                entry["seconds"], entry["cpu_seconds"] = recorder.seconds, recorder.cpu_seconds
                recorder.micro.clear()
                recorder.updates.append(entry)
            return result

    return Replay


def common_args(cfg: dict, out_dir: Path, steps: int) -> dict[str, Any]:
    return dict(output_dir=str(out_dir), per_device_train_batch_size=cfg["per_device_train_batch_size"],
                gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
                learning_rate=cfg["learning_rate"], lr_scheduler_type=cfg["lr_scheduler_type"],
                warmup_ratio=cfg["warmup_ratio"], num_train_epochs=cfg.get("num_train_epochs", 1),
                max_steps=cfg.get("schedule_steps") or steps, logging_steps=1, save_strategy="no", report_to=[],
                use_cpu=True, bf16=False,
                seed=cfg["seed"], max_grad_norm=cfg.get("max_grad_norm", 1.0), adam_beta1=cfg.get("adam_beta1", 0.9),
                adam_beta2=cfg.get("adam_beta2", 0.999), adam_epsilon=cfg.get("adam_epsilon", 1e-8),
                weight_decay=cfg.get("weight_decay", 0.0), dataloader_num_workers=0, disable_tqdm=True)


def run_dpo(req: dict, folder: Path, work: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    cfg = req["config"]
    tok = load_tokenizer(folder)
    texts = [dpo_texts(row, tok) for row in req["rows"]]
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    # run_dpo.py passes the model path as ref_model too: a second, independent load
    ref = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    recorder = Recorder()
    recorder.stop_after = req["steps"]
    model.register_forward_pre_hook(recorder.hook, with_kwargs=True)
    args = DPOConfig(beta=cfg["beta"], max_length=cfg["max_length"], max_prompt_length=cfg["max_prompt_length"],
                     loss_type=cfg["loss_type"], gradient_checkpointing=cfg.get("gradient_checkpointing", False),
                     **common_args(cfg, work / "out", req["steps"]))
    replay = trainer_class(DPOTrainer, recorder, cfg.get("deepspeed_scaling", True))
    trainer = replay(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(texts),
                     processing_class=tok, callbacks=[Clock(recorder)])
    tokenized = [{k: trainer.train_dataset[i][k] for k in ("prompt_input_ids", "chosen_input_ids",
                                                            "rejected_input_ids")} for i in range(len(texts))]
    trainer.train()
    return {"updates": recorder.updates, "texts": texts, "tokenized": tokenized, "policy_widths": recorder.widths,
            "rope_theta": model.config.rope_theta}


def run_sft(req: dict, folder: Path, work: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.utils import ConstantLengthDataset

    cfg = req["config"]
    tok = load_tokenizer(folder)
    texts = [sft_text(row, tok) for row in req["rows"]]
    # TRL's own packer with its defaults; shuffle off because the parent sends the texts in its own order.
    packer = ConstantLengthDataset(tok, Dataset.from_list([{"text": t} for t in texts]), dataset_text_field="text",
                                   seq_length=cfg["max_seq_length"], infinite=False, num_of_sequences=1024,
                                   chars_per_token=3.6, eos_token_id=tok.eos_token_id, append_concat_token=True,
                                   add_special_tokens=True, shuffle=False)
    blocks = [ex["input_ids"].tolist() for ex in packer]
    picked = [blocks[i] for i in cfg["block_order"]]
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    recorder = Recorder()
    recorder.stop_after = req["steps"]
    args = SFTConfig(max_seq_length=cfg["max_seq_length"], packing=True, dataset_text_field="text",
                     gradient_checkpointing=cfg.get("gradient_checkpointing", False),
                     **common_args(cfg, work / "out", req["steps"]))
    # A dataset with input_ids is used as given (SFTTrainer._prepare_dataset), as its packed one would be.
    train = Dataset.from_list([{"input_ids": b, "labels": b} for b in picked])
    trainer = trainer_class(SFTTrainer, recorder)(model=model, args=args, train_dataset=train, processing_class=tok,
                                                   callbacks=[Clock(recorder)])
    trainer.train()
    return {"updates": recorder.updates, "texts": texts, "blocks": blocks,
            "collator": type(trainer.data_collator).__name__,
            "model_accepts_loss_kwargs": bool(getattr(trainer, "model_accepts_loss_kwargs", False))}


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    reply_path, work = Path(sys.argv[2]), Path(sys.argv[3])
    import torch
    import transformers
    import trl

    torch.set_num_threads(int(req.get("threads", 1)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    folder = legacy_folder(Path(req["model"]), work / "model-4.46")
    reply = {"dpo": run_dpo, "sft": run_sft}[req["task"]](req, folder, work)
    reply["versions"] = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}
    tmp = reply_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(reply))
    os.replace(tmp, reply_path)
    shutil.rmtree(work / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
