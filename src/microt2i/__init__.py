"""microt2i: text-to-image diffusion transformers on a micro budget (DiT-I, CAD-I, MicroDiT)."""

__version__ = "0.1.0"
