"""CutMix (ImageNet-T2I App. E): pattern geometry, partners, composites, captions, noise-level gating, the store."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from microt2i import presets
from microt2i.augment.cutmix import describe
from microt2i.augment.cutmix import (
    PATTERNS, build_cutmix_store, choose_partner, cutmix_path, ia_gate, make_composites, paste, sample_box,
    twin_index,
)
from microt2i.config import ConfigError, CutMixConfig, ObjectiveConfig, apply_overrides
from microt2i.augment.cutmix import paper_tau_to_sigma
from microt2i.diffusion.noise import sigma_to_alpha_bar, sigma_to_logsnr
from microt2i.diffusion.objectives import build_objective
from microt2i.diffusion.vp import VPSchedule
from microt2i.world import make_dataset
from microt2i.world.scenes import cutmix_caption, cutmix_objects

AREA = {"1/2": 1 / 2, "1/4": 1 / 4, "1/9": 1 / 9, "1/16": 1 / 16}


@pytest.mark.parametrize("size", [48, 96])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_pasted_area_is_exact(pattern, size):
    rng = np.random.default_rng(0)
    for _ in range(50):
        cm = sample_box(pattern, size, rng)
        assert cm.pattern == pattern
        assert cm.area == size * size * AREA[pattern]  # 50 %, 25 %, 11.1 %, 6.25 %
        x0, y0, x1, y1 = cm.box
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        assert x1 - x0 == y1 - y0 or pattern == "1/2"  # a square, except the half


def test_pasted_area_at_32px_is_the_rounded_fraction():
    rng = np.random.default_rng(1)
    for pattern in PATTERNS:
        cm = sample_box(pattern, 32, rng)
        side = 32 if pattern == "1/2" else round(32 * math.sqrt(AREA[pattern]))
        assert cm.area == (side * 16 if pattern == "1/2" else side * side)
        assert abs(cm.area / 1024 - AREA[pattern]) < 0.01


def test_pattern_positions():
    S, rng = 96, np.random.default_rng(2)
    corners, borders = set(), set()
    for _ in range(200):
        x0, y0, x1, y1 = sample_box("1/2", S, rng).box
        assert (x0, y0, x1, y1) in {(48, 0, 96, 96), (0, 48, 96, 96)}  # right or bottom half
        x0, y0, x1, y1 = sample_box("1/4", S, rng).box
        corners.add((x0, y0))
        x0, y0, x1, y1 = sample_box("1/9", S, rng).box
        borders.add((x0, y0))
        x0, y0, x1, y1 = sample_box("1/16", S, rng).box
        assert x0 >= 5 and y0 >= 5 and x1 <= 91 and y1 <= 91  # 5 % margin
        assert x0 >= 0.6 * S or x1 <= 0.4 * S or y0 >= 0.6 * S or y1 <= 0.4 * S  # never the central 20 % × 20 %
    assert corners == {(0, 0), (48, 0), (0, 48), (48, 48)}
    assert borders == {(32, 0), (32, 64), (0, 32), (64, 32)}  # border middles: centre and corners intact


def test_cm_all_is_uniform_over_patterns():
    rng = np.random.default_rng(3)
    counts = {p: 0 for p in PATTERNS}
    for _ in range(4000):
        counts[sample_box("all", 64, rng).pattern] += 1
    assert all(abs(c / 4000 - 0.25) < 0.03 for c in counts.values()), counts
    with pytest.raises(ValueError, match="1/3"):
        sample_box("1/3", 64, rng)


def test_paste_changes_exactly_the_box():
    rng = np.random.default_rng(4)
    base = np.zeros((48, 48, 3), np.uint8)
    partner = np.full((48, 48, 3), 200, np.uint8)
    for pattern in PATTERNS:
        cm = sample_box(pattern, 48, rng)
        out = paste(base, partner, cm)
        changed = (out != base).any(-1)
        assert changed.sum() == cm.area
        x0, y0, x1, y1 = cm.box
        assert changed[y0:y1, x0:x1].all()
    # 1/2 shows the partner's own half, unscaled
    half = sample_box("1/2", 48, np.random.default_rng(0))
    grad = np.broadcast_to(np.arange(48, dtype=np.uint8)[None, :, None] * 5, (48, 48, 3)).copy()
    x0, y0, x1, y1 = half.box
    assert np.array_equal(paste(base, grad, half)[y0:y1, x0:x1], grad[y0:y1, x0:x1])


@pytest.fixture(scope="module")
def world():
    return make_dataset(120, seed=5, resolution=24, max_objects=3)


def test_partners_never_share_a_class(world):
    images, _, scenes = world
    cfg = CutMixConfig(setting="all", times=3, seed=1)
    comp, texts, meta = make_composites(images, scenes, cfg)
    assert comp.shape == (360, 24, 24, 3) and len(texts) == len(meta) == 360
    assert [m["source"] for m in meta] == [i for i in range(120) for _ in range(3)]
    assert all(scenes[m["partner"]].main.cls != scenes[m["source"]].main.cls for m in meta)
    assert len({m["partner"] for m in meta}) > 60  # partners are spread over the set
    # a single-class set has no partner
    with pytest.raises(ValueError, match="two classes"):
        choose_partner(0, np.array(["circle"] * 5), np.random.default_rng(0))


def test_composites_are_deterministic_per_index(world):
    images, _, scenes = world
    cfg = CutMixConfig(setting="all", times=2, seed=7)
    a_img, a_txt, a_meta = make_composites(images, scenes, cfg)
    b_img, b_txt, b_meta = make_composites(images, scenes, cfg, sources=range(40, 50))  # a chunk = the same items
    assert np.array_equal(a_img[80:100], b_img) and a_txt[80:100] == b_txt and a_meta[80:100] == b_meta
    c_img, _, _ = make_composites(images, scenes, CutMixConfig(setting="all", times=2, seed=8), sources=range(40, 50))
    assert not np.array_equal(b_img, c_img)


def test_oracle_describes_both_objects(world):
    images, _, scenes = world
    for pattern in ("1/4", "1/9", "1/16"):  # the whole partner is pasted: its main object is always described
        _, texts, meta = make_composites(images, scenes, CutMixConfig(setting=pattern), sources=range(30))
        for t, m in zip(texts, meta):
            partner = scenes[m["partner"]].main
            assert f"{partner.color} {partner.cls}" in t, (pattern, t)
            assert "shows" in t  # the pasted region's background is named
        _, aio, meta = make_composites(images, scenes, CutMixConfig(setting=pattern), sources=range(30),
                                       captions="aio")
        for t, m in zip(aio, meta):
            assert t.startswith("An image of") and scenes[m["partner"]].main.cls in t
    # pasted objects are mapped into the box at the box's scale
    base, partner = scenes[0], scenes[1]
    box = (0.5, 0.5, 0.75, 0.75)
    kept, pasted = cutmix_objects(base, partner, box, (0.0, 0.0, 1.0, 1.0))
    assert len(pasted) == len(partner.objects)
    for o, src in zip(pasted, partner.objects):
        assert o.cx == pytest.approx(0.5 + 0.25 * src.cx) and o.size == pytest.approx(0.25 * src.size)
    assert isinstance(cutmix_caption(base, partner, box, (0, 0, 1, 1), 0), str)


# ---------------------------------------------------------------------------------------------- gating


def test_tau_conversion_is_alpha_bar_0_6():
    s = paper_tau_to_sigma(400, 1000)
    assert float(sigma_to_alpha_bar(s)) == pytest.approx(0.6, abs=1e-12)
    assert s == pytest.approx(math.sqrt(0.4 / 0.6))
    assert float(sigma_to_logsnr(s)) == pytest.approx(math.log(0.6 / 0.4))  # λ_τ, the same for every objective
    assert float(VPSchedule("linear").t_of_sigma(s)) == pytest.approx(0.4)  # CAD-I's t > 0.4 (T2I-ImageNet's CutMix code)


def _p_above(kind: str, s_tau: float) -> float:
    """P(σ > σ_τ) in closed form for each objective's training noise distribution."""
    c = ObjectiveConfig(kind=kind)
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    if kind == "edm":
        return 1 - phi((math.log(s_tau) - c.p_mean) / c.p_std)
    if kind == "flow":
        return 1 - phi((math.log(s_tau) - c.logit_mean) / c.logit_std)
    return 0.6  # vp linear: t ~ U(0, 1), σ > σ_τ ⇔ t > 0.4


