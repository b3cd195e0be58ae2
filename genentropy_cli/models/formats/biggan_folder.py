"""BigGAN as ``pytorch-pretrained-biggan`` holds it (optional extra ``biggan``): a folder with
``config.json`` (``z_dim``, ``num_classes``, ``class_embed_dim``, ``layers``, ...) and the weights
``pytorch_model.bin`` (a state dict, read with ``torch.load(weights_only=True)``: no code runs).
The generator is called ``G(z, class_onehot, truncation)``: the conventions (``conventions.py``)
give the latent size, the label (one-hot, second argument) and ``truncation``."""

from __future__ import annotations

from pathlib import Path

from genentropy_cli.errors import InputError, first_line
from genentropy_cli.models.formats import LoadRequest, ModelFormat, ModelSource, register_format
from genentropy_cli.models.formats.folders import import_optional, read_config
from genentropy_cli.models.loaded import LoadedModel
from genentropy_cli.models.pickles import load_torch_save

__all__ = ["BIGGAN_CONFIG_KEYS", "BIGGAN_WEIGHTS"]

BIGGAN_WEIGHTS = "pytorch_model.bin"
BIGGAN_CONFIG_KEYS = ("z_dim", "num_classes", "class_embed_dim", "channel_width", "layers")


def _is_biggan_folder(source: ModelSource) -> bool:
    config = read_config(source.path, quiet=True)
    return config is not None and all(key in config for key in BIGGAN_CONFIG_KEYS)


def load_biggan(source: ModelSource, request: LoadRequest) -> LoadedModel:
    folder: Path = source.path
    weights = folder / BIGGAN_WEIGHTS
    if not weights.is_file():
        raise InputError(f"{folder} holds a BigGAN config.json but no {BIGGAN_WEIGHTS} beside it")
    biggan = import_optional("pytorch_pretrained_biggan", "pip install 'genentropy[biggan]'", f"{folder} (a BigGAN)")
    try:
        config = biggan.BigGANConfig.from_dict(read_config(folder))
        model = biggan.BigGAN(config)
    except Exception as error:
        raise InputError(f"{folder}/config.json does not build a BigGAN ({first_line(error)})") from None
    state, _ = load_torch_save(weights, trust_pickle=False)
    try:
        model.load_state_dict(state)
    except Exception as error:
        raise InputError(f"{weights} does not fit the BigGAN its config.json describes ({first_line(error)})") from None
    return LoadedModel(model.eval(), str(folder), "biggan")


register_format(ModelFormat("biggan", "a pytorch-pretrained-biggan folder (config.json + pytorch_model.bin)",
                            _is_biggan_folder, load_biggan, folder=True))
