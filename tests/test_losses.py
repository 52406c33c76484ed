"""Edge losses and gates against the formulas of DESIGN.md, computed independently.

Every expected value here is built sample by sample (tuple by tuple, class by
class) with Python loops and scalar math / torch scalar ops in float64 on small
hand-made tensors; nothing calls the library's helpers to compute an expectation.
"""

from __future__ import annotations

import math

import pytest
import torch

from ktg.edge_losses import EDGE_LOSSES
from ktg.graph import LOSSES
from ktg.losses import (
    ce_loss,
    cm_loss,
    edge_inputs,
    gate,
    kl_loss,
    lkd_loss,
    local_posterior,
    per_sample,
    source_correct,
)

ATOL = 1e-5  # the library computes in float32, the references in float64


def _softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def _polar(degrees: float, radius: float) -> list[float]:
    return [radius * math.cos(math.radians(degrees)), radius * math.sin(math.radians(degrees))]


# --- ce and kl ------------------------------------------------------------------

LOGITS_T = [[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4], [-3.0, 4.0, 1.0, -2.0]]
LOGITS_S = [[1.0, 0.0, -1.0, 2.0], [3.0, -2.0, 0.0, 0.5], [0.0, 0.0, 5.0, -1.0]]


def test_ce_loss_is_per_sample_negative_log_likelihood() -> None:
    labels = [0, 3, 2]
    expected = [-math.log(_softmax(row)[y]) for row, y in zip(LOGITS_T, labels, strict=True)]
    got = ce_loss(torch.tensor(LOGITS_T), torch.tensor(labels))
    assert got.shape == (3,)
    assert got.tolist() == pytest.approx(expected, abs=ATOL)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_loss_is_t_squared_kl_of_softened_distributions(temperature: float) -> None:
    expected = []
    for zs, zt in zip(LOGITS_S, LOGITS_T, strict=True):
        p_s = _softmax([v / temperature for v in zs])
        p_t = _softmax([v / temperature for v in zt])
        expected.append(temperature**2 * _kl(p_s, p_t))
    got = kl_loss(torch.tensor(LOGITS_S), torch.tensor(LOGITS_T), temperature)
    assert got.shape == (3,)
    assert got.tolist() == pytest.approx(expected, abs=ATOL)
    if temperature != 1.0:  # the T^2 factor is there: without it the values are 16x smaller
        assert got.sum().item() > 2 * sum(expected) / temperature**2


def test_kl_loss_is_zero_for_identical_logits() -> None:
    z = torch.tensor(LOGITS_T)
    assert kl_loss(z, z.clone(), 2.0).tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)


# --- cm: comparison matching ----------------------------------------------------

def _unit(e: torch.Tensor) -> torch.Tensor:
    return e / torch.sqrt((e * e).sum())


