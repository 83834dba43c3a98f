"""The run spec: everything that decides what a search finds, in one frozen, typed value.

The CLI builds a :class:`RunSpec` from its flags, the Python API from its arguments; it is what ``args.json`` in a
run directory holds (so ``--resume RUN`` needs nothing else), what an Optuna study's ``args`` attribute holds (so any
worker, or ``autoprune report --storage``, re-runs the same search), and what a ``--workers`` child is started with.
The budget is parsed here, once, into a :class:`~autoprune.budget.Budget`; JSON carries its text.

What a process does with a spec (own the run directory, run trials for a parent, finish from a study) and the
callbacks it reports to are not part of the spec: two processes with equal specs run the same search.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from autoprune import atomic
from autoprune.budget import Budget, parse_budget
from autoprune.errors import UserError
from autoprune.models import DEMO_MODEL

DEMO_DATA = "fashion-mnist"
# A batch of 64, served as one request. The demo's budget is relative (`make demo`: latency=70% of the unpruned model
# as timed on the machine it runs on), so it means the same on a faster or slower CPU.
DEMO_INPUT_SHAPE = (64, 1, 28, 28)
SPEC_FILE = "args.json"  # in the run directory
# Options that say where a shared Optuna study lives and how many local processes run it: they locate the search,
# they do not change what it finds, so a study's description leaves them out.
LOCATION_OPTIONS = ("storage", "study_name", "workers")
# Likewise the hardware a search's passes run on: a study shared by hosts with different GPUs is one search.
PLACEMENT_FIELDS = ("device", "loader_workers", "nproc")


# The search strategy when none is named: Optuna's multivariate TPE. Measured against AMC's DDPG on the same reward,
# evaluations and distilled fine-tune (benchmarks/README.md, "Search curve"): level at flops=50% on the demo
# ResNet-20 (93.34 vs 93.32 %, 6 and 4 seeds), ahead at flops=20% (91.56 +- 0.05 vs 90.43 +- 0.86 %, 3 seeds; the
# compact model 87.66 vs 87.39 %, one seed), and with no agent to train between evaluations.
DEFAULT_STRATEGY = "optuna"

# How a search that fine-tunes its winner picks it: its best DEFAULT_PROMOTE policies, the uniform one and global
# magnitude pruning's allocation each get ``promote_steps`` distilled steps, and the best after them wins (successive
# halving's second rung) if it leads uniform beyond the held-out images' noise (search/promotion.py, MARGIN_SE). At deep
# cuts the reward (held-out accuracy after BN recalibration, or the distillation loss) is near chance and ranks policies
# against their fine-tuned accuracy (Spearman -0.2 and -0.4 over 13 policies of the compact model at flops=20%), while
# 50 or 200 fine-tune steps rank them with it (+0.8; scripts/bench_proxy.py). Measured at flops=20%, one seed
# (benchmarks/README.md, "The promotion rung"): the compact model's TPE search ends 0.9 points under uniform without the
# rung, 0.1-0.3 under it with it (5,000 held-out images); in the four searches run with and without it the rung's pick
# ended 0.1-0.7 points above the search's own (ResNet-20 too: +1.87 over uniform against +1.62). Without a fine-tune the
# reward is the final criterion and there is no rung; a one-shot strategy (uniform, magnitude) has nothing to promote.
# As the CLI runs it (5,000 held-out images) the default ends ResNet-20 at 91.25 +- 0.27 % over three seeds, +1.31 over
# uniform, and with the filled baselines in the rung (Problem.fill) at flops=10% 87.30 +- 0.69 %, +1.89
# (benchmarks/README.md, "Filling the budget"); the compact model at flops=10%, where the rung's leads were all under
# 1.3 standard errors, keeps uniform (86.51 +- 0.38 %; "A lead the held-out images can tell").
DEFAULT_PROMOTE = 5


@dataclass(frozen=True)
class RunSpec:
    """One search: the model and data, the budget, the strategy with its options, and the finishing steps."""

    budget: Budget
    model: str = DEMO_MODEL
    data: str | None = None
    input_shape: tuple[int, ...] | None = None
    weights: str | None = None
    table: str | None = None  # a latency table; None: this device's (shipped, cached or built)
    force: bool = False  # use a table measured on another device
    strategy: str = DEFAULT_STRATEGY
    options: Mapping[str, Any] = field(default_factory=dict)  # the strategy's own (``Strategy.defaults``)
    reward: str | None = None
    episodes: int = 300
    # the search's best k policies (uniform and global magnitude too, as is and filled) get a short distilled
    # fine-tune; the best wins.
    # None: DEFAULT_PROMOTE when the winner is fine-tuned and the strategy searches, else 0 (``promotion_size``)
    promote: int | None = None
    promote_steps: int = 200  # SGD steps of that fine-tune
    seed: int = 0
    min_keep: float = 0.1
    # None: this device's channel block (its table's, else 8), for every budget; its coarsest divisor that meets a
    # budget below the block's floor (problem.coarsest_round_to)
    round_to: int | None = None
    criterion: str = "l2"
    held_out: int | None = 5000
    finetune_epochs: float = 1.0
    finetune_lr: float | None = None
    kd: bool = True
    measure: bool = True
    threads: int = 2
    device: str = "auto"  # where the passes over data run (autoprune.compute): auto | cpu | cuda | cuda:N[,cuda:M]
    amp: str = "auto"  # autocast precision on that device: auto | bf16 | fp16 | off
    loader_workers: int | None = None  # None: the device's default (none on the CPU)
    nproc: int = 1  # processes (torch.distributed) the final fine-tune runs in

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        for name in ("weights", "table"):
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, str(value))
        if self.episodes < 1:
            raise UserError(f"--episodes {self.episodes} must be at least 1")
        if (self.promote is not None and self.promote < 0) or self.promote_steps < 1:
            raise UserError(
                f"--promote {self.promote} must be 0 or more, --promote-steps {self.promote_steps} positive"
            )
        if self.nproc < 1:
            raise UserError(f"--nproc {self.nproc} must be at least 1")

    @classmethod
    def create(cls, budget: str | Budget, model: str | None = None, data: str | None = None, **settings) -> RunSpec:
        """A spec from user input: the budget text is parsed (a malformed one fails naming its token), and no model
        means the embedded default (the demo model and its checkpoint on Fashion-MNIST at batch 64)."""
        if model is None:
            model, data = DEMO_MODEL, data or DEMO_DATA
            settings["input_shape"] = settings.get("input_shape") or DEMO_INPUT_SHAPE
        unknown = sorted(set(settings) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown search setting(s): {', '.join(unknown)}")
        bud = parse_budget(budget) if isinstance(budget, str) else budget
        return cls(budget=bud, model=model, data=data, **settings)

    def replace(self, **changes) -> RunSpec:
        return replace(self, **changes)

    @property
    def described(self) -> dict:
        """What decides the result, for a shared study's description: the spec without where the study lives."""
        d = {k: v for k, v in self.to_json().items() if k not in PLACEMENT_FIELDS}
        d["options"] = {k: v for k, v in d["options"].items() if k not in LOCATION_OPTIONS}
        return d

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(budget=self.budget.text, options=dict(self.options))
        d["input_shape"] = list(self.input_shape) if self.input_shape is not None else None
        return json.loads(json.dumps(d))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunSpec:
        """A spec from ``args.json`` or a study's description (written by :meth:`to_json`)."""
        d = dict(d)
        return cls.create(d.pop("budget"), d.pop("model"), d.pop("data", None), **d)


def save_spec(run_dir: Path, spec: RunSpec, resume: bool) -> None:
    """``args.json`` in a new run directory (or the one being resumed); a finished or running search is not
    overwritten by another."""
    path = run_dir / SPEC_FILE
    if path.is_file() and not resume:
        raise UserError(f"{run_dir} already holds a search: pass --resume {run_dir} to continue it, or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(spec.to_json(), indent=2) + "\n")


def load_spec(run_dir: str | Path) -> RunSpec:
    """The spec an interrupted search in ``run_dir`` was started with."""
    path = Path(run_dir) / SPEC_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} holds no search to resume (no {SPEC_FILE}): start one with `autoprune search`")
    try:
        return RunSpec.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a search's arguments ({e}): start the search again with another --out") from e
