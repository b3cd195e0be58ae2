"""diffusers models saved with ``save_pretrained`` (optional extra ``diffusers``): a folder with
``config.json`` (whose ``_class_name`` names the class) and ``diffusion_pytorch_model.safetensors``.
The library builds the model from its safetensors weights (no pickle is read); a decoder-style
class (one with ``decode``, e.g. ``AutoencoderKL``) is called as ``model.decode(z).sample``; the
latent shape comes from the config: ``latent_channels`` x (``sample_size`` / 2^(len(block_out_channels) - 1))^2."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from genentropy_cli.errors import InputError, first_line
from genentropy_cli.models.formats import LoadRequest, ModelFormat, ModelSource, register_format
from genentropy_cli.models.formats.folders import import_optional, read_config
from genentropy_cli.models.loaded import LoadedModel

__all__ = ["DIFFUSERS_WEIGHTS", "diffusers_latent_shape"]

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
PIPELINE_INDEX = "model_index.json"
DECODE_METHOD = "decode"
DECODER_OUTPUT = "sample"
"""The attribute of diffusers' ``DecoderOutput`` that holds the images."""
IMAGE_RANGE = [-1.0, 1.0]
"""diffusers' image decoders produce images in [-1, 1] (their pipelines map them to [0, 1] after)."""


def _is_diffusers_folder(source: ModelSource) -> bool:
    config = read_config(source.path, quiet=True)
    if config is not None and "_diffusers_version" in config:
        return True
    if (source.path / PIPELINE_INDEX).is_file():
        raise InputError(f"{source.path} is a diffusers pipeline; give the folder of its decoder, e.g. "
                         f"{source.path / 'vae'}")
    return False


def diffusers_latent_shape(config: dict) -> list[int] | None:
    """The latent shape a decoder-style diffusers model takes, from its config (None: not derivable)."""
    channels, size, blocks = config.get("latent_channels"), config.get("sample_size"), config.get("block_out_channels")
    if not isinstance(channels, int) or not isinstance(blocks, (list, tuple)) or not blocks:
        return None
    sizes = list(size) if isinstance(size, (list, tuple)) else [size, size]
    factor = 2 ** (len(blocks) - 1)
    if len(sizes) != 2 or not all(isinstance(side, int) and side % factor == 0 for side in sizes):
        return None
    return [channels, sizes[0] // factor, sizes[1] // factor]


def load_diffusers(source: ModelSource, request: LoadRequest) -> LoadedModel:
    folder: Path = source.path
    config = read_config(folder) or {}
    class_name = str(config.get("_class_name") or "")
    if not (folder / DIFFUSERS_WEIGHTS).is_file():
        raise InputError(f"{folder} has no {DIFFUSERS_WEIGHTS} (genentropy reads diffusers weights from safetensors "
                         "only, never a pickle): re-save it with save_pretrained(..., safe_serialization=True)")
    diffusers = import_optional("diffusers", "pip install 'genentropy[diffusers]'", f"{folder} (a diffusers {class_name or 'model'})")
    model_class = getattr(diffusers, class_name, None)
    if model_class is None or not hasattr(model_class, "from_pretrained"):
        raise InputError(f"{folder}: its config.json names {class_name!r}, which is not a diffusers model class "
                         f"in diffusers {diffusers.__version__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("diffusers").setLevel(logging.ERROR)
        try:
            model = model_class.from_pretrained(str(folder), use_safetensors=True, local_files_only=True,
                                                 low_cpu_mem_usage=False)
        except Exception as error:
            raise InputError(f"{folder}: diffusers could not build {class_name} from it ({first_line(error)})") from None
    loaded = LoadedModel(model, str(folder), "diffusers", convention="diffusers")
    origin = f"{folder.name}/config.json (diffusers {class_name})"
    entries: dict = {"output_range": IMAGE_RANGE}
    if hasattr(model, DECODE_METHOD):
        entries |= {"call_method": DECODE_METHOD, "output_select": DECODER_OUTPUT}
    shape = diffusers_latent_shape(config)
    if shape is not None:
        entries |= {"latent_shape": shape, "latent_distribution": "normal"}
    loaded.layer(entries, origin)
    return loaded


register_format(ModelFormat("diffusers", "a diffusers model folder (config.json + safetensors)",
                            _is_diffusers_folder, load_diffusers, folder=True))
