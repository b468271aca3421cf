"""Crop (ImageNet-T2I App. F): crop sampling, keep-masks, crop tokens in DiT-I and MicroDiT, and the losses."""

import copy
import dataclasses

import pytest
import torch

from microt2i.augment.crop import (
    box_keep_mask, crop_sides, sample_crop, whole_image_boxes,
)
from microt2i.config import CropConfig, ObjectiveConfig
from microt2i.diffusion.objectives import build_objective
from microt2i.models import DIT_I_CONFIGS, MICRODIT_CONFIGS, build
from microt2i.models.layers import CropEmbedder, keep_tokens, patchify, unpatchify
from microt2i.models.microdit import crop_patch_mask


def test_crop_sides_and_error():
    assert crop_sides(8, 0.5) == (4, 7) and crop_sides(4, 0.5) == (2, 3) and crop_sides(16, 0.6) == (10, 15)
    with pytest.raises(ValueError, match="min_side"):
        crop_sides(1, 0.5)


def test_sample_crop_is_a_square_of_the_drawn_side():
    grid, g = 8, torch.Generator().manual_seed(0)
    sides = set()
    for _ in range(100):
        keep, boxes = sample_crop(CropConfig(p=1.0), grid, 5, generator=g)
        n = keep.sum(1)
        assert (n == n[0]).all()  # one size per micro-batch
        side = int(round(n[0].item() ** 0.5))
        assert side * side == n[0] and 4 <= side <= 7  # ≥ 50 % of the side, never the whole image
        sides.add(side)
        assert torch.allclose(boxes[:, 2:] - boxes[:, :2], torch.full((5, 2), side / grid))
        assert ((boxes >= 0) & (boxes <= 1)).all()
        assert torch.equal(keep, box_keep_mask(boxes, grid))
        k = keep.view(5, grid, grid)
        for b in range(5):  # the kept tokens are exactly the box's rows × columns
            x0, y0 = (boxes[b, :2] * grid).round().long().tolist()
            assert k[b, y0:y0 + side, x0:x0 + side].all() and k[b].sum() == side * side
    assert sides == {4, 5, 6, 7}


def test_sample_crop_fires_with_probability_p_and_is_deterministic():
    g = torch.Generator().manual_seed(1)
    fired = sum(sample_crop(CropConfig(p=0.3), 4, 2, generator=g)[0] is not None for _ in range(3000))
    assert abs(fired / 3000 - 0.3) < 0.035
    keep, boxes = sample_crop(CropConfig(p=0.0), 4, 3, generator=g)
    assert keep is None and torch.equal(boxes, whole_image_boxes(3))
    assert box_keep_mask(whole_image_boxes(2), 5).all()
    a = sample_crop(CropConfig(), 8, 4, generator=torch.Generator().manual_seed(3))
    b = sample_crop(CropConfig(), 8, 4, generator=torch.Generator().manual_seed(3))
    assert (a[0] is None) == (b[0] is None) and torch.equal(a[1], b[1])


def test_crop_patch_mask_is_a_subset_of_the_crop():
    keep, _ = sample_crop(CropConfig(p=1.0, min_side=0.75), 8, 3, generator=torch.Generator().manual_seed(2))
    n_crop = int(keep[0].sum())
    m = crop_patch_mask(keep, 0.75, generator=torch.Generator().manual_seed(0))
    assert not (m & ~keep).any() and (m.sum(1) == n_crop // 4).all()


def _nets():
    """World-sized DiT-I and MicroDiT (deferred and naive masking) with the crop token, non-zero outputs."""
    torch.manual_seed(0)
    dit = dataclasses.replace(DIT_I_CONFIGS["world-tiny"], crop_cond=True)
    mdit = dataclasses.replace(MICRODIT_CONFIGS["world-microdit-tiny"], crop_cond=True)
    nets = {"dit-i": build(dit), "microdit": build(mdit),
            "microdit-naive": build(dataclasses.replace(mdit, masking="naive"))}
    for net in nets.values():
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.3)
    return nets


@pytest.fixture(scope="module")
def nets():
    return _nets()


def _inputs(B=3, res=16, L=5, D=384, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 3, res, res, generator=g), torch.rand(B, generator=g), torch.randn(B, L, D, generator=g),
            torch.tensor([[True] * L, [True] * 3 + [False] * (L - 3), [False] * L])[:B])


