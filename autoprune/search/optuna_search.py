"""Black-box search with Optuna: one trial per policy.

Each trial suggests one keep ratio per group; the ratios are projected through the environment's sequential
budget clip (:meth:`Problem.project`), so every trial is feasible and a sampler never wastes a trial on an
infeasible policy. The projected policy is stored in the trial's user attributes.

Samplers: ``tpe`` (multivariate TPE), ``cmaes`` (CMA-ES; needs the ``cmaes`` package), ``gp`` (Optuna's GP-based
Bayesian optimisation; needs ``scipy``), and ``nsga2`` — multi-objective, maximising the reward while minimising
a cost (latency when the problem can price it, else FLOPs), whose result carries the whole Pareto front.

The study lives in an Optuna storage — by default a SQLite file ``optuna.db`` in the run directory, or any RDB
URL given as ``storage`` — under a fixed study name, so ``resume=True`` continues it: earlier trials count
towards ``episodes`` and trial numbers continue where they stopped.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from typing import ClassVar

import numpy as np
import optuna

from autoprune.errors import UserError
from autoprune.search.base import SearchContext, Strategy, pareto_front

SAMPLERS = ("tpe", "cmaes", "gp", "nsga2")
_SAMPLER_DEPS = {"cmaes": "cmaes", "gp": "scipy"}


class OptunaStrategy(Strategy):
    name = "optuna"
    defaults: ClassVar[dict] = {
        "sampler": "tpe",
        "storage": None,  # an RDB URL; None: sqlite:///<workdir>/optuna.db, or in memory without a workdir
        "study_name": None,  # None: autoprune-<sampler>
        "n_startup_trials": 10,  # random trials before the model-based samplers take over (Optuna's default)
        "objective_cost": None,  # nsga2's second objective: flops | params | latency; None: latency if priced
    }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.options["sampler"] not in SAMPLERS:
            raise UserError(f"unknown Optuna sampler {self.options['sampler']!r}: use one of {', '.join(SAMPLERS)}")
        dep = _SAMPLER_DEPS.get(self.options["sampler"])
        if dep and importlib.util.find_spec(dep) is None:
            raise UserError(f"the {self.options['sampler']} sampler needs the {dep} package: pip install {dep}")
        cost = self.options["objective_cost"] or ("latency" if "latency" in self.problem.cost.metrics else "flops")
        if cost not in self.problem.cost.metrics:
            priced = ", ".join(self.problem.cost.metrics)
            raise UserError(f"objective cost {cost!r} cannot be priced: use one of {priced}")
        self.objective_cost = cost

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        s, seed, startup = self.options["sampler"], self.seed, self.options["n_startup_trials"]
        if s == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
        if s == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup)
        if s == "gp":
            with warnings.catch_warnings():  # deterministic_objective is "experimental"; our rewards are cached
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, deterministic_objective=True)
        return optuna.samplers.NSGAIISampler(seed=seed)

    def storage_url(self) -> str | None:
        if self.options["storage"]:
            return self.options["storage"]
        if self.workdir is None:
            if self.resume:
                raise UserError("--resume needs the run directory (--out) or --storage that holds the study")
            return None
        self.workdir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.workdir / 'optuna.db').resolve()}"

    def open_study(self) -> optuna.Study:
        name = self.options["study_name"] or f"autoprune-{self.options['sampler']}"
        url = self.storage_url()
        multi = self.options["sampler"] == "nsga2"
        directions = ["maximize", "minimize"] if multi else ["maximize"]
        exists = url is not None and name in optuna.study.get_all_study_names(url)
        if exists and not self.resume:
            raise UserError(f"an Optuna study {name!r} already exists in {url}: pass --resume to continue it, "
                            "or choose another run directory")
        if self.resume and not exists:
            raise UserError(f"no Optuna study {name!r} in {url} to resume: run without --resume first")
        study = optuna.create_study(storage=url, sampler=self.make_sampler(), study_name=name,
                                    directions=directions, load_if_exists=self.resume)
        study.set_user_attr("groups", [g.name for g in self.problem.graph.groups])
        return study

    def run(self, ctx: SearchContext) -> dict:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self.open_study()
        p = self.problem
        multi = self.options["sampler"] == "nsga2"
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "row" in t.user_attrs]
        for t in done:  # a resumed study: its trials count towards the budget and the history
            row = json.loads(t.user_attrs["row"])
            row["kept"] = tuple(row["kept"])
            ctx.add_row(row)
        names = [f"{i:03d}:{g.name}" for i, g in enumerate(p.graph.groups)]

        def objective(trial: optuna.Trial):
            ratios = np.array([trial.suggest_float(n, p.min_keep, 1.0) for n in names])
            kept = p.project(ratios)
            reward = ctx.evaluate(kept, trial=trial.number)
            trial.set_user_attr("row", json.dumps(ctx.rows[-1], default=_json_default))
            if multi:
                return reward, p.cost_shares(kept)[self.objective_cost]
            return reward

        if ctx.remaining:
            study.optimize(objective, n_trials=ctx.remaining, gc_after_trial=False)
        extra = {"study_name": study.study_name, "trials": len(study.trials), "sampler": self.options["sampler"]}
        if multi:
            front = pareto_front(ctx.history(), self.objective_cost, "reward")
            extra["pareto_front"] = front[["kept", self.objective_cost, "reward"]].to_dict("records")
        return extra


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