def _dist(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(((u - v) ** 2).sum())


def _tuples(emb_t: torch.Tensor, labels: list[int]) -> dict[int, list[tuple[int, list[int]]]]:
    """anchor -> [(positive, impostors)], mined with the target's embedding; impostor-free tuples dropped."""
    z = [_unit(e) for e in emb_t.detach().double()]
    n = len(labels)
    out: dict[int, list[tuple[int, list[int]]]] = {a: [] for a in range(n)}
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            d_ap = _dist(z[a], z[p]).item()
            impostors = [m for m in range(n) if labels[m] != labels[a] and _dist(z[a], z[m]).item() > d_ap]
            if impostors:
                out[a].append((p, impostors))
    return out


def _cm_reference(emb_s: torch.Tensor, emb_t: torch.Tensor, labels: list[int], temperature: float) -> list[torch.Tensor]:
    """Per-sample cm loss with torch scalar ops (differentiable w.r.t. both embeddings)."""
    zs = [_unit(e) for e in emb_s]
    zt = [_unit(e) for e in emb_t]
    losses = []
    for a, tuples in _tuples(emb_t, labels).items():
        per_tuple = []
        for p, impostors in tuples:
            members = [p, *impostors]
            log_p_s = torch.log_softmax(torch.stack([-_dist(zs[a], zs[m]) for m in members]) / temperature, dim=0)
            log_p_t = torch.log_softmax(torch.stack([-_dist(zt[a], zt[m]) for m in members]) / 1.0, dim=0)
            per_tuple.append((log_p_s.exp() * (log_p_s - log_p_t)).sum())
        losses.append(torch.stack(per_tuple).mean() if per_tuple else torch.zeros((), dtype=emb_t.dtype))
    return losses


# A hand-made batch of 2-D embeddings (angle in degrees, length: lengths differ so
# that the L2 normalisation matters). Class 0 has a far-away member (sample 2) so
# that some (anchor, positive) pairs have no impostor, and class 3 is a singleton.
CM_LABELS = [0, 0, 0, 1, 1, 2, 2, 3]
CM_TARGET = [_polar(d, r) for d, r in [(0, 2.0), (23, 0.5), (171, 1.3), (108, 3.0), (137, 0.7),
                                       (-97, 1.1), (-52, 2.5), (-158, 0.9)]]
CM_SOURCE = [_polar(d, r) for d, r in [(10, 1.0), (60, 2.0), (150, 0.4), (90, 1.5), (175, 1.0),
                                       (-120, 3.0), (-30, 0.8), (-170, 1.7)]]


def test_cm_batch_exercises_the_edge_cases() -> None:
    """The hand-made batch has what the cm tests rely on (guards the fixture itself)."""
    tuples = _tuples(torch.tensor(CM_TARGET), CM_LABELS)
    assert tuples[7] == []                        # singleton class: no positive at all
    assert tuples[2] == []                        # has positives, but never an impostor
    assert [p for p, _ in tuples[0]] == [1]       # (0, 2) is skipped, (0, 1) kept
    assert any(len(t) >= 2 for t in tuples.values())
    assert any(len(imp) >= 2 for t in tuples.values() for _, imp in t)
    # No near-ties between d_t(a, p) and d_t(a, m): float32 vs float64 mines the same tuples.
    z = [_unit(e) for e in torch.tensor(CM_TARGET, dtype=torch.float64)]
    for a in range(8):
        for p in range(8):
            for m in range(8):
                if len({a, p, m}) == 3:
                    assert abs(_dist(z[a], z[m]) - _dist(z[a], z[p])).item() > 1e-3


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_cm_loss_matches_brute_force_tuples(temperature: float) -> None:
    emb_s, emb_t = torch.tensor(CM_SOURCE), torch.tensor(CM_TARGET)
    expected = [v.item() for v in _cm_reference(emb_s.double(), emb_t.double(), CM_LABELS, temperature)]
    got = cm_loss(emb_s, emb_t, torch.tensor(CM_LABELS), temperature)
    assert got.shape == (8,)
    assert got.tolist() == pytest.approx(expected, abs=ATOL)
    assert got[7].item() == 0.0 and got[2].item() == 0.0   # anchors with no tuple
    assert all(v > 1e-4 for i, v in enumerate(expected) if i not in (2, 7))  # the rest is not trivially 0


def test_cm_loss_is_zero_when_source_and_target_agree_at_unit_temperature() -> None:
    emb = torch.tensor(CM_TARGET)
    got = cm_loss(emb * 3.0, emb, torch.tensor(CM_LABELS), 1.0)  # same directions, other lengths
    assert got.tolist() == pytest.approx([0.0] * 8, abs=1e-6)


def test_cm_loss_gradient_wrt_target_matches_brute_force() -> None:
    emb_s = torch.tensor(CM_SOURCE)
    emb_t = torch.tensor(CM_TARGET, requires_grad=True)
    weights = torch.arange(1.0, 9.0)  # a per-sample weighting so every row's gradient counts
    (cm_loss(emb_s, emb_t, torch.tensor(CM_LABELS), 2.0) * weights).sum().backward()
    ref_t = torch.tensor(CM_TARGET, dtype=torch.float64, requires_grad=True)
    ref = _cm_reference(emb_s.double(), ref_t, CM_LABELS, 2.0)
    sum(w * v for w, v in zip(weights.tolist(), ref, strict=True)).backward()
    assert emb_t.grad is not None and ref_t.grad is not None
    assert torch.allclose(emb_t.grad.double(), ref_t.grad, atol=1e-4)
    assert ref_t.grad.abs().sum() > 1e-3


def test_cm_loss_gradient_is_finite_with_duplicate_embeddings() -> None:
    # Rows 0/1 are the same point of one class, rows 2/3 the same point of two
    # classes, and row 4 equals row 5 up to length: several zero distances.
    emb_t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, -1.0], [-2.0, -2.0]],
                         requires_grad=True)
    emb_s = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, -1.0], [0.3, 0.9], [-1.0, 0.2], [-1.0, 0.2]],
                         requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 1, 1])
    loss = cm_loss(emb_s, emb_t, labels, 2.0)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert emb_t.grad is not None and torch.isfinite(emb_t.grad).all()
    assert emb_s.grad is not None and torch.isfinite(emb_s.grad).all()


