"""Build networks, a SASV system and its loss from a validated configuration, and load their weights."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from losses import build_loss
from models import network_class
from models.b2_backend import B2Backend
from models.checkpoint import (
    Checkpoint,
    CheckpointError,
    apply_state,
    load_asv_weights,
    load_cm_weights,
    load_sasv_weights,
)
from models.sasv import SASVBackend, SASVModel
from runtime.compiling import CompiledNetworks
from runtime.config import Config, ConfigError, build_config, load_config, non_finite
from runtime.device import channels_last_enabled

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


def build_asv_network(config: Config) -> nn.Module:
    """The ASV network `config["asv_model"]` describes (initial weights), by its registered name."""
    settings = dict(config["asv_model"])
    name = settings.pop("architecture")
    try:
        network = network_class("asv", name)
    except KeyError as error:
        raise ConfigError(f"{config.source}: asv_model.architecture: {error.args[0]}") from None
    return network(**{key: tuple(value) if isinstance(value, list) else value for key, value in settings.items()},
                   sample_rate=config["sample_rate"])


def build_cm_network(config: Config) -> nn.Module:
    """The CM network of the config's model_config (`cm_model` / `aasist_config`), by its `architecture`."""
    model_config = aasist_model_config(config)
    try:
        network = network_class("cm", model_config.get("architecture", "AASIST"))
    except KeyError as error:
        raise ConfigError(f"{config.source}: CM model_config architecture: {error.args[0]}") from None
    try:
        return network(model_config)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ConfigError(f"{config.source}: invalid {network.__name__} model_config ({error!r})") from None


