"""Per-sample edge losses ``l_{s,t}(n)`` and the gates ``G`` that weight them.

Every function here returns one value per sample (shape ``(N,)``) so that the
gates can act per sample; the trainer takes the mean. All of it stays on the
device with no data-dependent host sync (variable tuple and class counts are
handled with masks, not Python loops).

:data:`ktg.edge_losses.EDGE_LOSSES` is the one table of losses; each row names
its per-sample function here (``ce_edge``, ``kl_edge``, ...), which reads the
batch's :class:`EdgeInputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from ktg.edge_losses import EdgeLoss
    from ktg.graph import Edge


def ce_loss(logits_t: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the target against the label (= KL(one-hot || p_t))."""
    return F.cross_entropy(logits_t.float(), labels, reduction="none")


def kl_loss(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(z_s/T) || softmax(z_t/T))`` per sample.

    The T^2 keeps gradient magnitudes comparable across temperatures (Hinton et al.).
    """
    log_p_s = F.log_softmax(logits_s.float() / temperature, dim=1)
    log_p_t = F.log_softmax(logits_t.float() / temperature, dim=1)
    return temperature**2 * (log_p_s.exp() * (log_p_s - log_p_t)).sum(dim=1)


def _masked_kl(log_p: Tensor, log_q: Tensor, mask: Tensor) -> Tensor:
    """KL(p || q) summed over the last dim where ``mask``.

    Masked entries are replaced by 0 *before* any arithmetic: -inf - -inf would
    be NaN there, and a NaN in an unselected branch still poisons the gradient.
    """
    zero = torch.zeros_like(log_p)
    log_p, log_q = torch.where(mask, log_p, zero), torch.where(mask, log_q, zero)
    return torch.where(mask, log_p.exp() * (log_p - log_q), zero).sum(dim=-1)


def _masked_log_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """log-softmax over the entries where ``mask`` (each row needs one)."""
    return F.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def _distances(emb: Tensor) -> Tensor:
    """Euclidean distances between L2-normalised embeddings, (N, N).

    Expanded as sqrt(2 - 2 cos) and clamped, because cdist's backward is NaN at
    zero distance (the diagonal).
    """
    z = F.normalize(emb.float(), dim=1)
    return (2 - 2 * z @ z.T).clamp_min(1e-12).sqrt()


# -- REFILLED comparison matching (cm) ----------------------------------------

def cm_loss(emb_s: Tensor, emb_t: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Comparison matching on semi-hard tuples mined with the target's embedding.

    A tuple is (anchor a, positive p of a's class, every impostor n of another
    class with d_t(a, n) > d_t(a, p)); tuples with no impostor carry no
    comparison and are skipped. For node u the tuple's distribution is
    softmax([-d_u(a,p), -d_u(a,n_1), ...] / tau_u) with tau_source = T and
    tau_target = 1; the loss is KL(p_source || p_target), averaged over the
    tuples each sample anchors (0 if none).
    """
    n = labels.shape[0]
    d_s, d_t = _distances(emb_s), _distances(emb_t)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=labels.device)
    positive = same & ~eye                                          # (a, p)
    # impostor[a, p, m]: m is of another class and farther from a than p (target's view).
    impostor = (~same)[:, None, :] & (d_t[:, None, :] > d_t[:, :, None].detach())
    tuple_ok = positive & impostor.any(dim=2)                       # (a, p)
    # Candidate set of tuple (a, p): p itself plus its impostors, as a mask over m.
    members = impostor | (eye[None, :, :] & positive[:, :, None])   # (a, p, m)
    # Rows of non-tuples get a dummy full mask so their (discarded) softmax stays finite.
    members = members | ~tuple_ok[:, :, None]
    scores_s = (-d_s)[:, None, :].expand(n, n, n) / temperature
    scores_t = (-d_t)[:, None, :].expand(n, n, n)
    kl = _masked_kl(_masked_log_softmax(scores_s, members), _masked_log_softmax(scores_t, members), members)
    kl = torch.where(tuple_ok, kl, torch.zeros_like(kl))
    count = tuple_ok.sum(dim=1)
    return kl.sum(dim=1) / count.clamp_min(1)


# -- REFILLED local knowledge distillation (lkd) ------------------------------

@dataclass(frozen=True)
class LocalPosterior:
    """The source's nearest-centre view of a batch, over the classes present in it."""

    log_q: Tensor       # (N, C) log posterior, -inf outside the batch's classes
    present: Tensor     # (C,) bool: class k occurs in the batch
    prediction: Tensor  # (N,) the source's local nearest-centre class


def local_posterior(emb_s: Tensor, labels: Tensor, num_classes: int, temperature: float) -> LocalPosterior:
    """``q_n = softmax_k(phi_s(x_n) . c_k / |c_k| / tau)`` over the classes k in the batch.

    phi_s is L2-normalised (as for ``cm``), so the score is the cosine similarity
    of REFILLED's embedding-induced classifier (TPAMI Eq. 7).
    """
    phi = F.normalize(emb_s.float(), dim=1)
    one_hot = F.one_hot(labels, num_classes).float()                # (N, C)
    counts = one_hot.sum(dim=0)
    present = counts > 0
    centres = (one_hot.T @ phi) / counts.clamp_min(1)[:, None]      # (C, D)
    scores = phi @ F.normalize(centres, dim=1).T / temperature      # (N, C)
    mask = present[None, :].expand_as(scores)
    log_q = _masked_log_softmax(scores, mask)
    return LocalPosterior(log_q, present, log_q.argmax(dim=1))


