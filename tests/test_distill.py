"""Distillation: the KD loss against a direct KL, the top-k teacher cache, training with each
objective."""

import pytest
import torch

from helpers import evaluate_loss, prune_randomly, random_windows, tiny_model
from surgeon.distill import Objective, kd_loss, kept_mass, teacher_topk
from surgeon.errors import SurgeonError
from surgeon.lora import LoraSettings, lora_train


def direct_kl(student, teacher, keep, t):
    """t^2 KL(q || p) position by position with plain loops: q = the teacher's softmax at t
    restricted to the `keep` ids and renormalised, p = the student's softmax at t."""
    total = 0.0
    positions = student.reshape(-1, student.shape[-1])
    for s, z, ids in zip(positions, teacher.reshape(-1, teacher.shape[-1]),
                         keep.reshape(-1, keep.shape[-1])):
        p = torch.exp(s.double() / t) / torch.exp(s.double() / t).sum()
        w = torch.exp(z.double()[ids] / t)
        q = w / w.sum()
        total += sum(q[j] * torch.log(q[j] / p[i]) for j, i in enumerate(ids))
    return t * t * total / len(positions)


@pytest.mark.parametrize("t", [1.0, 2.5])
@pytest.mark.parametrize("k", [3, 11])
def test_kd_loss_is_the_kl_to_the_truncated_teacher(t, k):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=g), 3 * torch.randn(2, 5, 11, generator=g)
    top = teacher.topk(k, dim=-1)
    loss = kd_loss(student, top.values, top.indices, t)
    assert loss.item() == pytest.approx(direct_kl(student, teacher, top.indices, t).item(),
                                        rel=1e-5)
    if k == 11:  # the whole vocabulary: the usual KL(softmax(z/t) || softmax(s/t))
        ref = torch.nn.functional.kl_div(torch.log_softmax(student / t, -1),
                                         torch.log_softmax(teacher / t, -1), log_target=True,
                                         reduction="none").sum(-1).mean() * t * t
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert kd_loss(teacher, top.values, top.indices, t).item() < loss.item()


def test_teacher_cache_reproduces_the_distribution_on_its_top_k():
    model = tiny_model("llama")
    windows = random_windows(3, 12)
    cache = teacher_topk(model, windows, k=20, batch_size=2, progress=False)
    assert cache["logits"].shape == (3, 11, 20) and cache["indices"].dtype == torch.int32
    with torch.no_grad():
        probs = torch.softmax(model(windows).logits[:, :-1].double(), dim=-1)
    cached = (cache["logits"].double() - cache["logsumexp"].double()[..., None]).exp()
    full_at_ids = probs.gather(-1, cache["indices"].long())
    torch.testing.assert_close(cached, full_at_ids, rtol=1e-4, atol=1e-7)
    # they are the 20 most likely tokens, and the kept mass is their total probability
    assert torch.all(full_at_ids[..., -1:] >= probs.topk(20, dim=-1).values[..., -1:] - 1e-9)
    torch.testing.assert_close(kept_mass(cache).double(), full_at_ids.sum(-1), rtol=1e-4,
                               atol=1e-6)
    assert torch.all(kept_mass(cache) < 1)
    # renormalised on the top k, the cache gives the teacher's conditional distribution there
    torch.testing.assert_close(torch.softmax(cache["logits"].double(), -1),
                               full_at_ids / full_at_ids.sum(-1, keepdim=True), rtol=1e-4,
                               atol=1e-7)


@pytest.mark.parametrize("kind", ["lm", "kd", "mix"])
def test_each_objective_lowers_its_training_loss(kind):
    teacher = tiny_model("llama")
    windows = random_windows(4, 24, seed=1)
    cache = teacher_topk(teacher, windows, k=320, progress=False)  # all: a random
    # tiny model is near uniform, and its top-k truncation is a target LoRA cannot reach
    student = tiny_model("llama")
    masks = prune_randomly(student)
    objective = Objective(kind, kd_weight=0.5, temperature=1.0,
                          teacher=None if kind == "lm" else cache)
    losses = lora_train(student, windows, masks, LoraSettings(rank=4, steps=30, lr=1e-2),
                        progress=False, objective=objective)
    assert len(losses) == 30
    assert sum(losses[-5:]) < 0.97 * sum(losses[:5])
    for name, m in masks.items():
        assert torch.all(student.get_submodule(name).weight[m] == 0), name


def test_distillation_moves_the_student_towards_the_teacher():
    teacher = tiny_model("llama")
    windows = random_windows(4, 24, seed=1)
    cache = teacher_topk(teacher, windows, k=320, progress=False)  # the whole vocabulary
    student = tiny_model("llama")
    masks = prune_randomly(student, 0.3)

    def kl_to_teacher():
        with torch.no_grad():
            return kd_loss(student(windows).logits[:, :-1], cache["logits"], cache["indices"])

    before = kl_to_teacher()
    lora_train(student, windows, masks, LoraSettings(rank=4, steps=30, lr=1e-2),
               progress=False, objective=Objective("kd", teacher=cache))
    assert kl_to_teacher() < 0.5 * before
    assert evaluate_loss(student, windows) > 0


def test_objective_errors():
    with pytest.raises(SurgeonError, match="needs the teacher"):
        Objective("kd")
    with pytest.raises(SurgeonError, match="unknown recovery objective"):
        Objective("l2")
    cache = teacher_topk(tiny_model("llama"), random_windows(2, 10), k=4, progress=False)
    objective = Objective("kd", teacher=cache)
    with pytest.raises(SurgeonError, match="teacher cache covers"):
        objective(tiny_model("llama"), torch.tensor([0]), random_windows(1, 12))