def build_sasv_model(config: Config, *, load_weights: bool = True) -> tuple[SASVModel, torch.nn.Module]:
    """The SASV model and OC-softmax loss described by `config`, initialised from its weight files."""
    asv_model = build_asv_network(config)
    cm_model = build_cm_network(config)
    backend = SASVBackend(asv_dim=config["asv_model"]["n_out"], cm_dim=cm_model.embedding_dim,
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


def apply_kernel_options(model: SASVModel, device: torch.device, *, compile: bool = False,
                         channels_last: str = "auto", compiled: CompiledNetworks | None = None) -> SASVModel:
    """Device-specific speed-ups that leave the weights and state-dict keys as they are.

    `channels_last` (the config key: auto = CUDA only, on, off; see runtime.device.channels_last_enabled)
    puts the ResNet in channels_last. `compile` applies torch.compile, in place (`nn.Module.compile`, so
    checkpoints keep their keys), to the networks that are trained: the back-end, plus ASV / CM when
    they are not frozen; through `compiled` (the run's; by default one that warns on stderr), which puts
    them back to eager when the compiler fails.
    """
    if channels_last_enabled(channels_last, device):
        model.asv_model.use_channels_last()
    if compile:
        compiled = compiled if compiled is not None else CompiledNetworks()
        subsystems = ((model.asv_model, model.train_asv, "the ASV network"),
                      (model.cm_model, model.train_cm, "the CM network"))
        for network, name in [(model.backend, "the back-end")] + [(network, name) for network, trainable, name
                                                                  in subsystems if trainable]:
            compiled.compile(network, name)
    return model


def load_sasv_weights_from(config: Config, key: str, asv_model, cm_model, backend, loss) -> Checkpoint:
    staging = SASVModel(asv_model, cm_model, backend)
    return load_sasv_weights(staging, loss, existing_weight_file(config, key))


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
        load(network, existing_weight_file(config, key))
        loaded.add(part)
    return loaded


def subsystems_held(checkpoint: Checkpoint) -> set[str]:
    """Which of "asv", "cm", "backend" a loaded checkpoint holds weights for."""
    return {part for part, state in (("asv", checkpoint.asv_state), ("cm", checkpoint.cm_state),
                                     ("backend", checkpoint.backend_state)) if state is not None}


def existing_weight_file(config: Config, key: str) -> Path:
    """The file the config key `key` names; one ConfigError naming the config and the key when it is missing."""
    path = Path(config[key])
    if not path.is_file():
        raise ConfigError(f"{config.source}: {key} file {path} does not exist")
    return path


def load_system(config: Config, device: torch.device, weights: Mapping[str, str | None], *,
                need: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> tuple[SASVModel, nn.Module, set[str]]:
    """The config's SASV system in eval mode on `device`, with weights from `weights` (the scripts'
    `model` / `asv_model` / `cm_model` arguments; a key the script lacks is absent); returns the parts loaded.

    Every part in `need` must get weights, and at least one of `optional` when there is no `need`; a part
    no argument gives comes from the config's asv_weight / aasist_weight."""
    model, loss = build_sasv_model(config, load_weights=False)
    loaded: set[str] = set()
    if weights.get("model"):
        loaded |= subsystems_held(load_sasv_weights(model, loss, Path(weights["model"])))
    if weights.get("asv_model"):
        load_asv_weights(model.asv_model, Path(weights["asv_model"]))
        loaded.add("asv")
    if weights.get("cm_model"):
        load_cm_weights(model.cm_model, Path(weights["cm_model"]))
        loaded.add("cm")
    loaded |= fill_from_weight_files(config, model.asv_model, model.cm_model, loaded, parts=need)
    loaded |= fill_from_weight_files(config, model.asv_model, model.cm_model, loaded, parts=optional,
                                     only_if_present=True)
    missing = [part for part in need if part not in loaded] or \
        ([] if loaded & set(optional) or not optional else list(optional))
    if missing:
        options = ", ".join(f"--{name}" for name in ("model", "asv_model", "cm_model") if name in weights)
        raise ConfigError(f"no weights for the {' or '.join(missing) if not need else ' and '.join(missing)} "
                          f"part(s): give {options}, or set asv_weight / aasist_weight in the config")
    model.to(device).eval()
    loss.to(device).eval()
    return model, loss, loaded


def checkpoint_config(checkpoint: Checkpoint, config: str | os.PathLike | Mapping | None = None,
                      overrides: Sequence[str] = ()) -> Config:
    """The config a checkpoint is used with outside its run: `config` (a .conf file or a mapping) when given,
    else the config main.py stored in it, else the defaults (published weights store none); `overrides` are
    --set values."""
    if isinstance(config, Config) and not overrides:
        return config
    if isinstance(config, Mapping):
        return build_config(dict(config), source="<config argument>", overrides=overrides)
    if config is not None:
        return load_config(config, overrides)
    if checkpoint.config is not None:
        return build_config(checkpoint.config, source=f"{checkpoint.source} (its stored config)", overrides=overrides)
    return build_config({}, source="<defaults>", overrides=overrides)


def load_b2_backend(config: Config, checkpoint: Checkpoint, cm_dim: int | None = None) -> nn.Module:
    """System b2's back-end with a b2 checkpoint's weights, in eval mode (the Python API and export.py): inputs
    two ASV embeddings of asv_model.n_out and a CM embedding of `cm_dim` (the CM network's; None: what the
    checkpoint's input width leaves), hidden widths b2.hidden_dims. Sizes that do not fit the checkpoint are
    one CheckpointError naming it."""
    first = (checkpoint.backend_state or {}).get("dnn.0.weight")
    width = int(first.shape[1]) if isinstance(first, torch.Tensor) and first.dim() == 2 else 0
    asv_dim = config["asv_model"]["n_out"]
    given = cm_dim
    cm_dim = width - 2 * asv_dim if cm_dim is None else cm_dim
    if cm_dim <= 0 or 2 * asv_dim + cm_dim != width:
        raise CheckpointError(f"{checkpoint.source}: its b2 back-end takes {width} inputs, which do not fit two ASV "
                              f"embeddings of asv_model.n_out {asv_dim} and a CM embedding"
                              f"{'' if given is None else f' of {given}'}; use the config and networks that made "
                              f"its embeddings")
    backend = B2Backend(asv_dim, cm_dim, config["b2"]["hidden_dims"])
    apply_state(backend, checkpoint.backend_state, what="B2 back-end", source=checkpoint.source)
    return backend.eval()