# --- lkd: local knowledge distillation ---------------------------------------------

LKD_NUM_CLASSES = 5
LKD_LABELS = [3, 0, 3, 1, 0, 3]  # classes 2 and 4 are absent from the batch
LKD_EMB = [[1.0, 0.2, -0.5], [0.1, 2.0, 0.3], [0.8, -0.1, 0.2], [-1.0, 0.5, 1.5], [0.3, 1.1, -0.4],
           [0.2, 0.3, 0.9]]
LKD_LOGITS = [[0.5, -1.0, 2.0, 0.3, 0.0], [1.5, 0.2, -0.3, 0.0, 3.0], [0.0, 0.1, 0.2, 0.3, 0.4],
              [-2.0, 1.0, 0.0, 0.5, -1.0], [0.7, 0.7, 0.7, -0.2, 0.1], [1.0, -1.0, 4.0, 2.0, 0.0]]


def _lkd_reference(emb_s: torch.Tensor, logits_t: torch.Tensor, labels: list[int], tau: float):
    """(q per sample as {class: prob}, lambda per sample as floats, loss per sample as torch scalars)."""
    present = sorted(set(labels))
    phi = [_unit(e) for e in emb_s]
    centres = {k: torch.stack([phi[n] for n in range(len(labels)) if labels[n] == k]).mean(dim=0) for k in present}
    qs, lambdas, losses = [], [], []
    for n in range(len(labels)):
        q = torch.softmax(torch.stack([(phi[n] * _unit(centres[k])).sum() / tau for k in present]), dim=0)
        r = torch.softmax(torch.stack([logits_t[n][k] / tau for k in present]), dim=0)
        q_max = max(q.tolist())
        cross_entropy = -math.log(q_max)                      # CE(q_n, argmax q_n)
        lam = 2.0 / (1.0 + math.exp(cross_entropy))           # 2 * sigmoid(-CE), a constant
        qs.append(dict(zip(present, q.tolist(), strict=True)))
        lambdas.append(lam)
        losses.append(lam * (q * (q.log() - r.log())).sum())
    return qs, lambdas, losses


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_local_posterior_matches_brute_force(tau: float) -> None:
    emb = torch.tensor(LKD_EMB)
    local = local_posterior(emb, torch.tensor(LKD_LABELS), LKD_NUM_CLASSES, tau)
    qs, _, _ = _lkd_reference(emb.double(), torch.tensor(LKD_LOGITS, dtype=torch.float64), LKD_LABELS, tau)
    assert local.present.tolist() == [True, True, False, True, False]
    q = local.log_q.exp()
    for n, expected in enumerate(qs):
        row = [expected.get(k, 0.0) for k in range(LKD_NUM_CLASSES)]
        assert q[n].tolist() == pytest.approx(row, abs=ATOL)
    # The prediction is the nearest (normalised) class centre among the classes present.
    phi = [_unit(e) for e in emb.double()]
    for n in range(len(LKD_LABELS)):
        distances = {}
        for k in (0, 1, 3):
            centre = torch.stack([phi[m] for m in range(len(LKD_LABELS)) if LKD_LABELS[m] == k]).mean(dim=0)
            distances[k] = _dist(phi[n], _unit(centre)).item()
        assert local.prediction[n].item() == min(distances, key=distances.__getitem__)
    # The batch is not trivially self-consistent: some sample is nearer another class's centre.
    assert local.prediction.tolist() != LKD_LABELS


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_lkd_loss_matches_brute_force(tau: float) -> None:
    emb, logits = torch.tensor(LKD_EMB), torch.tensor(LKD_LOGITS)
    local = local_posterior(emb, torch.tensor(LKD_LABELS), LKD_NUM_CLASSES, tau)
    got = lkd_loss(local, logits, tau)
    _, lambdas, losses = _lkd_reference(emb.double(), logits.double(), LKD_LABELS, tau)
    assert got.shape == (6,)
    assert got.tolist() == pytest.approx([v.item() for v in losses], abs=ATOL)
    assert all(0.0 < lam <= 1.0 for lam in lambdas) and len({round(lam, 6) for lam in lambdas}) > 1


