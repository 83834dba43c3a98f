"""Apply a policy: remove channels for real, so the result is a smaller dense model.

Which channels of a group go is decided by an importance criterion, scored once on the unpruned weights (AMC and
the criteria's papers score the original layer, and scoring once makes pruning order-independent and the same
policy always give the same weights):

* ``l1`` / ``l2``: the group's weight magnitude (Li et al., 2017), summed over every coupled layer;
* ``bn-scale``: |gamma| of the group's BatchNorms (network slimming, Liu et al., 2017);
* ``taylor``: first-order Taylor expansion of the loss, |w * dL/dw| (Molchanov et al., 2019), from data;
* ``apoz``: 1 - the average percentage of zeros of the channel's activations (Hu et al., 2016), from data;
* ``random``: a seeded baseline.

The surgery replays, on a copy of the model, the per-layer steps Torch-Pruning's dependency graph derived for each
group (see :class:`autoprune.layers.PruneStep`): no graph is traced per policy, so applying one costs milliseconds.
``reconstruct=True`` then refits each consumer layer by least squares so that, on a few batches, its outputs match
the unpruned model's (the channel-selection step of He et al., 2017, used by AMC).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from autoprune.compute import CPU, Compute, placed
from autoprune.data import Split
from autoprune.errors import UserError
from autoprune.layers import CUSTOMIZED_PRUNERS_ATTR, OWN_MODEL_HELP, LayerGraph, analyze
from autoprune.vit import sync_vit_widths

CRITERIA = ("l1", "l2", "bn-scale", "taylor", "apoz", "random")
DATA_CRITERIA = ("taylor", "apoz")


class _APoZImportance(tp.importance.ActivationImportance):
    """1 - APoZ, measured at the inputs of the layers that consume the group's channels."""

    def __init__(self) -> None:
        super().__init__(p=1, normalizer=None, target_types=[nn.Conv2d, nn.Linear])

    @torch.no_grad()
    def record(self, model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        sums: dict[nn.Module, torch.Tensor] = {}
        counts: dict[nn.Module, int] = defaultdict(int)

        def hook(module, inputs, _output):
            x = inputs[0]
            nonzero = (x != 0).float()
            per_channel = (
                nonzero.reshape(-1, x.shape[-1]).mean(0) if isinstance(module, nn.Linear) else nonzero.mean((0, 2, 3))
            )
            sums[module] = sums.get(module, 0) + per_channel
            counts[module] += 1

        hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        try:
            model.eval()
            for x, _ in batches:
                model(x)
        finally:
            for h in hooks:
                h.remove()
        for m, s in sums.items():
            m._importance = s / counts[m]


def _importance_fn(criterion: str, seed: int):
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
    if criterion == "bn-scale":
        return tp.importance.BNScaleImportance(normalizer=None)
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance(normalizer=None)
    if criterion == "apoz":
        return _APoZImportance()
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return lambda group: torch.rand(len(group[0].idxs), generator=gen)
    raise UserError(f"unknown importance criterion {criterion!r}: use one of {', '.join(CRITERIA)}")


def _calibration_batches(data: Split | None, criterion: str, n: int, batch_size: int, seed: int, compute: Compute):
    if data is None:
        raise UserError(f"the {criterion!r} criterion needs data: pass --data (or use l1, l2, bn-scale)")
    batches = []
    for i, (x, y) in enumerate(data.batches(batch_size, shuffle=True, seed=seed)):
        if i >= n:
            break
        batches.append((compute.batch(x), y.to(compute.device)))
    return batches


def group_importance(
    graph: LayerGraph,
    criterion: str = "l2",
    data: Split | None = None,
    *,
    num_batches: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    compute: Compute = CPU,
) -> list[np.ndarray]:
    """Importance of every channel of every group of ``graph.model`` (higher = keep); the data-dependent criteria
    run their passes on ``compute``."""
    if criterion not in DATA_CRITERIA:
        return _scores(graph, criterion, seed)
    model = graph.model
    batches = _calibration_batches(data, criterion, num_batches, batch_size, seed, compute)
    with placed(model, compute):
        if criterion == "taylor":
            model.eval()
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                for x, y in batches:
                    F.cross_entropy(model(x), y).backward()
            return _scores(graph, criterion, seed)
        scorer = _APoZImportance()
        scorer.record(model, batches)
        return _scores(graph, criterion, seed, scorer)


def _scores(graph: LayerGraph, criterion: str, seed: int, scorer=None) -> list[np.ndarray]:
    model = graph.model
    scorer = scorer or _importance_fn(criterion, seed)
    scores = []
    for g, tp_group in zip(graph.groups, graph.tp_groups, strict=True):
        imp = scorer(tp_group)
        if imp is None:  # a group with no parametrised layer the criterion looks at: fall back to magnitude
            imp = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)(tp_group)
        imp = torch.as_tensor(imp, dtype=torch.float64).detach().cpu().numpy()
        if g.unit > 1 and len(imp) == g.channels * g.unit:  # a head's importance is its channels'
            imp = imp.reshape(g.channels, g.unit).sum(1)
        if len(imp) != g.channels:
            raise RuntimeError(f"importance of {g.name} has {len(imp)} scores for {g.channels} channels")
        scores.append(np.nan_to_num(imp, nan=0.0))
    if criterion == "taylor":
        model.zero_grad(set_to_none=True)
    for m in model.modules():
        if hasattr(m, "_importance"):
            del m._importance
    return scores


