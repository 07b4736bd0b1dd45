"""Build the SASV model and its loss from a validated configuration."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from losses import build_loss
from models.aasist import AASIST
from models.checkpoint import Checkpoint, load_asv_weights, load_cm_weights, load_sasv_weights
from models.resnet_se34v2 import ResNetSE34V2
from models.sasv import SASVBackend, SASVModel
from runtime.config import Config, ConfigError, non_finite

# AASIST's published model_config (clovaai/aasist config/AASIST.conf).
AASIST_MODEL_CONFIG = {
    "architecture": "AASIST",
    "nb_samp": 64600,
    "first_conv": 128,
    "filts": [70, [1, 32], [32, 32], [32, 64], [64, 64]],
    "gat_dims": [64, 32],
    "pool_ratios": [0.5, 0.7, 0.5, 0.5],
    "temperatures": [2.0, 2.0, 100.0, 100.0],
}


def aasist_model_config(config: Config) -> dict:
    """`cm_model` inline, else the `model_config` of `aasist_config`, else AASIST's defaults."""
    if config["cm_model"] is not None:
        return dict(config["cm_model"])
    path = config["aasist_config"]
    if path is None:
        return dict(AASIST_MODEL_CONFIG)
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a byte-order mark is harmless
            values = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{config.source}: aasist_config file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}: invalid JSON in aasist_config ({error.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: aasist_config is not a text file (invalid UTF-8)") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read aasist_config ({error.strerror})") from None
    if not isinstance(values, dict) or "model_config" not in values:
        raise ConfigError(f"{path}: aasist_config has no 'model_config' section")
    found = non_finite(values["model_config"], "model_config")  # json reads NaN and Infinity
    if found is not None:
        raise ConfigError(f"{path}: key '{found[0]}' is {found[1]}; NaN and infinity are not valid values")
    return values["model_config"]


def cm_embedding_dim(model_config: dict) -> int:
    """AASIST's last hidden layer concatenates 5 pooled vectors of gat_dims[1]."""
    return 5 * int(model_config["gat_dims"][1])


def build_asv_network(config: Config) -> ResNetSE34V2:
    """The ResNetSE34V2 described by `config["asv_model"]` (initial weights)."""
    asv = config["asv_model"]
    return ResNetSE34V2(n_out=asv["n_out"], encoder_type=asv["encoder_type"], n_mels=asv["n_mels"],
                        layers=tuple(asv["layers"]), num_filters=tuple(asv["num_filters"]),
                        sample_rate=config["sample_rate"], feature_norm=asv["feature_norm"])


def build_sasv_model(config: Config, *, load_weights: bool = True) -> tuple[SASVModel, torch.nn.Module]:
    """The SASV model and OC-softmax loss described by `config`, initialised from its weight files."""
    asv = config["asv_model"]
    asv_model = build_asv_network(config)
    cm_config = aasist_model_config(config)
    try:
        cm_model = AASIST(cm_config)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ConfigError(f"{config.source}: invalid AASIST model_config ({error!r})") from None
    backend = SASVBackend(asv_dim=asv["n_out"], cm_dim=cm_embedding_dim(cm_config),
                          conv_channels=tuple(config["backend"]["conv_channels"]),
                          hidden_dims=tuple(config["backend"]["hidden_dims"]))
    optim = config["optim"]
    loss = build_loss("ocsoftmax", feat_dim=optim["oc_dim"], r_real=optim["r_real"],
                      r_fake=optim["r_fake"], alpha=optim["alpha"])
    if load_weights:
        held: set[str] = set()
        if config["init_checkpoint"]:
            checkpoint = load_sasv_weights_from(config, "init_checkpoint", asv_model, cm_model, backend, loss)
            held = subsystems_held(checkpoint)
        fill_from_weight_files(config, asv_model, cm_model, held)
    model = SASVModel(asv_model, cm_model, backend, train_asv=config["train_asv"], train_cm=config["train_cm"])
    return model, loss


def apply_kernel_options(model: SASVModel, device: torch.device, *, compile: bool = False) -> SASVModel:
    """Device-specific speed-ups that leave the weights and state-dict keys as they are.

    On CUDA the ResNet runs in channels_last (no effect elsewhere). `compile` applies torch.compile, in
    place (`nn.Module.compile`, so checkpoints keep their keys), to the networks that are trained:
    the back-end, plus ASV / CM when they are not frozen.
    """
    if device.type == "cuda":
        model.asv_model.use_channels_last()
    if compile:
        subsystems = ((model.asv_model, model.train_asv), (model.cm_model, model.train_cm))
        for network in [model.backend] + [network for network, trainable in subsystems if trainable]:
            network.compile()
    return model


def load_sasv_weights_from(config: Config, key: str, asv_model, cm_model, backend, loss) -> Checkpoint:
    staging = SASVModel(asv_model, cm_model, backend)
    return load_sasv_weights(staging, loss, _existing(config, key))


def fill_from_weight_files(config: Config, asv_model: nn.Module, cm_model: nn.Module, held: set[str], *,
                           parts: Iterable[str] = ("asv", "cm"), only_if_present: bool = False) -> set[str]:
    """Load asv_weight / aasist_weight into the sub-systems of `parts` that `held` (what a joint checkpoint
    or an argument gave) lacks; returns the parts loaded. The files fill in, never replace: a _fixed
    model's checkpoint holds the back-end only, as the original kept the frozen networks out of it.
    A set key whose file is missing is an error, unless `only_if_present` (then the part is skipped)."""
    loaded = set()
    for part, key, load, network in (("asv", "asv_weight", load_asv_weights, asv_model),
                                     ("cm", "aasist_weight", load_cm_weights, cm_model)):
        if part not in parts or part in held or not config[key]:
            continue
        if only_if_present and not Path(config[key]).is_file():
            continue
        load(network, _existing(config, key))
        loaded.add(part)
    return loaded


def subsystems_held(checkpoint: Checkpoint) -> set[str]:
    """Which of "asv", "cm", "backend" a loaded checkpoint holds weights for."""
    return {part for part, state in (("asv", checkpoint.asv_state), ("cm", checkpoint.cm_state),
                                     ("backend", checkpoint.backend_state)) if state is not None}


def _existing(config: Config, key: str) -> Path:
    path = Path(config[key])
    if not path.is_file():
        raise ConfigError(f"{config.source}: {key} file {path} does not exist")
    return path