def test_lkd_gradients_treat_the_instance_weight_as_a_constant() -> None:
    """d lkd / d logits_t and d lkd / d emb_s equal those of lambda_const * KL(q || r)."""
    tau = 2.0
    emb = torch.tensor(LKD_EMB, requires_grad=True)
    logits = torch.tensor(LKD_LOGITS, requires_grad=True)
    weights = torch.arange(1.0, 7.0)
    local = local_posterior(emb, torch.tensor(LKD_LABELS), LKD_NUM_CLASSES, tau)
    (lkd_loss(local, logits, tau) * weights).sum().backward()

    ref_emb = torch.tensor(LKD_EMB, dtype=torch.float64, requires_grad=True)
    ref_logits = torch.tensor(LKD_LOGITS, dtype=torch.float64, requires_grad=True)
    _, _, losses = _lkd_reference(ref_emb, ref_logits, LKD_LABELS, tau)  # lambda enters as a float
    sum(w * v for w, v in zip(weights.tolist(), losses, strict=True)).backward()

    assert logits.grad is not None and ref_logits.grad is not None
    assert torch.allclose(logits.grad.double(), ref_logits.grad, atol=1e-5)
    assert logits.grad[:, [2, 4]].abs().max().item() == 0.0  # absent classes get no gradient
    assert emb.grad is not None and ref_emb.grad is not None
    assert torch.allclose(emb.grad.double(), ref_emb.grad, atol=1e-5)


# --- the table of losses: dispatch, needs, the correct gate's mask --------------------

def test_the_graph_file_knows_exactly_the_losses_of_the_table() -> None:
    assert LOSSES == tuple(EDGE_LOSSES) == ("ce", "kl", "cm", "lkd")


def _lkd_batch_inputs(loss: str, gate_kind: str, tau: float = 2.0):
    emb, logits = torch.tensor(LKD_EMB), torch.tensor(LKD_LOGITS)
    source = (emb.flip(0), logits.flip(0))  # another node's view of the same batch
    return edge_inputs(EDGE_LOSSES[loss], gate_kind, labels=torch.tensor(LKD_LABELS), target=(emb, logits),
                       source=None if loss == "ce" else source, temperature=tau, num_classes=LKD_NUM_CLASSES)


