import torch

from surgeon.threshold import global_threshold, linear_schedule, smallest_k_mask


def test_exact_count_with_ties_broken_by_index():
    costs = torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0, 0.5])
    mask = smallest_k_mask(costs, 3)
    assert mask.tolist() == [False, True, False, True, False, True]
    assert int(smallest_k_mask(costs, 0).sum()) == 0
    assert bool(smallest_k_mask(costs, 6).all())


def test_global_threshold_pools_all_layers_and_hits_target():
    g = torch.Generator().manual_seed(0)
    pools = {"a": torch.rand(7, 5, generator=g), "b": torch.rand(3, 11, generator=g) * 0.5,
             "c": torch.zeros(4, 4)}
    for k in [0, 1, 17, 40, 84]:
        masks = global_threshold(pools, k)
        assert sum(int(m.sum()) for m in masks.values()) == k
        chosen = torch.cat([pools[n][masks[n]] for n in pools])
        rest = torch.cat([pools[n][~masks[n]] for n in pools])
        if k and len(rest):
            assert chosen.max() <= rest.min()
    # cheap layer is pruned more: the threshold is global, not per layer
    masks = global_threshold({"a": pools["a"], "b": pools["b"]}, 35)
    assert masks["b"].float().mean() > masks["a"].float().mean()


def test_global_threshold_deterministic_on_ties():
    pools = {"x": torch.ones(10), "y": torch.ones(10)}
    masks = global_threshold(pools, 12)
    assert masks["x"].all() and masks["y"][:2].all() and not masks["y"][2:].any()


def test_linear_schedule():
    assert [linear_schedule(0.5, 4, t) for t in range(1, 5)] == [0.125, 0.25, 0.375, 0.5]


def test_kth_smallest_equals_kthvalue():
    """The bracketed selection returns kthvalue's value, also with ties, at the ends, and when
    the sample's bracket misses (many equal entries)."""
    from surgeon.threshold import kth_smallest

    g = torch.Generator().manual_seed(1)
    heavy = torch.randn(40_000, generator=g) ** 2 * torch.exp(2 * torch.randn(40_000, generator=g))
    tied = heavy.clone()
    tied[:15_000] = -1.0  # removed earlier: one value shared by 3/8 of the pool
    rounded = (heavy * 4).round() / 4  # few distinct values
    for pool in (heavy, tied, rounded):
        for k in (1, 2, 9_999, 15_000, 15_001, 20_000, 39_999, 40_000):
            assert kth_smallest(pool, k, sample=1024) == torch.kthvalue(pool, k).values, k