class ChannelPruner:
    """Prunes one model by any number of policies; importance is scored once, at construction."""

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...] | None = None,
        *,
        graph: LayerGraph | None = None,
        criterion: str = "l2",
        data: Split | None = None,
        model_name: str = "model",
        seed: int = 0,
        compute: Compute = CPU,
    ) -> None:
        if graph is None or graph.model is not model:
            if input_shape is None:
                raise ValueError("input_shape is needed to analyse the model")
            graph = analyze(model, input_shape, model_name)
        self.graph, self.model, self.criterion, self.data, self.seed = graph, model, criterion, data, seed
        self.compute = compute
        self.scores = group_importance(graph, criterion, data, seed=seed, compute=compute)
        # channels ordered from least to most important: a policy keeping k drops the first C - k
        self.order = [np.argsort(s, kind="stable") for s in self.scores]
        self._param_owner = {
            id(p): (mod, attr) for mod in model.modules() for attr, p in mod.named_parameters(recurse=False)
        }
        if graph.unwrapped or getattr(model, CUSTOMIZED_PRUNERS_ATTR, None):
            self._check_unknown_layers()

    def _check_unknown_layers(self) -> None:
        """Torch-Pruning guesses how a layer it has no pruner for loses channels (the last non-singleton dim of its
        parameters), and a user's pruner says so itself: prune every group by half once and run the result, so a
        wrong guess is one line here instead of a broken model after a search. The cost model prices such layers as
        the op counter counts them; where the half-pruned model's count differs, that metric is marked inexact
        (``graph.inexact``) and a budget on it is refused."""
        kept = [max(1, g.channels // 2) for g in self.graph.groups]
        example = torch.randn(*self.graph.input_shape)  # the analysed batch: the cost terms are priced at it
        try:
            with torch.no_grad():
                pruned = self.apply(kept)
                pruned(example)
        except Exception as e:  # noqa: BLE001 - any failure of the pruned model is the same finding
            names = ", ".join(self.graph.unwrapped[:3])
            raise UserError(
                f"pruning breaks the model at a layer Torch-Pruning has no pruner for ({names}: "
                f"{type(e).__name__}): {OWN_MODEL_HELP}"
            ) from e
        flops, params = tp.utils.count_ops_and_params(pruned, example)
        analytic, counted = self.graph.terms.totals(np.asarray(kept)), {"flops": float(flops), "params": float(params)}
        self.graph.inexact = [m for m in ("flops", "params") if not np.isclose(analytic[m], counted[m], rtol=1e-9)]

    def removed_channels(self, kept: Sequence[int]) -> list[np.ndarray]:
        """Per group, the units (channels, or heads) a policy keeping ``kept`` removes."""
        return [
            np.sort(order[: g.channels - k]) for g, order, k in zip(self.graph.groups, self.order, kept, strict=True)
        ]

    def apply(self, kept: Sequence[int], *, reconstruct: bool = False, reconstruct_batches: int = 4) -> nn.Module:
        """A pruned copy of the model keeping ``kept[i]`` channels of group ``i``."""
        if len(kept) != len(self.graph.groups):
            raise ValueError(f"{len(kept)} kept counts for {len(self.graph.groups)} groups")
        for g, k in zip(self.graph.groups, kept, strict=True):
            if not 1 <= int(k) <= g.channels:
                raise UserError(f"group {g.name} cannot keep {k} of {g.channels} channels: keep 1 to {g.channels}")
        memo: dict[int, object] = {}
        pruned = copy.deepcopy(self.model, memo)
        # (target in the copy, handler) -> channels to remove, in the original layer's numbering
        removals: dict[tuple[int, object], set[int]] = defaultdict(set)
        targets: dict[tuple[int, object], object] = {}
        for group, recipe, removed in zip(
            self.graph.groups, self.graph.recipes, self.removed_channels(kept), strict=True
        ):
            if len(removed) == 0:
                continue
            drop = set(group.unit_channels(removed).tolist())
            for step in recipe:
                if not isinstance(step.target, (nn.Module, nn.Parameter)) or id(step.target) not in memo:
                    continue  # operation nodes (add, relu, cat) carry no weights
                local = {i for i, r in zip(step.idxs, step.root_idxs, strict=True) if r in drop}
                key = (id(step.target), step.handler, step.pruning_dim)
                removals[key] |= local
                targets[key] = step.target
        name_of = {id(m): n for n, m in self.model.named_modules()}
        out_removed: dict[str, set[int]] = {}
        for key, idxs in removals.items():
            original = targets[key]
            if getattr(key[1], "__name__", "") == "prune_out_channels" and id(original) in name_of:
                out_removed[name_of[id(original)]] = idxs
            target = memo[id(original)]
            pruner = getattr(key[1], "__self__", None)
            if pruner is not None and hasattr(pruner, "pruning_dim"):
                pruner.pruning_dim = key[2]  # as Torch-Pruning's Dependency.__call__ does: the pruner is shared
            if isinstance(original, nn.Parameter):
                module, attr = self._param_owner[id(original)]
                owner = memo[id(module)]
                setattr(owner, attr, key[1](getattr(owner, attr), sorted(idxs)))
            else:
                key[1](target, sorted(idxs))
        sync_vit_widths(pruned)
        pruned.eval()
        if reconstruct:
            if self.data is None:
                raise UserError("--reconstruct needs data to refit layers on: pass --data")
            reconstruct_consumers(
                self.model,
                pruned,
                self.graph,
                kept,
                self.data,
                out_removed,
                reconstruct_batches,
                self.seed,
                compute=self.compute,
            )
        return pruned


def reconstruct_consumers(
    original: nn.Module,
    pruned: nn.Module,
    graph: LayerGraph,
    kept: Sequence[int],
    data: Split,
    out_removed: Mapping[str, set[int]],
    num_batches: int = 4,
    seed: int = 0,
    max_rows: int = 40_000,
    *,
    compute: Compute = CPU,
) -> None:
    """Refit every layer whose inputs lost channels so its outputs match the unpruned layer's (least squares).

    Layers are refitted in forward order, each against the pruned model as refitted so far, so a later layer also
    corrects the error left by earlier ones (He et al., 2017, eq. 6 with the channel choice fixed).
    """
    orig_mods, pruned_mods = dict(original.named_modules()), dict(pruned.named_modules())
    names: list[str] = []
    for g, k in zip(graph.groups, kept, strict=True):
        if k < g.channels:
            names += [c for c in g.consumers if c not in names]
    order = {n: i for i, (n, _) in enumerate(original.named_modules())}
    names.sort(key=order.__getitem__)
    batches = _calibration_batches(data, "reconstruct", num_batches, 64, seed, compute)
    with placed(original, compute), placed(pruned, compute):
        for name in names:
            _refit_layer(
                orig_mods[name], pruned_mods[name], name, batches, original, pruned, out_removed, max_rows, seed
            )


def _refit_layer(src, dst, name, batches, original, pruned, out_removed, max_rows: int, seed: int) -> None:
    """Refit the pruned model's layer ``dst`` so that its outputs on ``batches`` match ``src``'s in the original."""
    if not isinstance(dst, (nn.Conv2d, nn.Linear)) or (isinstance(dst, nn.Conv2d) and dst.groups != 1):
        return
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    h1 = dst.register_forward_hook(lambda m, i, o, xs=xs: xs.append(i[0].detach()))
    h2 = src.register_forward_hook(lambda m, i, o, ys=ys: ys.append(o.detach()))
    try:
        with torch.no_grad():
            for x, _ in batches:
                pruned(x)
                original(x)
    finally:
        h1.remove()
        h2.remove()
    y = torch.cat(ys)
    if out_removed.get(name):  # the layer's own outputs were pruned too: match only the kept ones
        dim = -1 if isinstance(dst, nn.Linear) else 1  # a Linear's features are last (a ViT's are (B, tokens, C))
        keep = sorted(set(range(y.shape[dim])) - out_removed[name])
        y = y.index_select(dim, torch.tensor(keep, device=y.device))
    _refit(dst, torch.cat(xs), y, max_rows, seed)


@torch.no_grad()
def _refit(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, max_rows: int, seed: int) -> None:
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # N, C*k*k, L
        a = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        b = y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
    else:
        a, b = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    if len(a) > max_rows:
        idx = torch.randperm(len(a), generator=torch.Generator().manual_seed(seed))[:max_rows].to(a.device)
        a, b = a[idx], b[idx]
    if layer.bias is not None:
        b = b - layer.bias
    a64, b64 = a.double(), b.double()
    # ridge-regularised normal equations: stable when a kept channel is (nearly) constant
    gram = a64.T @ a64
    gram += torch.eye(len(gram), dtype=gram.dtype, device=gram.device) * 1e-6 * gram.diagonal().mean().clamp_min(1e-12)
    w = torch.linalg.solve(gram, a64.T @ b64).T.float()  # out, in*k*k
    layer.weight.copy_(w.reshape(layer.weight.shape))


def kept_from_mapping(graph: LayerGraph, kept: Mapping[str, int]) -> list[int]:
    return [int(kept.get(g.name, g.channels)) for g in graph.groups]
