"""Perplexity's statistic against a token-by-token computation."""

import math

import pytest

import torch

from surgeon.evaluate import perplexity_of, window_nll


def test_window_nll_is_the_mean_next_token_nll_of_each_window():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 3
    ids = torch.randint(11, (3, 7), generator=g)
    expected = []
    for b in range(3):
        nll = [-math.log(torch.softmax(logits[b, t].double(), 0)[ids[b, t + 1]].item())
               for t in range(6)]
        expected.append(sum(nll) / 6)
    got = window_nll(logits, ids)
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    assert perplexity_of([got[:1], got[1:]]) == \
        pytest.approx(math.exp(sum(expected) / 3), rel=1e-6)
