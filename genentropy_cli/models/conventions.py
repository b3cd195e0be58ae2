"""What the code that wrote a model says about how it is called, recognised from the module.

Each convention looks at a loaded decoder and, where it recognises its family, records the latent
size, the label input, the call (``calls.py``) and the output range, each under an origin that
names the attribute it came from (``StyleGAN convention (G.z_dim)``). Anything a file, spec or
flag says wins over a convention (``LoadedModel.layer_under``).

- StyleGAN2-ADA / StyleGAN3 (``z_dim``, ``c_dim``, ``w_dim``, ``mapping``, ``synthesis``):
  z ~ N(0, I) of size ``z_dim``; a conditional generator (``c_dim`` > 0) takes a one-hot label as
  ``c``, an unconditional one ``c=None``; ``noise_mode="const"``: the per-layer noise inputs held
  at the constants stored in the generator, so the output is a function of z alone; images in
  [-1, 1].
- BigGAN (``pytorch-pretrained-biggan``: a ``config`` with ``z_dim``, ``num_classes``): z of size
  ``z_dim``, a one-hot label as the second argument, ``truncation=1.0`` (none); images in [-1, 1].
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from genentropy_cli.models.calls import KWARG_PREFIX
from genentropy_cli.models.loaded import LoadedModel

__all__ = ["CONVENTIONS", "apply_conventions"]

IMAGE_RANGE = [-1.0, 1.0]


def _int_attribute(module: Any, name: str) -> int | None:
    value = getattr(module, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def stylegan(loaded: LoadedModel) -> bool:
    """NVlabs' StyleGAN2-ADA / StyleGAN3 generators."""
    generator = loaded.decoder
    z_dim, c_dim = _int_attribute(generator, "z_dim"), _int_attribute(generator, "c_dim")
    if not isinstance(generator, nn.Module) or z_dim is None or c_dim is None \
            or _int_attribute(generator, "w_dim") is None or not hasattr(generator, "mapping") \
            or not hasattr(generator, "synthesis"):
        return False
    name = type(generator).__name__
    origin = f"StyleGAN convention ({name}.z_dim = {z_dim}, c_dim = {c_dim})"
    entries: dict = {"latent_shape": [z_dim], "latent_distribution": "normal", "output_range": IMAGE_RANGE,
                     f"{KWARG_PREFIX}noise_mode": "const"}
    if c_dim > 0:
        entries |= {"label_num_classes": c_dim, "label_format": "onehot", "label_argument": "c"}
    else:
        entries[f"{KWARG_PREFIX}c"] = None
    loaded.layer_under(entries, origin)
    loaded.call_notes["noise_mode"] = ("const", "StyleGAN's noise inputs held constant (noise_mode=const): the "
                                       "entropy is that of the map from z alone (docs/models.md, 'StyleGAN's "
                                       "noise inputs')")
    return True


def biggan(loaded: LoadedModel) -> bool:
    """``pytorch_pretrained_biggan.BigGAN``: ``G(z, class_onehot, truncation)``."""
    config = getattr(loaded.decoder, "config", None)
    z_dim, classes = _int_attribute(config, "z_dim"), _int_attribute(config, "num_classes")
    if type(loaded.decoder).__name__ != "BigGAN" or z_dim is None or classes is None:
        return False
    origin = f"BigGAN convention (config.z_dim = {z_dim}, num_classes = {classes})"
    loaded.layer_under({"latent_shape": [z_dim], "latent_distribution": "normal", "output_range": IMAGE_RANGE,
                        "label_num_classes": classes, "label_format": "onehot", "label_argument": "position",
                        f"{KWARG_PREFIX}truncation": 1.0}, origin)
    return True


CONVENTIONS: dict[str, Callable[[LoadedModel], bool]] = {"stylegan": stylegan, "biggan": biggan}
"""Family name -> a function that recognises the family and records its conventions."""


def apply_conventions(loaded: LoadedModel) -> None:
    """Record the conventions of the first family that recognises the decoder (none: nothing)."""
    if loaded.convention is not None:  # the format already knew (diffusers)
        return
    for name, recognise in CONVENTIONS.items():
        if recognise(loaded):
            loaded.convention = name
            return
