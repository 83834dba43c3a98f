"""Black-box search with Optuna: one trial per policy, in one process or shared by many.

Each trial suggests one keep ratio per group; the ratios are projected through the environment's sequential
budget clip (:meth:`Problem.project`), so every trial is feasible and a sampler never wastes a trial on an
infeasible policy. The evaluation row (policy, costs, reward, seconds) is stored in the trial's user attribute
``row``.

Samplers: ``tpe`` (multivariate TPE), ``cmaes`` (CMA-ES; needs the ``cmaes`` package), ``gp`` (Optuna's GP-based
Bayesian optimisation; needs ``scipy``), and ``nsga2`` — multi-objective, maximising the reward while minimising
a cost (latency when the problem can price it, else FLOPs), whose result carries the whole Pareto front.

Where the study lives:

* by default a SQLite file ``optuna.db`` in the run directory (in memory without one), owned by this process;
* with ``workers > 1`` (``--workers N``) a journal file ``optuna-journal.log`` in the run directory, shared by N
  local worker processes (:mod:`autoprune.search.workers` starts and watches them);
* with ``storage`` (``--storage URL``) any Optuna RDB URL (PostgreSQL for many machines) or ``journal:PATH``,
  shared by every worker started with the same ``--storage`` and ``--study``.

A shared study is one search, whoever runs its trials. The evaluation budget is the study's: ``episodes`` counts
COMPLETE trials across all workers, and a worker starts a trial only while fewer than ``episodes`` are complete or
running (and gives a trial back, PRUNED, if a race left it over the budget), so the study ends with exactly
``episodes`` complete trials — unless it runs out of new policies first: a trial whose projected policy the study
has already evaluated is PRUNED as a repeat (no evaluation, not counted), and after ``max_repeats`` repeats in a
row the study records why in its user attribute ``converged`` and every worker stops. Optuna's storage gives each
trial to one worker, and every worker samples from the whole study (its own sampler seed, so the random start-up
trials differ). The study describes itself: the search's arguments (``args``), the group names and the problem's
identity are study user attributes, so any worker, or ``autoprune report --storage URL --study NAME``, writes the
same run directory from the study alone, and a worker started with different arguments is refused. Each worker's
:class:`SearchContext` mirrors the study's complete trials (:class:`StudyMirror`), so its progress shows the
study's global count and best, and its result — the best complete trial, ties to the lowest trial number — is the
same whichever worker computes it.

Failures: a trial whose evaluation raises, or whose reward is not finite (a pruned model with NaN/inf outputs), is
FAIL with the reason in its user attribute ``error``; the study goes on, until ``max_failures`` trials of one
worker fail in a row. A worker that dies leaves a RUNNING trial: on an RDB storage Optuna's heartbeat marks it FAIL
after ``grace_period`` seconds without a heartbeat, and :class:`~autoprune.search.optuna_storage.RetryStaleTrial`
puts its parameters back as a WAITING trial that the next worker to ask runs again (``max_retry`` times at most); a
journal storage has no heartbeat, so the parent of ``--workers`` does the same for a child it sees die.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import is_heartbeat_enabled  # not re-exported; what Study.optimize uses
from optuna.trial import TrialState

from autoprune.errors import UserError
from autoprune.pareto import pareto_front
from autoprune.search.base import SearchContext, Strategy
from autoprune.search.baselines import magnitude_kept, uniform_kept
from autoprune.search.optuna_storage import JOURNAL, lost_storage, open_storage, quiet_heartbeat_failures, redact
from autoprune.search.optuna_study import (
    CONVERGED,
    POLL_S,
    StudyMirror,
    describe_study,
    study_identity,
    trial_counts,
    worker_id,
)
from autoprune.search.workers import parent_gone, reap_dead_local_trials, run_local_workers


def _gp(seed: int, startup: int, shared: bool) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():  # deterministic_objective is "experimental"; our rewards are cached
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, deterministic_objective=True)


# The registry of samplers: name -> factory(seed, n_startup_trials, shared). A shared study's TPE lies about the
# running trials (constant liar), so that workers sampling at the same time spread out.
SAMPLERS: dict[str, Callable[[int, int, bool], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, startup, shared: optuna.samplers.TPESampler(
        seed=seed, multivariate=True, n_startup_trials=startup, constant_liar=shared
    ),
    "cmaes": lambda seed, startup, shared: optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup),
    "gp": _gp,
    "nsga2": lambda seed, startup, shared: optuna.samplers.NSGAIISampler(seed=seed),
}
_SAMPLER_DEPS = {"cmaes": "cmaes", "gp": "scipy"}
JOURNAL_FILE = "optuna-journal.log"  # in the run directory, for --workers without --storage


class OptunaStrategy(Strategy):
    name = "optuna"
    defaults: ClassVar[dict] = {
        "sampler": "tpe",
        "storage": None,  # an Optuna RDB URL or journal:PATH; None: sqlite:///<workdir>/optuna.db, or in memory
        "study_name": None,  # None: autoprune-<sampler>
        "n_startup_trials": 10,  # random trials before the model-based samplers take over (Optuna's default)
        "objective_cost": None,  # nsga2's second objective: flops | params | latency; None: latency if priced
        "workers": 1,  # local worker processes sharing the study (a journal file in the run dir without storage)
        "heartbeat_interval": 10,  # seconds between a running trial's heartbeats (shared RDB storages)
        "grace_period": 30,  # seconds without a heartbeat before a trial is failed and retried
        "max_retry": 3,  # how often a dead worker's trial is re-run
        "max_failures": 10,  # a worker stops after this many of its trials fail in a row
        "max_repeats": None,  # the study ends early after this many proposals in a row of evaluated policies
        # (None: max(50, episodes); a repeat costs milliseconds)
        "warm_start": False,  # a new study's first trials: the uniform policy and global magnitude's allocation
    }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        if o["sampler"] not in SAMPLERS:
            raise UserError(f"unknown Optuna sampler {o['sampler']!r}: use one of {', '.join(SAMPLERS)}")
        dep = _SAMPLER_DEPS.get(o["sampler"])
        if dep and importlib.util.find_spec(dep) is None:
            raise UserError(f"the {o['sampler']} sampler needs the {dep} package: pip install {dep}")
        cost = o["objective_cost"] or ("latency" if "latency" in self.problem.cost.metrics else "flops")
        if cost not in self.problem.cost.metrics:
            priced = ", ".join(self.problem.cost.metrics)
            raise UserError(f"objective cost {cost!r} cannot be priced: use one of {priced}")
        self.objective_cost = cost
        if not isinstance(o["workers"], int) or o["workers"] < 1:
            raise UserError(f"--workers {o['workers']} must be a whole number of at least 1")
        for key in ("heartbeat_interval", "grace_period", "max_failures"):
            if not isinstance(o[key], int) or o[key] < 1:
                raise UserError(f"option {key}={o[key]!r} must be a whole number of seconds/trials, at least 1")
        self.worker = worker_id()

    # -- where the study lives ---------------------------------------------------------------------------------
    @property
    def shared(self) -> bool:
        """Whether other processes may run trials of this study (then trials carry their worker, seeds differ)."""
        return bool(self.options["storage"]) or self.options["workers"] > 1 or self.role == "worker"

    @property
    def owned(self) -> bool:
        """Whether the study's storage belongs to this run directory (default sqlite, or the --workers journal)."""
        return not self.options["storage"]

    def storage_url(self) -> str | None:
        if self.options["storage"]:
            return self.options["storage"]
        if self.workdir is None:
            if self.resume:
                raise UserError("--resume needs the run directory (--out) or --storage that holds the study")
            if self.options["workers"] > 1:
                raise UserError("--workers needs a run directory (--out) for their journal, or --storage")
            return None
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.options["workers"] > 1:
            return f"{JOURNAL}{(self.workdir / JOURNAL_FILE).resolve()}"
        return f"sqlite:///{(self.workdir / 'optuna.db').resolve()}"

    def study_name(self) -> str:
        return self.options["study_name"] or f"autoprune-{self.options['sampler']}"

    def open_storage(self, url: str | None) -> BaseStorage | None:
        o = self.options
        heartbeat = o["heartbeat_interval"] if self.shared else None
        return open_storage(url, heartbeat_interval=heartbeat, grace_period=o["grace_period"], max_retry=o["max_retry"])

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        seed = self.seed
        if self.shared:  # one seed per worker: the same seed everywhere would propose the same start-up trials
            seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{self.worker}".encode()).digest()[:4], "big") >> 1
        return SAMPLERS[self.options["sampler"]](seed, self.options["n_startup_trials"], self.shared)

    def identity(self) -> dict:
        """What every worker of one study must agree on: the problem, the reward and the budget."""
        return study_identity(
            self.spec.described if self.spec is not None else {},
            sampler=self.options["sampler"],
            objective_cost=self.objective_cost,
            fingerprint=self.problem.graph.fingerprint,
        )

    def open_study(self, episodes: int) -> optuna.Study:
        name, url = self.study_name(), self.storage_url()
        storage = self.open_storage(url)
        where = redact(url) if url else "memory"
        multi = self.options["sampler"] == "nsga2"
        directions = ["maximize", "minimize"] if multi else ["maximize"]
        exists = storage is not None and name in optuna.study.get_all_study_names(storage)
        role = self.role
        if role in ("worker", "read") and not exists:
            raise UserError(f"no Optuna study {name!r} in {where}: check --storage and --study")
        if role == "search" and exists and not self.resume and self.owned:
            raise UserError(
                f"an Optuna study {name!r} already exists in {where}: pass --resume to continue "
                "it, or choose another run directory"
            )
        # --resume on a study not there yet starts it: the search was stopped before it created it (Ctrl-C while
        # the latency table was measured), and run without --resume the run directory's args.json refuses it
        study = optuna.create_study(
            storage=storage, sampler=self.make_sampler(), study_name=name, directions=directions, load_if_exists=True
        )
        describe_study(
            study,
            {**self.identity(), "episodes": episodes},
            args=self.spec.described if self.spec is not None else None,
            groups=[g.name for g in self.problem.graph.groups],
            where=where,
            resume=self.resume,
            role=self.role,
        )
        return study

    # -- the search --------------------------------------------------------------------------------------------
    def run(self, ctx: SearchContext) -> dict:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported below, one line each
        study = self.open_study(ctx.episodes)
        mirror = StudyMirror(study, ctx)
        role = self.role
        if self.options["warm_start"] and role == "search" and not study.get_trials(deepcopy=False):
            for params in self.warm_start_params():
                study.enqueue_trial(params, skip_if_exists=True)
        if self.resume and self.owned and role == "search":
            # a process that owned this storage was killed: its RUNNING trial is re-run (local workers still
            # alive, from a --workers parent that died, finish theirs)
            reap_dead_local_trials(study, self.options["max_retry"], "the search was interrupted", everyone=True)
        try:
            with quiet_heartbeat_failures():
                if role == "read":
                    mirror.sync()
                elif self.options["workers"] > 1 and role == "search":
                    run_local_workers(self, study, ctx, mirror)
                else:
                    self.run_trials(study, ctx, mirror, stop=parent_gone if role == "worker" else lambda: False)
                mirror.sync()
        except Exception as e:  # noqa: BLE001 - the database going away mid-search surfaces in many shapes
            lost = lost_storage(e)
            if lost is None:
                raise
            url = self.storage_url()
            reason = " ".join(str(getattr(lost, "orig", None) or lost).split())[:200]
            raise UserError(
                f"lost the Optuna storage {redact(url) if url else 'memory'} ({reason}): the study keeps every "
                "finished trial; once the database is back, continue with "
                + (f"autoprune search --resume {self.workdir}" if self.workdir else "this worker's command again")
            ) from e
        if not ctx.rows:
            raise UserError(
                f"study {study.study_name!r} has no complete trial yet: run `autoprune search` workers on it first"
            )
        states = [t.state for t in study.get_trials(deepcopy=False)]
        extra = {
            "study_name": study.study_name,
            "trials": len(states),
            "sampler": self.options["sampler"],
            "complete": states.count(TrialState.COMPLETE),
            "failed": states.count(TrialState.FAIL),
        }
        extra["repeats"] = sum(bool(t.user_attrs.get("repeat")) for t in study.get_trials(deepcopy=False))
        if study.user_attrs.get(CONVERGED):
            extra["converged"] = study.user_attrs[CONVERGED]
        if self.shared:
            extra["workers"] = sorted({str(r.get("worker")) for r in ctx.rows if r.get("worker")})
        if self.options["sampler"] == "nsga2":
            front = pareto_front(ctx.history(), self.objective_cost, "reward")
            extra["pareto_front"] = front[["kept", self.objective_cost, "reward"]].to_dict("records")
        return extra

    def param_names(self) -> list[str]:
        return [f"{i:03d}:{g.name}" for i, g in enumerate(self.problem.graph.groups)]

    def warm_start_params(self) -> list[dict[str, float]]:
        """The ratios of the two baselines a search must beat, as trial parameters: the uniform policy and (when
        the problem has importance scores) global magnitude pruning's allocation. Each projects back onto itself,
        so TPE starts from their rewards instead of only random policies (the issue-13 proxy study: at deep cuts
        the random region the start-up trials sample fine-tunes worse than these two)."""
        p = self.problem
        policies = [uniform_kept(p)[0]]
        if p.importance is not None:
            policies.append(magnitude_kept(p, p.importance))
        return [
            dict(zip(self.param_names(), np.clip(k / p.channels, p.min_keep, 1.0).tolist(), strict=True))
            for k in policies
        ]

    def objective(self, trial: optuna.Trial, study: optuna.Study, ctx: SearchContext, outcome: dict[str, Any]):
        """One trial: suggest ratios, project them onto the budget, evaluate the policy through ``ctx``. A trial
        over the study's budget or proposing a policy already evaluated is PRUNED and costs no evaluation;
        ``outcome`` says which way it went."""
        p, episodes = self.problem, ctx.episodes
        outcome.clear()
        trial.set_user_attr("worker", self.worker)
        complete, running = trial_counts(study)
        ahead = sum(t._trial_id < trial._trial_id for t in running)
        if ahead >= episodes - complete:  # another worker's trial took the last slot at the same moment
            outcome["surplus"] = True
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("the evaluation budget is taken by other workers' running trials")
        kept = p.project(np.array([trial.suggest_float(n, p.min_keep, 1.0) for n in self.param_names()]))
        policy = [int(k) for k in kept]
        # read after the sampler's suggestion, not from the snapshot above: another worker's trial may have set its
        # policy or completed meanwhile (a completed one is in ctx.rows only after the next sync)
        now = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        seen = {tuple(r["kept"]) for r in ctx.rows} | {tuple(t.user_attrs.get("kept", ())) for t in now}
        if tuple(policy) in seen:
            # the cache would answer it and the budget would pay: a coarse space (a 16-channel block on a small
            # model) makes a sampler repeat itself. PRUNED, it costs no evaluation, and TPE counts it among the
            # poor trials, which steers it off policies it has seen (or another worker is scoring).
            outcome["repeat"] = True
            trial.set_user_attr("repeat", True)
            raise optuna.TrialPruned("a policy this study has already evaluated")
        trial.set_user_attr("kept", policy)  # what a running trial is evaluating, for the other workers
        extra = {"trial": trial.number, "worker": self.worker} if self.shared else {"trial": trial.number}
        try:
            reward = ctx.evaluate(kept, **extra)
        except Exception as e:
            outcome["error"] = _reason(e)
            trial.set_user_attr("error", outcome["error"])
            raise
        trial.set_user_attr("row", json.dumps(ctx.rows[-1], default=_json_default))
        if reward is None or not math.isfinite(reward):
            outcome["error"] = f"the reward is {reward} (the pruned model's outputs are not finite)"
            trial.set_user_attr("error", outcome["error"])
            raise NonFiniteReward(outcome["error"])
        outcome["done"] = True
        return (reward, p.cost_shares(kept)[self.objective_cost]) if self.options["sampler"] == "nsga2" else reward

    def run_trials(
        self, study: optuna.Study, ctx: SearchContext, mirror: StudyMirror, stop: Callable[[], bool] = lambda: False
    ) -> None:
        """Run trials until the study holds ``ctx.episodes`` complete ones (this worker's and everyone else's)."""
        episodes, o = ctx.episodes, self.options
        heartbeat = is_heartbeat_enabled(study._storage)
        outcome: dict[str, Any] = {}
        failures, waiting, repeats = 0, False, 0
        max_repeats = o["max_repeats"] or max(50, episodes)
        while not stop() and not study.user_attrs.get(CONVERGED):
            if heartbeat:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            complete, running = trial_counts(study)
            mirror.sync()
            if complete >= episodes:
                return
            if complete + len(running) >= episodes:  # the rest of the budget is being evaluated elsewhere
                if not waiting:
                    print(f"waiting for {len(running)} running trial(s) of other workers", file=sys.stderr, flush=True)
                waiting = True
                if not heartbeat:  # no heartbeat (a journal file): at least a dead worker on this host is noticed
                    reap_dead_local_trials(study, o["max_retry"], "its worker died")
                time.sleep(POLL_S)
                continue
            waiting = False
            study.optimize(
                lambda t: self.objective(t, study, ctx, outcome), n_trials=1, catch=(Exception,), gc_after_trial=False
            )
            if "error" in outcome:
                failures += 1
                print(f"trial failed: {outcome['error']}", file=sys.stderr, flush=True)
                if failures >= o["max_failures"]:
                    raise UserError(
                        f"{failures} trials in a row failed, the last with: {outcome['error']}; fix "
                        "the model or the reward (each failed trial's reason is its 'error' attribute)"
                    )
            elif outcome.get("done"):
                failures = repeats = 0
            if outcome.get("repeat"):
                repeats += 1
                if repeats >= max_repeats:  # converged, or the space has no policy left to propose
                    study.set_user_attr(
                        CONVERGED,
                        f"the last {repeats} proposals were all policies already "
                        f"evaluated; stopped at {trial_counts(study)[0]} of {episodes}",
                    )
                    return


class NonFiniteReward(ValueError):
    """A policy whose reward is NaN or infinite: its trial fails and is never the best."""


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"[:500] if text else type(e).__name__


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)