def lkd_loss(local: LocalPosterior, logits_t: Tensor, temperature: float) -> Tensor:
    """``lambda_n * KL(q_n || r_n)`` with ``r_n = softmax_{k in S}(z_t[k] / tau)``.

    lambda_n = 2 * sigmoid(-CE(q_n, argmax q_n)) (TPAMI Eq. 9), detached: it
    weights samples the source is confident about, it is not trained.
    """
    mask = local.present[None, :].expand_as(local.log_q)
    log_r = _masked_log_softmax(logits_t.float() / temperature, mask)
    confidence = local.log_q.max(dim=1).values                      # = -CE(q_n, argmax q_n)
    instance_weight = 2 * torch.sigmoid(confidence).detach()
    return instance_weight * _masked_kl(local.log_q, log_r, mask)


# -- one edge: its inputs, and the functions the table of losses names ---------

@dataclass(frozen=True)
class EdgeInputs:
    """What an edge loss may read of one batch; the source's outputs are detached."""

    labels: Tensor                   # (N,) the run's labels
    target_logits: Tensor            # (N, C)
    target_embedding: Tensor         # (N, D)
    temperature: float               # the edge's T (tau for cm and lkd)
    source_logits: Tensor | None     # None on an edge from the labels
    source_embedding: Tensor | None
    local: LocalPosterior | None     # only when the loss or its correct gate needs it


def source_correct(loss: EdgeLoss, inputs: EdgeInputs) -> Tensor | None:
    """The source-correct mask of the ``correct`` gate (None: the gate passes everything)."""
    if loss.correct_mask == "logits":
        assert inputs.source_logits is not None
        return inputs.source_logits.argmax(dim=1) == inputs.labels
    if loss.correct_mask == "local posterior":
        assert inputs.local is not None
        return inputs.local.prediction == inputs.labels
    return None


def per_sample(loss: EdgeLoss, inputs: EdgeInputs) -> Tensor:
    """The per-sample values of ``loss``: the function of this module its table row names."""
    function: Callable[[EdgeInputs], Tensor] = globals()[loss.function]
    return function(inputs)


def ce_edge(x: EdgeInputs) -> Tensor:
    return ce_loss(x.target_logits, x.labels)


def kl_edge(x: EdgeInputs) -> Tensor:
    assert x.source_logits is not None
    return kl_loss(x.source_logits, x.target_logits, x.temperature)


def cm_edge(x: EdgeInputs) -> Tensor:
    assert x.source_embedding is not None
    return cm_loss(x.source_embedding, x.target_embedding, x.labels, x.temperature)


def lkd_edge(x: EdgeInputs) -> Tensor:
    assert x.local is not None
    return lkd_loss(x.local, x.target_logits, x.temperature)


def edge_inputs(loss: EdgeLoss, gate_kind: str, *, labels: Tensor, target: tuple[Tensor, Tensor],
                source: tuple[Tensor, Tensor] | None, temperature: float, num_classes: int) -> EdgeInputs:
    """The inputs of one edge: ``target`` and ``source`` are a node's (embedding, logits),
    ``source`` None on an edge from the labels. The source is detached here, and its
    local posterior is computed only when the loss or its gate reads it."""
    emb_s = logits_s = local = None
    if source is not None:
        emb_s, logits_s = source[0].detach(), source[1].detach()
        if loss.uses_local(gate_kind):
            local = local_posterior(emb_s, labels, num_classes, temperature)
    return EdgeInputs(labels, target[1], target[0], temperature, logits_s, emb_s, local)


# -- gates ---------------------------------------------------------------------

def gate(values: Tensor, kind: str, *, progress: float, correct: Tensor | None) -> Tensor:
    """Apply gate ``kind`` per sample.

    ``progress`` is k / k_end (iterations done over the run's total) for the
    linear gate; ``correct`` is the source's top-1 == label mask for the correct
    gate (None on a label edge, where 'correct' equals 'through').
    """
    if kind == "through":
        return values
    if kind == "cutoff":
        return torch.zeros_like(values)
    if kind == "linear":
        return values * progress
    if kind == "correct":
        return values if correct is None else torch.where(correct, values, torch.zeros_like(values))
    raise ValueError(f"unknown gate {kind!r}")


# -- one node: the sum over its edges ------------------------------------------

def node_loss(edges: Sequence[Edge], target: int, outputs: Mapping[int, tuple[Tensor, Tensor]], labels: Tensor, *,
              progress: float, num_classes: int) -> Tensor:
    """``L_t = mean_n sum_{edges s->t} w * G(l_{s,t}(n))``, every source detached.

    ``outputs`` holds each node's (embedding, logits) on the batch; ``progress`` is
    k / k_end for the linear gate. The edge table is ``ktg.edge_losses.EDGE_LOSSES``.
    """
    from ktg.edge_losses import EDGE_LOSSES
    from ktg.graph import LABEL_NODE

    terms = []
    for e in edges:
        loss = EDGE_LOSSES[e.loss]
        inputs = edge_inputs(loss, e.gate, labels=labels, target=outputs[target],
                             source=None if e.source == LABEL_NODE else outputs[e.source],
                             temperature=e.temperature, num_classes=num_classes)
        correct = source_correct(loss, inputs) if e.gate == "correct" else None
        terms.append(e.weight * gate(per_sample(loss, inputs), e.gate, progress=progress, correct=correct))
    return torch.stack(terms).sum(dim=0).mean()
