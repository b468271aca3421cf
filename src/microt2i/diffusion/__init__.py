"""Diffusion math kept out of the backbones: EDM preconditioning and loss, samplers, CFG, noise-level helpers."""

from .edm import EDMLoss, EDMPrecond, edm_coefficients, karras_sigmas
from .guidance import cfg, cfg_denoiser, null_text
from .noise import alpha_bar_to_sigma, logsnr_to_sigma, paper_tau_to_sigma, sigma_to_alpha_bar, sigma_to_logsnr
from .samplers import SAMPLERS, euler, get_sampler, heun

__all__ = [
    "EDMLoss", "EDMPrecond", "edm_coefficients", "karras_sigmas",
    "cfg", "cfg_denoiser", "null_text",
    "alpha_bar_to_sigma", "logsnr_to_sigma", "paper_tau_to_sigma", "sigma_to_alpha_bar", "sigma_to_logsnr",
    "SAMPLERS", "euler", "get_sampler", "heun",
]