@pytest.mark.parametrize("loss", ["ce", "kl", "cm", "lkd"])
def test_the_table_dispatches_to_the_loss_function(loss: str) -> None:
    tau, labels = 2.0, torch.tensor(LKD_LABELS)
    emb, logits = torch.tensor(LKD_EMB), torch.tensor(LKD_LOGITS)
    emb_s, logits_s = emb.flip(0), logits.flip(0)
    expected = {
        "ce": lambda: ce_loss(logits, labels),
        "kl": lambda: kl_loss(logits_s, logits, tau),
        "cm": lambda: cm_loss(emb_s, emb, labels, tau),
        "lkd": lambda: lkd_loss(local_posterior(emb_s, labels, LKD_NUM_CLASSES, tau), logits, tau),
    }[loss]()
    got = per_sample(EDGE_LOSSES[loss], _lkd_batch_inputs(loss, "through", tau))
    assert torch.equal(got, expected)


@pytest.mark.parametrize(("loss", "gate_kind", "computed"), [
    ("ce", "correct", False), ("kl", "correct", False), ("kl", "through", False),
    ("cm", "through", False), ("cm", "linear", False), ("cm", "correct", True),
    ("lkd", "through", True), ("lkd", "correct", True),
])
def test_the_local_posterior_is_computed_only_when_read(loss: str, gate_kind: str, computed: bool) -> None:
    assert (_lkd_batch_inputs(loss, gate_kind).local is not None) == computed


def test_the_correct_gate_asks_each_loss_its_own_question() -> None:
    """ce: no mask (correct = through); kl: the source's top-1 logit; cm and lkd: its local
    nearest-centre class."""
    labels = torch.tensor(LKD_LABELS)
    assert source_correct(EDGE_LOSSES["ce"], _lkd_batch_inputs("ce", "correct")) is None
    kl = _lkd_batch_inputs("kl", "correct")
    assert kl.source_logits is not None
    top1 = [max(range(LKD_NUM_CLASSES), key=row.__getitem__) for row in kl.source_logits.tolist()]
    kl_mask = source_correct(EDGE_LOSSES["kl"], kl)
    assert kl_mask is not None and kl_mask.tolist() == [p == y for p, y in zip(top1, LKD_LABELS, strict=True)]
    for loss in ("cm", "lkd"):
        inputs = _lkd_batch_inputs(loss, "correct")
        local = local_posterior(torch.tensor(LKD_EMB).flip(0), labels, LKD_NUM_CLASSES, 2.0)
        mask = source_correct(EDGE_LOSSES[loss], inputs)
        assert mask is not None and mask.tolist() == (local.prediction == labels).tolist()
    assert kl_mask.tolist() != mask.tolist()  # the two rules differ on this batch


# --- gates ------------------------------------------------------------------------

VALUES = [0.5, 2.0, 1.5, 4.0]


def test_gate_through_passes_values_unchanged() -> None:
    assert gate(torch.tensor(VALUES), "through", progress=0.3, correct=None).tolist() == VALUES


def test_gate_cutoff_gives_zeros() -> None:
    out = gate(torch.tensor(VALUES), "cutoff", progress=0.3, correct=torch.tensor([True] * 4))
    assert out.tolist() == [0.0] * 4


@pytest.mark.parametrize("progress", [0.0, 0.25, 1.0])
def test_gate_linear_scales_by_progress(progress: float) -> None:
    out = gate(torch.tensor(VALUES), "linear", progress=progress, correct=None)
    assert out.tolist() == pytest.approx([v * progress for v in VALUES])


def test_gate_correct_masks_samples_the_source_gets_wrong() -> None:
    correct = [True, False, False, True]
    out = gate(torch.tensor(VALUES), "correct", progress=0.5, correct=torch.tensor(correct))
    assert out.tolist() == [v if ok else 0.0 for v, ok in zip(VALUES, correct, strict=True)]
    # Without a source prediction (the label edge) 'correct' is 'through'.
    assert gate(torch.tensor(VALUES), "correct", progress=0.5, correct=None).tolist() == VALUES


def test_gate_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="sigmoid"):
        gate(torch.tensor(VALUES), "sigmoid", progress=0.5, correct=None)
