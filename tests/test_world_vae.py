"""The shipped world VAE loads through the real DiffusersVAE path and reconstructs world renders."""

import numpy as np
import pytest
import torch

from microt2i.world.pixels import images_to_tensor, tensor_to_images
from microt2i.encoders import load_codec
from microt2i.world import detect, make_dataset
from microt2i.world.vae import TARGET_STD, WORLD_VAE_DIR


@pytest.fixture(scope="module")
def codec():
    if not (WORLD_VAE_DIR / "diffusion_pytorch_model.safetensors").exists():
        pytest.fail(f"the shipped world VAE is missing from {WORLD_VAE_DIR}; run `python -m microt2i.world.vae`")
    return load_codec("world-vae")


def test_world_vae_shapes_scale_and_reconstruction(codec):
    images, _, scenes = make_dataset(64, seed=12345, resolution=32)  # seeds the VAE never trained on
    x = images_to_tensor(images)
    z = codec.encode(x)
    assert z.shape == (64, 4, 8, 8) and codec.factor == 4 and z.dtype == torch.float32
    assert abs(float(z.std()) - TARGET_STD) < 0.15  # scaling_factor makes latents ≈ σ_data
    rec = tensor_to_images(codec.decode(z))
    psnr = 10 * np.log10(255.0**2 / np.mean((rec.astype(float) - images.astype(float)) ** 2))
    assert psnr > 24, psnr
    # the decoded main object is still the same class and colour for the detector
    ok = 0
    for img, scene in zip(rec, scenes):
        dets = detect(img)
        main = scene.objects[0]
        ok += bool(dets) and dets[0].cls == main.cls and dets[0].color == main.color
    assert ok / len(scenes) > 0.9, ok


def test_world_vae_works_at_other_resolutions(codec):
    images, _, _ = make_dataset(4, seed=7, resolution=64)
    z = codec.encode(images_to_tensor(images))
    assert z.shape == (4, 4, 16, 16)
    assert codec.decode(z).shape == (4, 3, 64, 64)
