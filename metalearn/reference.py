"""Plain references for every algorithm's meta-gradient: a Python loop over tasks, plain
``torch.autograd.grad`` (``create_graph`` for second order), batch norm written with mean/var
ops. Slow and obvious on purpose; tests hold the fast paths to these.

Each returns ``{parameter name: meta-gradient}`` with the names of ``learner.named_parameters()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metalearn.episodes import Episodes, _map
from metalearn.learner import MetaLearner


def _tasks(batch: Episodes):
    for i in range(batch.tasks):
        one = lambda t: t[i]  # noqa: E731
        yield _map(batch.support_x, one), batch.support_y[i], _map(batch.query_x, one), batch.query_y[i]


def _loss(out: Tensor, y: Tensor, regression: bool) -> Tensor:
    if regression:
        return ((out[:, 0] - y) ** 2).mean()
    return -torch.log_softmax(out, dim=1).gather(1, y[:, None]).mean()


def _forward(learner, params, x):
    return learner.net.functional(params, x, plain_norm=True)


def maml_gradient(learner: MetaLearner, batch: Episodes) -> dict[str, Tensor]:
    """MAML, first-order MAML and Meta-SGD: mean over tasks of d(query loss after adaptation)/d(theta, lrs)."""
    names = [k for k, _ in learner.net.named_parameters()]
    theta = [p for _, p in learner.net.named_parameters()]
    lrs = ([learner.inner_lrs[k.replace(".", "__")] for k in names] if learner.inner_lrs is not None
           else [learner.inner_lr] * len(names))
    regression = learner.n_way is None
    wrt = theta + (lrs if learner.inner_lrs is not None else [])
    total = [torch.zeros_like(w) for w in wrt]
    for sx, sy, qx, qy in _tasks(batch):
        fast = list(theta)
        for _ in range(learner.inner_steps):
            loss = _loss(_forward(learner, dict(zip(names, fast)), sx), sy, regression)
            grads = torch.autograd.grad(loss, fast, create_graph=not learner.first_order)
            fast = [w - lr * g for w, lr, g in zip(fast, lrs, grads)]
        query = _loss(_forward(learner, dict(zip(names, fast)), qx), qy, regression)
        for acc, g in zip(total, torch.autograd.grad(query, wrt)):
            acc += g / batch.tasks
    out = {f"net.{k}": g for k, g in zip(names, total)}
    if learner.inner_lrs is not None:
        out.update({f"inner_lrs.{k.replace('.', '__')}": g for k, g in zip(names, total[len(names):])})
    return out


def reptile_gradient(learner: MetaLearner, batch: Episodes) -> dict[str, Tensor]:
    """Reptile: theta minus the mean over tasks of theta after SGD on the support set."""
    names = [k for k, _ in learner.net.named_parameters()]
    theta = [p.detach() for _, p in learner.net.named_parameters()]
    total = [torch.zeros_like(w) for w in theta]
    for sx, sy, _, _ in _tasks(batch):
        fast = [w.clone().requires_grad_() for w in theta]
        for _ in range(learner.inner_steps):
            loss = _loss(_forward(learner, dict(zip(names, fast)), sx), sy, learner.n_way is None)
            grads = torch.autograd.grad(loss, fast)
            fast = [(w - learner.inner_lr * g).detach().requires_grad_() for w, g in zip(fast, grads)]
        for acc, w in zip(total, fast):
            acc += w.detach() / batch.tasks
    return {f"net.{k}": w - a for k, w, a in zip(names, theta, total)}


def _metric_gradient(learner: MetaLearner, batch: Episodes, logits) -> dict[str, Tensor]:
    names = [k for k, _ in learner.net.named_parameters()]
    theta = [p for _, p in learner.net.named_parameters()]
    total = [torch.zeros_like(w) for w in theta]
    for sx, sy, qx, qy in _tasks(batch):
        params = dict(zip(names, theta))
        z_support, z_query = _forward(learner, params, sx), _forward(learner, params, qx)
        loss = _loss(logits(z_support, sy, z_query, batch.n_way), qy, False)
        for acc, g in zip(total, torch.autograd.grad(loss, theta)):
            acc += g / batch.tasks
    return {k: g for k, g in zip(names, total)}


def protonet_gradient(learner: MetaLearner, batch: Episodes) -> dict[str, Tensor]:
    def logits(z_support, sy, z_query, n_way):
        protos = torch.stack([z_support[sy == c].mean(0) for c in range(n_way)])
        if learner.distance == "cosine":
            return learner.scale * F.cosine_similarity(z_query[:, None, :], protos[None, :, :], dim=-1, eps=1e-12)
        return -torch.stack([((z_query - p) ** 2).sum(1) for p in protos], dim=1)

    return {f"net.{k}": g for k, g in _metric_gradient(learner, batch, logits).items()}


def matchingnet_gradient(learner: MetaLearner, batch: Episodes) -> dict[str, Tensor]:
    def logits(z_support, sy, z_query, n_way):
        sims = learner.scale * F.cosine_similarity(z_query[:, None, :], z_support[None, :, :], dim=-1, eps=1e-12)
        attention = torch.softmax(sims, dim=1)
        return torch.log(torch.stack([attention[:, sy == c].sum(1) for c in range(n_way)], dim=1))

    return {f"net.{k}": g for k, g in _metric_gradient(learner, batch, logits).items()}


REFERENCES = {"maml": maml_gradient, "fomaml": maml_gradient, "reptile": reptile_gradient,
              "protonet": protonet_gradient, "matchingnet": matchingnet_gradient}


def reference_gradient(learner: MetaLearner, batch: Episodes) -> dict[str, Tensor]:
    """The reference meta-gradient for ``learner`` (dispatch on its name)."""
    return REFERENCES[learner.name](learner, batch)
