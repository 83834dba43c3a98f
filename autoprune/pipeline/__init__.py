"""The search job as stages, each a module of its own, in the order the data flows:

1. :mod:`~autoprune.pipeline.setup` — the spec becomes a model, data, a latency table, a problem and an evaluator;
2. the search — a strategy of :mod:`autoprune.search` spends the evaluations (:func:`search_policy`);
3. :mod:`~autoprune.pipeline.verify` — a latency budget is checked by measuring on this device;
4. :mod:`~autoprune.pipeline.finish` — prune for real, score, fine-tune, measure, describe in a policy;
5. :mod:`~autoprune.pipeline.run_dir` — the run directory, all or nothing.

:func:`run` chains them; :mod:`autoprune.api` and a ``--workers`` child call it, the CLI through the API.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch.nn as nn

from autoprune.data import DataBundle
from autoprune.distributed import launched
from autoprune.errors import UserError
from autoprune.finetune import finetune_steps
from autoprune.pipeline.finish import finish
from autoprune.pipeline.run_dir import save_interrupted, write_run_dir
from autoprune.pipeline.setup import Setup, prepare
from autoprune.policy import Policy
from autoprune.search import SearchResult, run_search, strategy_class
from autoprune.search.baselines import magnitude_kept, uniform_kept
from autoprune.search.optuna_storage import check_storage
from autoprune.search.promotion import MARGIN_SE, promote
from autoprune.spec import DEFAULT_PROMOTE, RunSpec, save_spec


@dataclass
class RunOutcome:
    """What a run leaves behind: the search result, the policy (with every metric) and the pruned model."""

    result: SearchResult
    policy: Policy | None  # None when it only searched (a --workers child, whose parent finishes)
    pruned: nn.Module | None
    run_dir: Path | None


def run(
    spec: RunSpec,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    role: str = "search",
    module: nn.Module | None = None,
    bundle: DataBundle | None = None,
    trust_pickle: bool = False,
    callback=None,
    on_phase: Callable[[str], None] | None = None,
    on_table_progress=None,
) -> RunOutcome:
    """Set up, search, verify, finish and write the run directory ``out``.

    ``role``: ``search`` runs the whole job; ``worker`` (a ``--workers`` child, or a worker on another machine
    with no ``out``) only runs trials of a shared study; ``read`` runs no trial and finishes from the study.
    ``module``/``bundle`` stand in for the spec's model and data (a notebook's); such a run cannot be resumed.
    """
    started = time.perf_counter()
    phase = on_phase or (lambda _text: None)
    if launched():
        raise UserError(
            "a search runs in one process, not under torchrun: run `autoprune search --nproc N` to fine-tune the "
            "winner in N processes (and --workers N to evaluate in several)"
        )
    if spec.nproc > 1 and (module is not None or bundle is not None):
        raise UserError("--nproc re-creates the model and data in each process: name them (--model, --data)")
    if spec.options.get("storage"):
        check_storage(spec.options["storage"])  # an unreachable database fails now, before any model work
    run_dir = Path(out) if out is not None else None
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {out} is a file, not a run directory: pass a new or existing directory")
    setup = prepare(
        spec,
        module=module,
        bundle=bundle,
        trust_pickle=trust_pickle,
        on_phase=phase,
        on_table_progress=on_table_progress,
    )
    reproducible = module is None and bundle is None
    if run_dir is not None and reproducible:  # the run directory appears only once every input has been checked
        save_spec(run_dir, setup.spec, resume)
    result = search_policy(
        setup,
        run_dir,
        resume=resume,
        role=role,
        trust_pickle=trust_pickle,
        reproducible=reproducible,
        callback=callback,
        phase=phase,
    )
    if role == "worker":
        return RunOutcome(result, None, None, run_dir)
    if promotion_size(spec) > 0 and setup.evaluator is not None:
        result = promote_best(setup, result, phase)
    outcome = finish(setup, result, started, phase)
    if run_dir is not None:
        phase("writing the run directory")
        write_run_dir(run_dir, result.history, outcome)
    return RunOutcome(result, outcome.policy, outcome.pruned, run_dir)


def promotion_size(spec: RunSpec) -> int:
    """How many of the search's best policies the promotion rung fine-tunes: ``--promote`` when given, else
    :data:`~autoprune.spec.DEFAULT_PROMOTE` for a searching strategy whose winner is fine-tuned (the rung predicts
    that fine-tune) and 0 otherwise (no fine-tune: the reward is the criterion; uniform, magnitude: one policy)."""
    if spec.promote is not None:
        return spec.promote
    searches = strategy_class(spec.strategy).needs_reward
    return DEFAULT_PROMOTE if searches and spec.finetune_epochs > 0 else 0


def promotion_steps(setup: Setup) -> int:
    """The rung's fine-tune steps: ``--promote-steps``, or the final fine-tune's length when that is shorter (the
    rung predicts the final fine-tune; a longer one would rank by a recovery the winner never gets, at more cost
    than the fine-tune it predicts)."""
    spec = setup.spec
    if setup.bundle is None or spec.finetune_epochs <= 0:
        return spec.promote_steps
    return min(spec.promote_steps, finetune_steps(setup.bundle, spec.finetune_epochs))


def promote_best(setup: Setup, result: SearchResult, phase: Callable[[str], None]) -> SearchResult:
    """The multi-fidelity rung (:mod:`autoprune.search.promotion`): the search's best ``promote`` policies, the uniform
    one and global magnitude pruning's, and those two grown into the budget their whole steps leave (``fill``),
    fine-tuned ``promote_steps`` steps; the best after it becomes the result's policy if it leads uniform by more than
    :data:`~autoprune.search.promotion.MARGIN_SE` standard errors, else uniform does."""
    spec, k, problem = setup.spec, promotion_size(setup.spec), setup.problem
    steps = promotion_steps(setup)
    phase(
        f"promoting the best {k} policies, uniform and global magnitude (as is and filled to the budget) to "
        f"{steps} fine-tune steps each" + (" (the final fine-tune's length)" if steps < spec.promote_steps else "")
    )
    others = {
        "magnitude": magnitude_kept(problem, problem.importance),  # what --strategy magnitude evaluates
        "uniform+fill": uniform_kept(problem, fill=True)[0],
        "magnitude+fill": magnitude_kept(problem, problem.importance, fill=True),
    }
    ranked = promote(result.history, problem, setup.evaluator, k, steps, others)
    record = [{**asdict(p), "kept": list(p.kept)} for p in ranked]
    best = ranked[0]
    top = max(ranked, key=lambda p: np.nan_to_num(p.accuracy_ft, nan=-1.0))
    held = "" if top is best else f" ({top.source}'s {top.accuracy_ft:.2%} is within the held-out images' noise)"
    phase(f"promoted: {best.source} wins with {best.accuracy_ft:.2%} after the short fine-tune{held}")
    extra = {**result.extra, "promotion": record, "promotion_margin_se": MARGIN_SE, "promotion_steps": steps}
    return replace(result, best_kept=np.asarray(best.kept), extra=extra)


def search_policy(
    setup: Setup,
    run_dir: Path | None,
    *,
    resume: bool,
    role: str,
    trust_pickle: bool,
    reproducible: bool,
    callback,
    phase: Callable[[str], None],
) -> SearchResult:
    """Stage 2: the spec's strategy searches the problem; Ctrl-C keeps the best policy so far in the run
    directory (the journal or the study resumes the rest)."""
    spec = setup.spec
    options = dict(spec.options) | ({"reward": spec.reward} if spec.reward is not None else {})
    phase(f"searching with {spec.strategy}")
    try:
        return run_search(
            spec.strategy,
            setup.problem,
            setup.evaluator,
            episodes=spec.episodes,
            seed=spec.seed,
            options=options,
            callback=callback,
            workdir=run_dir,
            resume=resume,
            spec=spec if reproducible else None,
            role=role,
            trust_pickle=trust_pickle,
        )
    except KeyboardInterrupt as e:
        if run_dir is not None:
            save_interrupted(run_dir, setup.problem, getattr(e, "rows", None))
        raise


__all__ = ["RunOutcome", "promotion_size", "run", "search_policy", "Setup", "prepare"]
