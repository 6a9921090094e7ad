"""Replay the release-era MATH verifier against the upstream code: fixed vectors plus a seeded fuzz.

    python bench/replay_math_release.py --upstream DIR [--fuzz 10000] [--seed 0] [--out report.json]

DIR is a directory holding `open_instruct/` from open-instruct 3dd7a07da (at least __init__.py,
math_utils.py, ground_truth_utils.py and if_functions.py), e.g. made with
`git -C open-instruct show 3dd7a07:open_instruct/math_utils.py > DIR/open_instruct/math_utils.py` for each.
Upstream's `verify_math_sample` runs, unmodified, in a child with only the release-era site directory
(sympy 1.12, antlr4 4.11, mpmath 1.3.0: runner/verifiers/math_sympy.release_site) and the standard
library on its path, on its main thread (its SIGALRM needs it). Ours is `verifiers.score(...,
"release-2024-11")`. Prints the mismatch counts and writes every mismatch to --out.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.verifiers import score  # noqa: E402
from runner.verifiers.math_sympy import release_site  # noqa: E402

_CHILD = r"""
import json, sys, logging
logging.disable(logging.CRITICAL)
sys.path[:0] = [SITE, UPSTREAM]
from open_instruct.ground_truth_utils import verify_math_sample
import builtins
builtins.print = lambda *a, **k: None  # upstream prints on some paths; keep stdout for verdicts
out = sys.stdout
for line in sys.stdin:
    resp, gt = json.loads(line)
    out.write(json.dumps(bool(verify_math_sample(resp, gt))) + "\n")
    out.flush()
"""

ANSWERS = ["5", "-3", "0", "12", "100000", "100,000", "3,2,1", "0.5", "1.5", ".5", "18.00", r"\frac{1}{2}",
           r"\frac12", r"\frac32", r"\dfrac{3}{4}", r"\tfrac{2}{3}", r"2\sqrt{2}", r"\sqrt{8}", r"2\sqrt2", r"\sqrt",
           r"3\sqrt{5}", r"\pi", r"2\pi", r"\frac{\pi}{3}", "x/", "x/ ", "a/2", r"\frac{a}{2}", "x^2+2x+1", "(x+1)^2",
           r"\text{(A)}", "A", "(A)", r"\textbf{(B)}", "(1,2)", r"\left(1,2\right)", "[0,1)", r"(-\infty, 3]",
           r"\infty", r"+\infty", "50\\%", "50", r"90^\circ", "90", "7 dollars", r"\$7", "7", r"\text{m}", "4 cm",
           r"2\frac{1}{2}", r"\frac{5}{2}", "1,2", "x=5", "y = 2x+1", r"\boxed{4}", "e", "i", "2i+1", r"\sqrt[3]{2}",
           r"10^{10}", "2^{10}", "1024", r"\log_2 8", "3", r"\binom{5}{2}", "10", r"\sin x", r"\mathrm{th}", "5th",
           "1e3", "1000", r"-\frac{1}{3}", "-1/3", "1/3", r"\{1,2\}", "2, 3", r"\emptyset", r"x \in [0,1]", ""]
WRAPS = [
    "{a}", "The answer is {a}.", r"\boxed{{{a}}}", r"So the answer is $\boxed{{{a}}}$.", r"\boxed {a}",
    r"\boxed {a}$ and then \boxed{{7}}", r"\fbox{{{a}}}", "${a}$", "$${a}$$", r"\[{a}\]", r"\({a}\)",
    "we get $x = {a}$ done", "Final Answer: The final answer is {a}. I hope it is correct.",
    "Final Answer: The final answer is ${a}$. I hope it is correct.", "Answer: {a}", "answer is {a}",
    r"cost is $\${a}$.", r"$1$ then $2$ then ${a}$", r"\boxed{{{a}}} but \boxed{{{b}}}", r"\boxed{{{a}", "{a} {b}",
    "<|assistant|>\n\\boxed{{{b}}}", "prompt \\boxed{{9}}<|assistant|>\n\\boxed{{{a}}}", "{a}\n\nFinal: {b}",
]
NOISE = ["", " ", "\n", ".", "  ", " units", " inches", " so", "$", "}", "{", r"\!", r"\ "]


def fixed_vectors() -> list[tuple[str, str]]:
    sys.path.insert(0, str(ROOT / "tests" / "runner"))
    from test_verifiers_math import CORRECTED_FIXES, MATH  # the tables the unit tests use

    pairs = [(r, g) for r, g, _, _ in MATH + CORRECTED_FIXES]
    for line in (ROOT / "fixtures" / "tulu3" / "rlvr-gsm-math-if.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["dataset"] == "MATH":
            gt = row["ground_truth"]
            pairs += [(rf"\boxed{{{gt}}}", gt), (f"The answer is ${gt}$.", gt), (gt, gt), ("no idea", gt)]
    return pairs


def fuzz(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(ANSWERS), rng.choice(ANSWERS)
        resp = rng.choice(WRAPS).format(a=a, b=b) + rng.choice(NOISE)
        if rng.random() < 0.2:
            resp = rng.choice(NOISE) + resp
        gt = a if rng.random() < 0.5 else rng.choice(ANSWERS)
        if rng.random() < 0.15:
            gt = gt + rng.choice(NOISE)
        out.append((resp, gt))
    return out


def upstream_verdicts(upstream: Path, pairs: list[tuple[str, str]]) -> list[bool]:
    code = _CHILD.replace("SITE", repr(str(release_site()))).replace("UPSTREAM", repr(str(upstream)))
    proc = subprocess.run([sys.executable, "-S", "-c", code], input="".join(json.dumps(p) + "\n" for p in pairs),
                          capture_output=True, text=True, cwd=str(upstream))
    if proc.returncode != 0:
        raise SystemExit(f"upstream child failed: {proc.stderr.strip().splitlines()[-1:]}")
    return [json.loads(x) for x in proc.stdout.splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", type=Path, required=True)
    ap.add_argument("--fuzz", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    report = {}
    fuzzed = fuzz(args.fuzz, args.seed)
    # The empty-ground-truth switch: "on" (default) scores these 0; "off" must agree with upstream.
    empty = [(r, "") for r, _ in fixed_vectors() + fuzzed[:1000]]
    for name, pairs, kw in (("vectors", fixed_vectors(), {}), ("fuzz", fuzzed, {}),
                            ("empty-ground-truth, switch off", empty, {"empty_gt_scores_0": False})):
        t0 = time.perf_counter()
        theirs = upstream_verdicts(args.upstream, pairs)
        t1 = time.perf_counter()
        ours = [bool(score("math", r, g, "release-2024-11", **kw)) for r, g in pairs]
        t2 = time.perf_counter()
        diff = [{"response": r, "ground_truth": g, "upstream": u, "ours": o}
                for (r, g), u, o in zip(pairs, theirs, ours) if u != o]
        report[name] = {"n": len(pairs), "mismatches": len(diff), "upstream_rewarded": sum(theirs),
                        "upstream_s": round(t1 - t0, 1), "ours_s": round(t2 - t1, 1), "cases": diff}
        print(f"{name}: {len(diff)} of {len(pairs)} differ (upstream rewards {sum(theirs)}; "
              f"upstream {t1 - t0:.0f} s, ours {t2 - t1:.0f} s)")
        for d in diff[:20]:
            print("   ", json.dumps(d, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
