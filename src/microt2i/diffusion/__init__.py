"""Diffusion math kept out of the backbones: the EDM / VP / flow objectives, samplers, CFG and noise-level helpers."""

from .edm import EDMLoss, EDMObjective, EDMPrecond, edm_coefficients, karras_sigmas
from .flow import FlowDenoiser, FlowObjective
from .guidance import cfg, cfg_denoiser
from .noise import alpha_bar_to_sigma, logsnr_to_sigma, sigma_to_alpha_bar, sigma_to_logsnr
from .objectives import build_objective
from .samplers import SAMPLERS, ddim, dpmpp_2m, euler, get_sampler, heun
from .vp import VPDenoiser, VPObjective, VPSchedule

__all__ = [
    "EDMLoss", "EDMObjective", "EDMPrecond", "edm_coefficients", "karras_sigmas",
    "FlowDenoiser", "FlowObjective", "VPDenoiser", "VPObjective", "VPSchedule", "build_objective",
    "cfg", "cfg_denoiser",
    "alpha_bar_to_sigma", "logsnr_to_sigma", "sigma_to_alpha_bar", "sigma_to_logsnr",
    "SAMPLERS", "ddim", "dpmpp_2m", "euler", "get_sampler", "heun",
]
