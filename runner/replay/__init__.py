"""References that replay the recorded upstream code itself, in environments of their own.

`trl012` runs TRL 0.12 (the DPOTrainer / SFTTrainer the recorded SmolLM2 post-training used) with the
transformers it supports, in a virtual environment installed from PyPI on first use; the project's own
transformers is too new for it to import. Tests and bench/bench_recorded_vs_trl.py compare repro's stages
against it.
"""
