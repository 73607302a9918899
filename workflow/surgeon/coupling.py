"""Which rows and columns a set of removed ones makes dead, found by one probe pass.

Removing a row or column of one Linear can leave a structure of another with nothing to do:
an up/gate row removed zeroes the matching down column's input (A_cc = 0), a down column
removed zeroes the gate/up rows' output gradients (G_rr = 0), and v rows, o columns and whole
heads couple the same way. Instead of a dependency graph per architecture, the candidate
removals are applied to the weights and one forward+backward pass on a short window shows
which columns get exactly zero input and which rows exactly zero output gradient.
"""

from __future__ import annotations

import torch

from .curvature import window_loss
from .models import decoder_linears, set_weight_with_bias, weight_with_bias


def _input_and_gradient_energy(model, ids: torch.Tensor):
    """Per decoder Linear: sum over tokens of a^2 (per input column, bias column = count) and
    of g^2 (per output row)."""
    layers = decoder_linears(model)
    a2, g2, handles = {}, {}, []

    def forward_hook(name):
        def hook(module, inputs, output):
            a = inputs[0].detach().reshape(-1, module.in_features).double()
            energy = a.square().sum(0)
            if module.bias is not None:
                energy = torch.cat([energy, energy.new_tensor([float(a.shape[0])])])
            a2[name] = energy

            def grad_hook(grad):
                g2[name] = grad.detach().reshape(-1, grad.shape[-1]).double().square().sum(0)

            if output.requires_grad:
                output.register_hook(grad_hook)

        return hook

    for name, layer in layers.items():
        handles.append(layer.register_forward_hook(forward_hook(name)))
    try:
        window_loss(model, ids, "empirical").backward()
    finally:
        for h in handles:
            h.remove()
    return a2, g2


def dead_after_removal(model, removals: dict[str, tuple[torch.Tensor, torch.Tensor]],
                       ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(dead rows, dead columns) per decoder Linear once `removals` (boolean rows, columns of
    [W | b], per layer) are zeroed: rows with zero output gradient, columns with zero input on
    `ids` (1 x T tokens), plus the removed ones themselves. The model is left unchanged."""
    layers = decoder_linears(model)
    saved = {n: weight_with_bias(layer) for n, layer in layers.items()}
    requires = [p.requires_grad for p in model.parameters()]
    try:
        for n, (rows, cols) in removals.items():
            W = saved[n].clone()
            W[rows.to(W.device)] = 0.0
            W[:, cols.to(W.device)] = 0.0
            set_weight_with_bias(layers[n], W)
        for p in model.parameters():
            p.requires_grad_(False)
        a2, g2 = _input_and_gradient_energy(model, ids.to(next(model.parameters()).device))
    finally:
        for n, layer in layers.items():
            set_weight_with_bias(layer, saved[n])
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return {n: ((g2[n] == 0).cpu() | removals[n][0].cpu(),
                (a2[n] == 0).cpu() | removals[n][1].cpu()) for n in removals}