@pytest.mark.parametrize("kind", ["edm", "vp", "flow"])
@pytest.mark.parametrize("p", [0.5, 0.25])
def test_gate_fraction_is_p_times_p_above_tau(kind, p):
    obj = build_objective(ObjectiveConfig(kind=kind))
    g = torch.Generator().manual_seed(0)
    n = 200_000
    sigma = obj.sample_sigma(n, g)
    swap = ia_gate(sigma, 400, p, generator=g)
    s_tau = paper_tau_to_sigma(400)
    assert bool((sigma[swap] > s_tau).all())  # every CutMix sample sits above τ
    expected = p * _p_above(kind, s_tau)
    assert abs(swap.float().mean().item() - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-3


def test_twin_index_is_in_range_and_deterministic():
    idx = np.array([0, 3, 7, 7])
    a = twin_index(idx, 3, generator=torch.Generator().manual_seed(1))
    b = twin_index(idx, 3, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(a, b) and ((a >= idx * 3) & (a < idx * 3 + 3)).all()
    assert np.array_equal(twin_index(idx, 1, generator=torch.Generator()), idx)


def test_config_overrides_and_errors():
    cfg = apply_overrides(presets.get("world-tiny"), ["augment.cutmix.p=0.25", "augment.cutmix.setting=1/16",
                                                      "augment.cutmix.tau=500", "augment.crop.min_side=0.6"])
    assert cfg.augment.cutmix.p == 0.25 and cfg.augment.cutmix.setting == "1/16" and cfg.augment.cutmix.tau == 500
    assert cfg.augment.crop.min_side == 0.6
    assert describe(presets.get("world-tiny").augment) == "none"
    on = apply_overrides(cfg, ["augment.cutmix.enabled=true", "augment.crop.enabled=true"])
    assert describe(on.augment) == ("CutMix CM-1/16 p=0.25 above τ=500/1000 (σ > 1.000), 1 composite(s) per image; "
                                    "Crop p=0.5, side ≥ 60%")
    with pytest.raises(ConfigError, match="augment.cutmix.setting"):
        apply_overrides(cfg, ["augment.cutmix.setting=1/3"])
    with pytest.raises(ConfigError, match="Did you mean 'times'"):
        apply_overrides(cfg, ["augment.cutmix.time=2"])
    with pytest.raises(ConfigError, match="tau"):
        apply_overrides(cfg, ["augment.cutmix.tau=1000"])


# ---------------------------------------------------------------------------------------------- store


class _Codec:
    name = "identity"

    def encode(self, x):
        return x


class _Text:
    def encode(self, texts):
        tok = torch.tensor([[len(t) % 97, t.count(" ")] for t in texts], dtype=torch.float32)[:, None, :]
        return SimpleNamespace(tokens=tok.expand(-1, 3, -1), mask=torch.ones(len(texts), 3, dtype=torch.bool))


def test_store_build_resumes_and_matches_an_uninterrupted_build(tmp_path):
    cfg = apply_overrides(presets.get("world-tiny"), [f"data.cache_dir={tmp_path / 'a'}", "data.num_images=20"])
    cm = CutMixConfig(setting="all", times=2)
    calls = []

    def make_encoders():
        calls.append(1)
        return _Codec(), _Text()

    log = lambda *_: None  # noqa: E731
    assert build_cutmix_store(cfg.data, cm, make_encoders, chunk=8, log=log, stop_after_chunks=1) is None
    parts = sorted(p.name for p in cutmix_path(cfg.data, cm).parent.glob("*.parts/*.safetensors"))
    assert parts == ["part-00000.safetensors"]
    resumed = build_cutmix_store(cfg.data, cm, make_encoders, chunk=8, log=log)
    fresh_cfg = apply_overrides(cfg, [f"data.cache_dir={tmp_path / 'b'}"])
    fresh = build_cutmix_store(fresh_cfg.data, cm, make_encoders, chunk=8, log=log)
    assert len(resumed) == 40 and torch.equal(resumed.latents, fresh.latents)
    assert resumed.captions == fresh.captions and resumed.meta["boxes"] == fresh.meta["boxes"]
    assert not any(cutmix_path(cfg.data, cm).parent.glob("*.parts"))  # parts merged and removed
    n = len(calls)
    build_cutmix_store(cfg.data, cm, make_encoders, log=log)  # cached: no encoders built
    assert len(calls) == n
    other = cutmix_path(cfg.data, CutMixConfig(setting="1/4", times=2))
    assert other != cutmix_path(cfg.data, cm)  # the key includes the augmentation parameters
    # the composites are the images: identity codec ⇒ latents = composite pixels in [−1, 1]
    images, _, scenes = make_dataset(20, seed=cfg.data.seed, resolution=16, max_objects=cfg.data.max_objects)
    comp, _, _ = make_composites(images, scenes, cm, sources=range(2))
    assert torch.allclose(resumed.latents[:4], torch.from_numpy(comp).permute(0, 3, 1, 2).float() / 127.5 - 1)


def test_cli_cutmix_builds_the_set(tmp_path, capsys, monkeypatch):
    from microt2i.cli import main

    monkeypatch.setenv("MICROT2I_CACHE", str(tmp_path))
    assert main(["cutmix", "world-tiny", "data.num_images=16", "augment.cutmix.setting=1/4", "--show", "4",
                 "--out", str(tmp_path / "prev.png")]) == 0
    out = capsys.readouterr().out
    assert "16 composites (1/4, ×1)" in out and "[1/4 of source 0" in out and (tmp_path / "prev.png").exists()