@pytest.mark.parametrize("name", ["dit-i", "microdit", "microdit-naive"])
def test_kept_tokens_never_attend_to_dropped_ones(nets, name):
    net = nets[name].eval()
    p, grid = net.config.patch_size, net.grid
    x, c, tok, mask = _inputs()
    keep, boxes = sample_crop(CropConfig(p=1.0), grid, 3, generator=torch.Generator().manual_seed(4))
    km = keep if name == "dit-i" else crop_patch_mask(keep, 0.5, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = net(x, c, tok, mask, keep_mask=km, crop_tokens=boxes)
        assert out.shape == (3, int(km[0].sum()), p * p * 3)
        # perturb every dropped token's input: the kept outputs do not move, bit for bit
        xp = patchify(x, p)
        x2 = unpatchify(xp + 7.0 * (~keep)[..., None] * torch.randn_like(xp), p, 3, 16, 16)
        assert torch.equal(out, net(x2, c, tok, mask, keep_mask=km, crop_tokens=boxes))
        # perturbing a kept token does move them
        x3 = unpatchify(xp + 0.5 * km[..., None], p, 3, 16, 16)
        assert not torch.allclose(out, net(x3, c, tok, mask, keep_mask=km, crop_tokens=boxes))
        # the crop token conditions: another box around the same tokens changes the output
        other = boxes + torch.tensor([0.0, 0.0, 0.3, 0.3]) / grid
        assert torch.equal(box_keep_mask(other, grid), keep)
        assert not torch.allclose(out, net(x, c, tok, mask, keep_mask=km, crop_tokens=other))


@pytest.mark.parametrize("name", ["dit-i", "microdit"])
def test_positions_are_those_of_the_whole_image(nets, name):
    """The same pixels cropped at two places give different outputs (positions kept); an all-True crop mask gives
    the unmasked network's tokens; no crop_tokens means "whole image"."""
    net = copy.deepcopy(nets[name]).eval()
    torch.nn.init.zeros_(net.crop_embedder.mlp[2].weight)  # every box gives the same (zero) crop token here
    torch.nn.init.zeros_(net.crop_embedder.mlp[2].bias)
    p, grid = net.config.patch_size, net.grid
    x, c, tok, mask = _inputs(B=1)
    xp = patchify(x, p).view(1, grid, grid, -1)
    side = grid - 1
    shifted = torch.zeros_like(xp)
    shifted[:, 1:, 1:] = xp[:, :side, :side]  # the top-left crop's content moved by one token
    boxes_a = torch.tensor([[0.0, 0.0, side / grid, side / grid]])
    boxes_b = boxes_a + 1 / grid
    with torch.no_grad():
        a = net(x, c, tok, mask, keep_mask=box_keep_mask(boxes_a, grid), crop_tokens=boxes_a)
        b = net(unpatchify(shifted.view(1, grid * grid, -1), p, 3, 16, 16), c, tok, mask,
                keep_mask=box_keep_mask(boxes_b, grid), crop_tokens=boxes_b)  # same content, other place
        assert not torch.allclose(a, b, atol=1e-4)
        full = net(x, c, tok, mask)
        every = torch.ones(1, grid * grid, dtype=torch.bool)
        assert torch.allclose(patchify(full, p), net(x, c, tok, mask, keep_mask=every), atol=1e-5)
        assert torch.equal(full, net(x, c, tok, mask, crop_tokens=whole_image_boxes(1)))


def test_crop_token_errors(nets):
    plain = build(DIT_I_CONFIGS["world-tiny"])
    x, c, tok, mask = _inputs()
    with pytest.raises(ValueError, match="model.crop_cond=true"):
        plain(x, c, tok, mask, crop_tokens=whole_image_boxes(3))
    with pytest.raises(ValueError, match="boxes"):
        CropEmbedder(8)(torch.zeros(3, 2))
    net = nets["microdit"]
    keep, boxes = sample_crop(CropConfig(p=1.0), net.grid, 3, generator=torch.Generator().manual_seed(0))
    outside = ~keep
    outside &= outside.cumsum(1) <= 4  # 4 tokens outside the crop per row
    with pytest.raises(ValueError, match="outside the crop"):
        net(x, c, tok, mask, keep_mask=outside, crop_tokens=boxes)


@pytest.mark.parametrize("kind", ["edm", "vp", "flow"])
def test_loss_gradient_outside_the_crop_is_zero(nets, kind):
    """With Crop, neither the data outside the crop nor the network's outputs there touch the loss."""
    net = nets["dit-i"].train()
    p, grid = net.config.patch_size, net.grid
    obj = build_objective(ObjectiveConfig(kind=kind))
    x0, _, tok, mask = _inputs()
    x0.requires_grad_(True)
    keep, boxes = sample_crop(CropConfig(p=1.0), grid, 3, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(0)
    loss = obj.loss(net, x0, tok, mask, generator=g, keep_mask=keep, crop_tokens=boxes).sum()
    loss.backward()
    gx = patchify(x0.grad, p)  # [B, N, p²C]
    assert torch.count_nonzero(gx[~keep]) == 0 and torch.count_nonzero(gx[keep]) > 0

    # a "network" whose full output is a leaf: the loss gradient w.r.t. outputs outside the crop is exactly 0
    class Leaf(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = net.config
            self.out = torch.nn.Parameter(torch.randn(3, grid * grid, p * p * 3))

        def forward(self, x, noise_cond, text_tokens, text_mask, *, keep_mask=None, crop_tokens=None):
            return keep_tokens(self.out * (1 + 0 * x.sum()), keep_mask)

    leaf = Leaf()
    obj.loss(leaf, x0.detach(), tok, mask, generator=g, keep_mask=keep, crop_tokens=boxes).sum().backward()
    assert torch.count_nonzero(leaf.out.grad[~keep]) == 0
    assert torch.count_nonzero(leaf.out.grad[keep]) == keep.sum() * p * p * 3
