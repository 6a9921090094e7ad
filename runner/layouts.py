"""Hardware layouts for N GPUs that keep a stage's recorded batch semantics, and their memory cost.

Pure arithmetic over recipes.json: no torch, so `repro plan` (and a sweep over every
recipe × stage × 1..512 GPUs) stays instant.

Memory accounting, per GPU. "GB" in keys means GiB (2**30 bytes), as nvidia-smi counts:
- Parameters from the shapes: embeddings V·h, an untied head V·h, per layer q and o 2·h·(heads·hd),
  k and v 2·h·(kv·hd), SwiGLU 3·h·I, two RMSNorms 2·h, and a final norm h.
- Mixed precision, per trained parameter: bf16 weights 2 B, gradients 2 B (4 B where the recording
  accumulates them in fp32), Adam 12 B (fp32 master, m, v). ZeRO-1 shards Adam over the
  data-parallel processes, ZeRO-2 also the gradients, ZeRO-3 also the weights.
- CPU offload: optimizer offload moves Adam and the gradients (fp32 on the host: 16 B per sharded
  parameter) to host memory; parameter offload (ZeRO-3) moves the bf16 weights too. Host memory is checked
  against CPU_GB_PER_NODE per node.
- ZeRO-3 keeps two gathered modules live (the current and the prefetched one):
  2 × 2 B × max(one decoder layer, the embedding).
- Activations per token per decoder layer, bf16, flash attention (no seq² term):
  2·(6h + 2·kv·hd + 4I) bytes without checkpointing (norm inputs/outputs, q, k, v, attention output,
  residual, SwiGLU gate/up/activation/product). With checkpointing: 2h bytes per layer (the saved
  layer input) plus one layer recomputed in full. Logits: tokens × V × 6 B (bf16 + fp32 for the loss).
- Frozen models (a live DPO reference, the RLVR reference policy and reward model) hold bf16 weights
  only, sharded like the trained model; a cached DPO reference holds nothing during training.
- A fixed OVERHEAD_GB for the CUDA context, NCCL buffers and allocator fragmentation.
- vLLM engines run on their own GPUs: bf16 weights / TP + a workspace, and the KV cache inside
  gpu_memory_utilization 0.9 must hold at least VLLM_MIN_SEQUENCES full-length sequences
  (or the whole rollout, if smaller).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from registry.derive import hp
from registry.errors import ReproError
from registry.recipes import Registry
from registry.schema import Architecture, Stage
from runner.memory import GIB, Relief, Shape, activations, shape_of, states

GPUS_PER_NODE = 8
CPU_GB_PER_NODE = 1600.0  # usable host RAM of an 8-GPU node (a DGX H100 has 2 TB; the OS and loaders keep the rest)
OVERHEAD_GB = 3.0
VLLM_UTILIZATION = 0.9  # vLLM's gpu_memory_utilization default, which open-instruct keeps
VLLM_WORKSPACE_GB = 2.0
VLLM_MIN_SEQUENCES = 64  # fewer concurrent sequences than this and generation stalls the learners
MAX_GPUS = 8192  # search bound for minimum_gpus


# ---------------------------------------------------------------- layouts


@dataclass
class PlannedLayout:
    num_processes: int
    num_machines: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    effective_batch_size: int  # in `unit`
    unit: str
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    gradient_checkpointing: bool
    deepspeed_config: str | None
    est_memory_gb: float | None = None
    sequences_per_step: int | None = None  # pretraining: effective_batch_size is in tokens
    actor_gpus: int | None = None
    actor_gpus_per_node: list[int] | None = None
    vllm_engines: int | None = None
    vllm_tensor_parallel_size: int | None = None
    local_rollout_batch_size: int | None = None
    local_mini_batch_size: int | None = None
    rollout_batch: int | None = None
    vllm_memory_gb: float | None = None


@dataclass
class Invariant:
    name: str
    recorded: Any
    planned: Any
    kept: bool
    note: str = ""


@dataclass
class PlanResult:
    recipe: str
    stage: str
    gpus: int
    gpu_memory_gb: float
    nodes: int
    feasible: bool
    recorded: bool
    layout: PlannedLayout
    memory: dict[str, Any]
    invariants: list[Invariant]
    changes: list[dict[str, Any]] = field(default_factory=list)
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    @property
    def broken(self) -> list[str]:
        return [inv.name for inv in self.invariants if not inv.kept]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "broken": self.broken}


# ---------------------------------------------------------------- the stage's context


@dataclass
class _Ctx:
    """Everything the search needs about one stage, computed once."""

    recipe: str
    stage: Stage
    family: str
    shape: Shape
    params: int
    unit: str
    seq_len: int
    seqs_per_example: int  # 2 for preference pairs (chosen + rejected in one forward)
    lm_head: bool
    grad_bytes: int
    reference: str  # "live", "cached" or "none"
    reward: tuple[Shape, int] | None  # RLVR: the reward/value model and its parameter count
    ladder: list[Relief]
    gc_recorded: bool
    pd_cap: int
    sum_loss: bool
    batch: int | None  # sequences/pairs per step (RLVR: prompts per step)
    gpu_mem: float
    assumptions: list[str]


def _ladder(stage: Stage) -> list[Relief]:
    """The ZeRO/offload options the recorded framework offers, cheapest first.

    Only recorded config files are named: accelerate runs go from the stage's ZeRO-3 file to the
    offloading one; nanotron can shard the optimizer (ZeRO-1); the RLVR script builds its DeepSpeed
    config in code with offload hard-coded off, so offloading there is a named code change.
    """
    lay = stage.layout
    zero = lay.zero_stage if lay.zero_stage is not None else 3
    if lay.launcher == "nanotron":
        return [Relief(z) for z in range(zero, 2)] or [Relief(zero)]
    if lay.launcher == "ray":
        change = "the RLVR script builds its DeepSpeed config with adam_offload off; offloading needs that changed"
        return [Relief(z) for z in range(zero, 4)] + [Relief(3, True, False, None, change)]
    plain = lay.deepspeed_config if lay.deepspeed_config and not lay.offload else None
    plain = plain or ("stage3_no_offloading_accelerate.conf" if lay.deepspeed_config else "deepspeed_zero3.yaml")
    return [Relief(3, False, False, plain), Relief(3, True, True, "stage3_offloading_accelerate.conf")]


def _reward_shape(registry: Registry, stage: Stage, family: str, notes: list[str]) -> tuple[Shape, int] | None:
    ref = next((i for i in stage.inputs if i.role in ("reward_model", "value_model")), None)
    if ref is None:
        return None
    ckpt = registry.model.checkpoints.get(ref.checkpoint)
    owner = (ckpt.produced_by or "").partition(":")[0] if ckpt else ""
    arch = registry.recipes[owner].architecture if owner in registry.recipes else None
    if arch is None:
        notes.append(f"reward/value model {ref.checkpoint}: shape unknown; assumed the policy's shape")
        return None
    shape, more = shape_of(arch, family)
    notes.extend(f"reward model: {n}" for n in more)
    return shape, shape.params(lm_head=False)


def _make_ctx(stage: Stage, arch: Architecture, family: str, gpu_mem: float, recipe_name: str = "",
              reward: tuple[Shape, int] | None = None, notes: list[str] | None = None) -> _Ctx:
    shape, more = shape_of(arch, family)
    notes = (notes or []) + more
    name = stage.name
    seq = hp(stage, "max_seq_length")
    if name == "rlvr" and hp(stage, "response_length"):
        seq = (hp(stage, "max_prompt_length") or seq or 0) + hp(stage, "response_length")
    if not isinstance(seq, int):
        seq = 4096
        notes.append(f"max_seq_length not recorded; assumed {seq} for the activation estimate")
    precision = stage.hyperparameters.get("precision")
    fp32_grads = name == "pretrain" or (precision is not None and "fp32" in f"{precision.value} {precision.note}")
    reference = "none"
    if name == "dpo":  # dpo_tune_cache.py precomputes reference log-probs; the others keep a live copy
        reference = "cached" if "cache" in stage.code.entry_point else "live"
    if name == "rlvr" and reward is None:
        reward = (shape, shape.params(lm_head=False))
    gc = hp(stage, "gradient_checkpointing")
    if name == "rlvr" and gc is None:
        gc = True
        notes.append("RLVR: the PPO script enables gradient checkpointing on the policy and value models")
    if name == "rlvr":
        batch = (stage.layout.local_rollout_batch_size or 0) * (stage.layout.actor_gpus or 0)
        batch = batch or hp(stage, "effective_batch_size")
    elif name == "pretrain":
        tokens = hp(stage, "batch_tokens")
        batch = tokens // seq if isinstance(tokens, int) else hp(stage, "effective_batch_size")
    else:
        batch = hp(stage, "effective_batch_size")
    return _Ctx(recipe_name, stage, family, shape, shape.params(lm_head=name != "rm"),
                "tokens" if name == "pretrain" else stage.layout.unit, seq, 2 if name in ("dpo", "rm") else 1,
                name != "rm", 4 if fp32_grads else 2, reference, reward, _ladder(stage), bool(gc),
                hp(stage, "per_device_batch_size") or 1, hp(stage, "loss_reduction") == "sum",
                batch if isinstance(batch, int) and batch > 0 else None, gpu_mem, notes)


def _context(registry: Registry, recipe_name: str, stage_name: str, gpu_mem: float) -> _Ctx:
    recipe = registry.recipe(recipe_name)
    stage = registry.stage(recipe_name, stage_name)
    notes: list[str] = []
    reward = _reward_shape(registry, stage, recipe.family, notes) if stage.name == "rlvr" else None
    return _make_ctx(stage, recipe.architecture, recipe.family, gpu_mem, recipe_name, reward, notes)


# ---------------------------------------------------------------- memory


def _estimate(ctx: _Ctx, n: int, pd: int, relief: Relief, gc: bool, ranks_per_node: int) -> dict[str, Any]:
    """GiB per GPU of a training process among n data-parallel ones."""
    w, g, o, host = states(ctx.params, n, relief, ctx.grad_bytes)
    frozen = 0.0
    if ctx.reference == "live" or ctx.stage.name == "rlvr":  # a second copy of the policy's weights
        fw, _, _, fh = states(ctx.params, n, relief, ctx.grad_bytes, trained=False)
        frozen, host = frozen + fw, host + fh
    reward_gb = 0.0
    tokens = pd * ctx.seqs_per_example * ctx.seq_len
    act, logits = activations(ctx.shape, tokens, gc, ctx.lm_head)
    gather_params = max(ctx.shape.layer_params, ctx.shape.vocab * ctx.shape.hidden)
    if ctx.reward is not None:  # the value model is trained, the reward model frozen
        rshape, rparams = ctx.reward
        vw, vg, vo, vh = states(rparams, n, relief, ctx.grad_bytes)
        rw, _, _, rh = states(rparams, n, relief, ctx.grad_bytes, trained=False)
        reward_gb, host = vw + vg + vo + rw, host + vh + rh
        value_act = activations(rshape, tokens, gc, False)[0]  # policy, then value: never at once
        if value_act > act + logits:
            act, logits = value_act, 0.0
    gather = 2 * 2.0 * gather_params if relief.zero >= 3 else 0.0
    parts = {"weights": w, "gradients": g, "optimizer": o, "reference": frozen, "reward_value": reward_gb,
             "zero3_gather": gather, "activations": act, "logits": logits}
    parts = {k: round(v / GIB, 2) for k, v in parts.items()}
    parts["overhead"] = OVERHEAD_GB
    total = round(sum(parts.values()), 2)
    host_node = round(host * ranks_per_node / GIB, 1)
    return {"total_gb": total, "fits": total <= ctx.gpu_mem and host_node <= CPU_GB_PER_NODE, "parts": parts,
            "host_offload_gb_per_node": host_node, "host_fits": host_node <= CPU_GB_PER_NODE,
            "params": ctx.params, "tokens_per_micro_batch": tokens}


def _vllm(ctx: _Ctx, tp: int, rollout: int) -> dict[str, Any]:
    shape = ctx.shape
    weights = 2.0 * ctx.params / tp / GIB
    kv_token = 2 * shape.layers * max(1.0, shape.kv_heads / tp) * shape.head_dim * 2  # K and V, bf16
    free = ctx.gpu_mem * VLLM_UTILIZATION - weights - VLLM_WORKSPACE_GB
    sequences = int(max(0.0, free) * GIB // (kv_token * ctx.seq_len))
    need = min(VLLM_MIN_SEQUENCES, max(1, rollout))
    return {"weights_gb": round(weights, 2), "kv_cache_gb": round(max(0.0, free), 2), "kv_sequences": sequences,
            "total_gb": round(ctx.gpu_mem * VLLM_UTILIZATION, 2), "fits": sequences >= need,
            "tensor_parallel_size": tp}


def memory_per_gpu(arch: Architecture, stage: Stage, layout: PlannedLayout, *, family: str = "tulu3",
                   reward_arch: Architecture | None = None, gpu_memory_gb: float = 80.0,
                   gpus_per_node: int = GPUS_PER_NODE) -> dict[str, Any]:
    """GiB per GPU of `layout` for `stage` of a model shaped `arch` (accounting: the module docstring).

    RLVR: `reward_arch` shapes the reward/value model (the policy's shape if None), and the result
    carries a `vllm` entry for the generation GPUs.
    """
    reward = None
    if reward_arch is not None:
        rshape = shape_of(reward_arch, family)[0]
        reward = (rshape, rshape.params(lm_head=False))
    ctx = _make_ctx(stage, arch, family, gpu_memory_gb, reward=reward)
    relief = Relief(layout.zero_stage, layout.offload_optimizer, layout.offload_params)
    n = layout.actor_gpus or layout.num_processes
    out = _estimate(ctx, n, layout.per_device_batch_size, relief, layout.gradient_checkpointing,
                    min(n, gpus_per_node))
    if layout.vllm_tensor_parallel_size:
        out["vllm"] = _vllm(ctx, layout.vllm_tensor_parallel_size, layout.rollout_batch or 1)
    out["assumptions"] = ctx.assumptions
    return out


# ---------------------------------------------------------------- invariants


def _node_sizes(gpus: int, nodes: int | None) -> list[int]:
    if nodes:
        return [gpus // nodes] * nodes
    full, rest = divmod(gpus, GPUS_PER_NODE)
    return [GPUS_PER_NODE] * full + ([rest] if rest else [])


def _tp_ok(ctx: _Ctx, tp: int, per_node: int) -> bool:
    """vLLM shards attention heads: TP a power of two dividing them, within a node or over whole nodes."""
    return (tp & (tp - 1)) == 0 and ctx.shape.heads % tp == 0 and (tp <= min(per_node, 8) or tp % per_node == 0)


def _invariants(ctx: _Ctx, lay: PlannedLayout, mem: dict[str, Any], gpus: int, per_node: int) -> list[Invariant]:
    out: list[Invariant] = []
    if ctx.stage.name == "rlvr":
        planned = (lay.actor_gpus or 0) * (lay.local_rollout_batch_size or 0)
        out.append(Invariant("rollout_batch", ctx.batch, planned, planned == ctx.batch,
                             "prompts per step = local_rollout_batch_size × actor GPUs"))
        minis = (lay.local_rollout_batch_size or 0) // max(1, lay.local_mini_batch_size or 1)
        out.append(Invariant("one_mini_batch", 1, minis, lay.local_mini_batch_size == lay.local_rollout_batch_size,
                             "num_mini_batches 1: local_mini_batch_size = local_rollout_batch_size"))
        used = (lay.actor_gpus or 0) + (lay.vllm_engines or 0) * (lay.vllm_tensor_parallel_size or 0)
        out.append(Invariant("gpus_available", gpus, used, used <= gpus, "actor GPUs + vLLM GPUs ≤ total"))
        tp = lay.vllm_tensor_parallel_size or 0
        out.append(Invariant("tensor_parallel", f"power of two dividing {ctx.shape.heads} heads", tp,
                             tp > 0 and _tp_ok(ctx, tp, per_node), "≤ GPUs per node, or whole nodes"))
        vllm = mem.get("vllm") or {}
        out.append(Invariant("vllm_memory_fits", ctx.gpu_mem, vllm.get("weights_gb"), bool(vllm.get("fits")),
                             f"KV cache for {vllm.get('kv_sequences')} full-length sequences"))
    elif ctx.batch is not None:
        recorded = ctx.batch * ctx.seq_len if ctx.unit == "tokens" else ctx.batch
        out.append(Invariant("effective_batch", recorded, lay.effective_batch_size,
                             lay.effective_batch_size == recorded, f"{ctx.unit} per optimizer step"))
    if ctx.sum_loss:
        out.append(Invariant("per_device_one_for_sum_loss", 1, lay.per_device_batch_size,
                             lay.per_device_batch_size == 1,
                             "loss_reduction sum: the per-device batch sets the gradient scale"))
    out.append(Invariant("memory_fits", ctx.gpu_mem, mem["total_gb"], bool(mem["fits"]),
                         f"estimated GB per GPU; host offload {mem['host_offload_gb_per_node']} GB per node"))
    return out


# ---------------------------------------------------------------- building layouts


def _dp_layout(ctx: _Ctx, n: int, nodes: int, pd: int, ga: int, relief: Relief, gc: bool) -> PlannedLayout:
    seqs = n * pd * ga
    return PlannedLayout(n, nodes, pd, ga, seqs * ctx.seq_len if ctx.unit == "tokens" else seqs, ctx.unit,
                         relief.zero, relief.offload_optimizer, relief.offload_params, gc, relief.config,
                         sequences_per_step=seqs if ctx.unit == "tokens" else None)


def _gc_options(ctx: _Ctx) -> list[bool]:
    return [True] if ctx.gc_recorded else [False, True]  # recomputation only when needed


def _pds(ctx: _Ctx, per_gpu: int) -> list[int]:
    """Per-device batches dividing per_gpu, never above the recorded one (it is the size known to fit)."""
    if ctx.sum_loss:
        return [1]
    return [d for d in range(min(per_gpu, ctx.pd_cap), 0, -1) if per_gpu % d == 0]


def _cheapest(combos: list[tuple], fits, recomputes=lambda c: False) -> tuple | None:
    """First (pd, ga, relief, ...) that fits, in order: no offload, no added recomputation, least
    accumulation, lowest ZeRO stage. Offload costs the most throughput, accumulation the least."""
    order = sorted(combos, key=lambda c: (c[2].level, recomputes(c), c[1], c[2].zero, -c[0]))
    return next((c for c in order if fits(c)), None)


def _plan_dp(ctx: _Ctx, n: int, sizes: list[int]) -> tuple[PlannedLayout, dict[str, Any]]:
    """SFT/DPO/RM/pretrain: the cheapest layout keeping the batch, else the one nearest to it."""
    target = ctx.batch or n
    if target % n == 0:
        per_gpu = target // n
        shapes = [(pd, per_gpu // pd) for pd in _pds(ctx, per_gpu)]
    else:  # no exact layout on n GPUs: the nearest batch (the invariant will say it breaks)
        best = min(((pd, max(1, round(target / (n * pd)))) for pd in _pds(ctx, ctx.pd_cap)),
                   key=lambda s: (abs(n * s[0] * s[1] - target), s[1]))
        shapes = [best]
    combos = [(pd, ga, r, gc) for pd, ga in shapes for r in ctx.ladder for gc in _gc_options(ctx)]
    rank = max(sizes)
    memo: dict[tuple, dict[str, Any]] = {}

    def fits(c: tuple) -> bool:
        memo[c] = _estimate(ctx, n, c[0], c[2], c[3], rank)
        return memo[c]["fits"]

    pick = _cheapest(combos, fits, lambda c: c[3] and not ctx.gc_recorded)
    if pick is None:  # nothing fits: show the most relieved layout; memory_fits will say it breaks
        pick = (shapes[-1][0], shapes[-1][1], ctx.ladder[-1], True)
        memo[pick] = _estimate(ctx, n, pick[0], pick[2], pick[3], rank)
    lay = _dp_layout(ctx, n, len(sizes), *pick)
    lay.est_memory_gb = memo[pick]["total_gb"]
    return lay, memo[pick]


def _place(sizes: list[int], tp: int, engines: int) -> list[int] | None:
    """Free GPUs per node after placing vLLM engines from the last node backwards (None: they do not fit)."""
    free = list(sizes)
    for _ in range(engines):
        if tp <= max(free):
            i = max(i for i, f in enumerate(free) if f >= tp)
            free[i] -= tp
            continue
        whole = [i for i, f in enumerate(free) if f == sizes[i] and f > 0]
        span = math.ceil(tp / max(sizes))
        if len(whole) < span:
            return None
        for i in whole[-span:]:
            free[i] = 0
    return free


def _rlvr_layout(ctx: _Ctx, sizes: list[int], tp: int, actors: int, lrbs: int, pd: int, relief: Relief,
                 engines: int | None = None, per_node: list[int] | None = None) -> PlannedLayout | None:
    free = _place(sizes, tp, engines or 1)
    if free is None or sum(free) < actors:
        return None
    if per_node is None:
        per_node, left = [], actors
        for f in free:
            per_node.append(min(f, left))
            left -= per_node[-1]
        rest = [f - a for f, a in zip(free, per_node)]
        extra = sum(r // tp for r in rest) if tp <= max(sizes) else 0  # spare GPUs become more engines
        engines = engines or 1 + extra
    machines = sum(1 for s, f, a in zip(sizes, free, per_node) if a or f < s)
    return _rl_layout(ctx, actors, machines, pd, lrbs, relief, True, engines, tp, [a for a in per_node if a])


def _rl_layout(ctx: _Ctx, actors: int, machines: int, pd: int, lrbs: int, relief: Relief, gc: bool, engines: int,
               tp: int, per_node: list[int] | None) -> PlannedLayout:
    """One mini-batch per rollout batch: local_mini_batch_size = local_rollout_batch_size = pd × GA."""
    return PlannedLayout(actors, machines, pd, lrbs // pd, actors * lrbs, ctx.unit, relief.zero,
                         relief.offload_optimizer, relief.offload_params, gc, relief.config, actor_gpus=actors,
                         actor_gpus_per_node=per_node, vllm_engines=engines, vllm_tensor_parallel_size=tp,
                         local_rollout_batch_size=lrbs, local_mini_batch_size=lrbs, rollout_batch=actors * lrbs)


def _plan_rlvr(ctx: _Ctx, gpus: int, sizes: list[int], exact_only: bool = False):
    """Smallest TP whose engine fits, then the most actor GPUs that split the rollout batch exactly."""
    rollout = ctx.batch or gpus
    rank = max(sizes)
    for tp in (t for t in (2**k for k in range(12)) if t < gpus and _tp_ok(ctx, t, rank)):
        vmem = _vllm(ctx, tp, rollout)
        free = _place(sizes, tp, 1)
        if not vmem["fits"] or free is None:
            continue
        combos, memo = [], {}
        for actors in range(sum(free), 0, -1):
            lrbs = rollout // actors if rollout % actors == 0 else None
            for pd in _pds(ctx, lrbs) if lrbs else []:
                combos += [(pd, lrbs // pd, r, actors) for r in ctx.ladder]

        def fits(c: tuple, memo: dict = memo) -> bool:  # this TP's memo, bound now
            memo[c] = _estimate(ctx, c[3], c[0], c[2], True, min(rank, c[3]))
            return memo[c]["fits"]

        pick = _cheapest(combos, fits)
        if pick is None and not exact_only:  # nearest rollout batch on the most actors that fit in memory
            for actors in range(sum(free), 0, -1):
                lrbs = max(1, round(rollout / actors))
                pd = _pds(ctx, lrbs)[0]
                pick = next(((pd, lrbs // pd, r, actors) for r in ctx.ladder
                             if fits((pd, lrbs // pd, r, actors))), None)
                if pick:
                    break
        if pick is None:
            continue
        pd, ga, relief, actors = pick
        lay = _rlvr_layout(ctx, sizes, tp, actors, pd * ga, pd, relief)
        lay.est_memory_gb, lay.vllm_memory_gb = memo[pick]["total_gb"], vmem["weights_gb"] + VLLM_WORKSPACE_GB
        return lay, {**memo[pick], "vllm": vmem}
    return None


# ---------------------------------------------------------------- the recorded layout, the minimum


def _relief_of(ctx: _Ctx, zero: int | None, offload: bool | None) -> Relief:
    zero = ctx.stage.layout.zero_stage if zero is None else zero
    offload = bool(ctx.stage.layout.offload) if offload is None else offload
    match = [r for r in ctx.ladder if (r.level > 0) == offload]
    return next((r for r in match if r.zero == zero), match[0] if match else ctx.ladder[0])


def _recorded(ctx: _Ctx) -> tuple[PlannedLayout, int] | None:
    """The recorded layout and its GPU count, where the recording states it in full."""
    st, lay = ctx.stage, ctx.stage.layout
    relief = _relief_of(ctx, None, None)
    pd, ga = hp(st, "per_device_batch_size"), hp(st, "gradient_accumulation_steps")
    if st.name == "rlvr":
        actors, tp, lrbs = lay.actor_gpus, lay.vllm_tensor_parallel_size, lay.local_rollout_batch_size
        if not (actors and tp and lrbs and pd):
            return None
        engines = lay.vllm_engines or 1
        total = lay.gpus or (lay.nodes * GPUS_PER_NODE if lay.nodes else actors + engines * tp)
        return _rl_layout(ctx, actors, lay.nodes or math.ceil(total / GPUS_PER_NODE), pd, lrbs, relief,
                          ctx.gc_recorded, engines, tp, lay.actor_gpus_per_node), total
    n = hp(st, "num_processes") or lay.gpus
    if not (n and pd):
        return None
    machines = hp(st, "num_machines") or lay.nodes or math.ceil(n / GPUS_PER_NODE)
    return _dp_layout(ctx, n, machines, pd, ga or 1, replace(relief, config=lay.deepspeed_config or relief.config),
                      ctx.gc_recorded), n


def _measure(ctx: _Ctx, lay: PlannedLayout, per_node: int) -> dict[str, Any]:
    n = lay.actor_gpus or lay.num_processes
    relief = Relief(lay.zero_stage, lay.offload_optimizer, lay.offload_params)
    mem = _estimate(ctx, n, lay.per_device_batch_size, relief, lay.gradient_checkpointing, min(n, per_node))
    lay.est_memory_gb = mem["total_gb"]
    if lay.vllm_tensor_parallel_size:
        mem["vllm"] = _vllm(ctx, lay.vllm_tensor_parallel_size, lay.rollout_batch or 1)
        lay.vllm_memory_gb = round(mem["vllm"]["weights_gb"] + VLLM_WORKSPACE_GB, 2)
    return mem


def _minimum(ctx: _Ctx) -> int | None:
    """Least GPUs holding the model at pd 1 with recomputation and the deepest offload (None: none do)."""
    deepest, extra = ctx.ladder[-1], 0
    if ctx.stage.name == "rlvr":
        tps = [t for t in (2**k for k in range(12))
               if _tp_ok(ctx, t, GPUS_PER_NODE) and _vllm(ctx, t, ctx.batch or 1)["fits"]]
        if not tps:
            return None
        extra = tps[0]
    n = next((n for n in range(1, MAX_GPUS)
              if _estimate(ctx, n, 1, deepest, True, min(n, GPUS_PER_NODE))["fits"]), None)
    return None if n is None else n + extra


def minimum_gpus(registry: Registry, recipe: str, stage: str, gpu_memory_gb: float = 80.0) -> int | None:
    """The least GPU count (8 per node, with the deepest offload the stage's framework offers) that holds
    the stage; for RLVR it includes the vLLM GPUs. None where no count up to MAX_GPUS does."""
    return _minimum(_context(registry, recipe, stage, gpu_memory_gb))


# ---------------------------------------------------------------- plan and check

_COMPARED = ("num_processes", "num_machines", "per_device_batch_size", "gradient_accumulation_steps", "zero_stage",
             "offload_optimizer", "offload_params", "gradient_checkpointing", "actor_gpus", "vllm_engines",
             "vllm_tensor_parallel_size", "local_rollout_batch_size", "local_mini_batch_size")


def _changes(rec: PlannedLayout | None, lay: PlannedLayout) -> list[dict[str, Any]]:
    if rec is None:
        return []
    return [{"key": k, "recorded": getattr(rec, k), "planned": getattr(lay, k)} for k in _COMPARED
            if getattr(rec, k) != getattr(lay, k)]


def _plan_on(ctx: _Ctx, gpus: int, sizes: list[int], exact_only: bool = False):
    if ctx.stage.name == "rlvr":
        return _plan_rlvr(ctx, gpus, sizes, exact_only)
    if exact_only and ctx.batch and ctx.batch % gpus:
        return None
    return _plan_dp(ctx, gpus, sizes)


def _alternatives(ctx: _Ctx, gpus: int, need: int) -> list[dict[str, Any]]:
    """The nearest GPU counts, fewer (leaving some idle) and more, on which every invariant holds."""
    out = []
    for label, counts in (("fewer", range(gpus - 1, need - 1, -1)), ("more", range(gpus + 1, 2 * gpus + 17))):
        for m in counts:
            sizes = _node_sizes(m, None)
            plan = _plan_on(ctx, m, sizes, exact_only=True)
            if plan and all(i.kept for i in _invariants(ctx, plan[0], plan[1], m, max(sizes))):
                what = f"use {m} of the {gpus} GPUs ({gpus - m} idle)" if label == "fewer" else f"with {m} GPUs"
                out.append({"gpus": m, "description": what, "breaks": [], "layout": asdict(plan[0])})
                break
    return out


def _validate(gpus: int, gpu_memory_gb: float, nodes: int | None) -> None:
    if gpus <= 0:
        raise ReproError(f"--gpus must be a positive integer (got {gpus})")
    if gpu_memory_gb <= OVERHEAD_GB:
        raise ReproError(f"--gpu-memory must exceed {OVERHEAD_GB:g} GB (got {gpu_memory_gb:g})")
    if nodes is not None and (nodes <= 0 or gpus % nodes):
        raise ReproError(f"--gpus {gpus} do not split evenly over --nodes {nodes}")


def plan_layout(registry: Registry, recipe: str, stage: str, gpus: int, gpu_memory_gb: float = 80.0,
                nodes: int | None = None) -> PlanResult:
    """A layout for `gpus` GPUs keeping the recorded batch semantics, or the closest ones and what breaks."""
    ctx = _context(registry, recipe, stage, gpu_memory_gb)  # unknown names first: they are the likelier typo
    _validate(gpus, gpu_memory_gb, nodes)
    need = _minimum(ctx)
    offload = "CPU offload" if any(r.level for r in ctx.ladder) else f"ZeRO-{ctx.ladder[-1].zero}"
    if need is None or gpus < need:
        at_least = f"at least {need}" if need else f"more than {MAX_GPUS}"
        raise ReproError(f"{recipe} {stage} needs {at_least} GPUs of {gpu_memory_gb:g} GB even with {offload} "
                         f"(asked for {gpus})")
    sizes = _node_sizes(gpus, nodes)
    per_node = max(sizes)
    rec = _recorded(ctx)
    lay = mem = None
    if rec and gpus == rec[1] and nodes in (None, rec[0].num_machines):
        lay = replace(rec[0])
        mem = _measure(ctx, lay, per_node)
        if not all(i.kept for i in _invariants(ctx, lay, mem, gpus, per_node)):
            lay = None
    plan = (lay, mem) if lay else _plan_on(ctx, gpus, sizes)
    if plan is None:
        raise ReproError(f"{recipe} {stage}: no layout fits {gpus} GPUs over {len(sizes)} nodes")
    lay, mem = plan
    invariants = _invariants(ctx, lay, mem, gpus, per_node)
    changes = _changes(rec[0] if rec else None, lay)
    result = PlanResult(recipe, stage, gpus, gpu_memory_gb, len(sizes), all(i.kept for i in invariants),
                        rec is not None and not changes, lay, mem, invariants, changes,
                        assumptions=list(ctx.assumptions))
    if not result.feasible:
        result.alternatives = _alternatives(ctx, gpus, need)
        result.warnings.append("breaks " + ", ".join(result.broken) + "; see the alternatives")
    relief = next((r for r in ctx.ladder if (r.zero, r.offload_optimizer, r.offload_params)
                   == (lay.zero_stage, lay.offload_optimizer, lay.offload_params)), None)
    if relief and relief.deviation:
        result.warnings.append(relief.deviation)
    what = " and ".join(w for w, on in (("optimizer", lay.offload_optimizer), ("parameters", lay.offload_params)) if on)
    mem["verdict"] = (f"{'fits' if mem['fits'] else 'does not fit'}: {mem['total_gb']} of {gpu_memory_gb:g} GB per GPU"
                      + (f" with CPU offload of the {what} ({mem['host_offload_gb_per_node']} GB host memory "
                         "per node; slower)" if what else ""))
    used = (lay.actor_gpus or lay.num_processes) + (lay.vllm_engines or 0) * (lay.vllm_tensor_parallel_size or 0)
    if used < gpus:
        result.warnings.append(f"{gpus - used} of the {gpus} GPUs stay idle in this layout")
    if mem["total_gb"] > 0.9 * gpu_memory_gb and mem["fits"]:
        result.warnings.append(f"the estimate ({mem['total_gb']} GB) is within 10% of the GPU's memory")
    if ctx.batch is None:
        result.warnings.append(f"{recipe} {stage} records no batch size: this layout keeps no batch semantics")
    if stage == "sft" and not ctx.sum_loss and hp(ctx.stage, "packing") is not True and rec \
            and lay.per_device_batch_size != rec[0].per_device_batch_size:
        result.warnings.append("per-device batch differs from the recording: a per-micro-batch mean loss over "
                               "unpacked sequences weighs tokens differently")
    return result
