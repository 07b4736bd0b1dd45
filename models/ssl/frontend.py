"""SSLFrontEnd: a torchaudio wav2vec2 / XLS-R / WavLM encoder on the raw waveform (no normalisation), with the
output and training choices of the `ssl` config section. docs/ssl.md says which output equals which Hugging Face
hidden state or fairseq output.

The transformer layers are run here, one by one, rather than through torchaudio's Transformer.forward, so
that every hidden state can be kept, a chosen layer can stop the run early, and each layer can be wrapped in
gradient checkpointing. Layer drop follows torchaudio (a torch.rand draw per layer, in training only); unlike
fairseq, nothing is drawn in evaluation, so evaluation never touches any random generator.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.checkpoint import CheckpointError, apply_state
from models.ssl.presets import PRESETS, is_wavlm, resolve_architecture, structure
from models.ssl.weights import SSLWeightsError, fairseq_to_torchaudio, infer_architecture, load_ssl_weights
from runtime.errors import ConfigError
from runtime.schema import POSITIVE, ConfigSection, Field, Invalid, Range

OUTPUTS = ("last", "layer", "weighted")
FREEZE = ("none", "all", "feature_encoder")


def _check_settings(values: Mapping[str, Any]) -> None:
    if values.get("weights") is None and values.get("architecture") is None:
        raise Invalid("weights", "and ssl.architecture are both unset; give a weight path or an architecture "
                                 "(a preset or builder arguments, for a randomly initialised model)")
    if values.get("output") == "layer" and values.get("layer") is None:
        raise Invalid("layer", "must be given when output is 'layer'")
    if values.get("output") != "layer" and values.get("layer") is not None:
        raise Invalid("layer", f"is only read when output is 'layer' (output is {values.get('output')!r})")
    architecture = values.get("architecture")
    if architecture is not None:
        resolve_architecture(architecture)


SSL_CONFIG = ConfigSection(
    name="SSL front-end",
    fields=dict(
        weights=Field(str, None, "Hugging Face folder, fairseq checkpoint or state dict of the SSL model; null: "
                                 "random initialisation (needs architecture)"),
        architecture=Field((str, dict), None, f"a preset ({', '.join(PRESETS)}) or torchaudio builder arguments; "
                                              "with weights, it must agree with the file's own config"),
        output=Field(str, "last", "last (after the final encoder LayerNorm), layer (hidden state `layer`) or "
                                  "weighted (learnable softmax weights over all hidden states)", choices=OUTPUTS),
        layer=Field(int, None, "hidden state for output=layer: 0 = before the first transformer layer, "
                               "i = output of layer i", range=Range(0)),
        freeze=Field(str, "none", "none (fine-tune all), all (frozen, always in eval mode) or feature_encoder "
                                  "(the CNN frozen)", choices=FREEZE),
        lr=Field(float, None, "learning rate of the SSL parameters; null: the network's", range=POSITIVE),
        gradient_checkpointing=Field(bool, False, "recompute each transformer layer in the backward pass "
                                                  "(training only): less memory, more time"),
    ),
    checks=(_check_settings,),
)


def build_model(arguments: Mapping[str, Any]) -> nn.Module:
    """torchaudio's Wav2Vec2Model from builder arguments (wavlm_model when they give encoder_num_buckets)."""
    builder = torchaudio.models.wavlm_model if is_wavlm(arguments) else torchaudio.models.wav2vec2_model
    return builder(**arguments, aux_num_out=None)


class SSLFrontEnd(nn.Module):
    """torchaudio Wav2Vec2Model (wav2vec2 / XLS-R) or WavLM encoder; raw waveform in, no normalisation.

    forward: [B, N] -> [B, T, C] as `output` says; hidden_states: the L + 1 states, [0] before the first layer.
    `ssl_parameters()` are the encoder's trainable parameters (the optimiser's `lr` group); the weights of
    output="weighted" are not among them. freeze="all" keeps the encoder in eval mode whatever the parent's mode.
    """

    def __init__(self, arguments: Mapping[str, Any], *, output: str = "last", layer: int | None = None,
                 freeze: str = "none", gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.arguments = dict(arguments)
        self.model = build_model(arguments)
        self.output_dim: int = int(arguments["encoder_embed_dim"])
        self.n_layers: int = int(arguments["encoder_num_layers"])
        # torchaudio's Transformer.layer_norm_first is the inverse of the builder flag: True = post-LN model,
        # whose LayerNorm runs before the layers; pre-LN (stable) models apply it after the last layer.
        self.final_layer_norm = not self.model.encoder.transformer.layer_norm_first
        if output not in OUTPUTS or freeze not in FREEZE:
            raise ValueError(f"output {output!r} / freeze {freeze!r}")
        if output == "layer" and (layer is None or not 0 <= layer <= self.n_layers):
            raise ValueError(f"layer {layer} is not in 0..{self.n_layers}")
        self.output, self.layer, self.freeze = output, layer, freeze
        self.gradient_checkpointing = gradient_checkpointing
        self.layer_weights = nn.Parameter(torch.zeros(self.n_layers + 1)) if output == "weighted" else None
        if freeze == "all":
            self.model.requires_grad_(False)
        elif freeze == "feature_encoder":
            self.model.feature_extractor.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> SSLFrontEnd:
        super().train(mode)
        if self.freeze == "all":
            self.model.eval()  # no dropout or layer drop in a frozen encoder, even while the parent trains
        return self

    def ssl_parameters(self) -> Iterator[nn.Parameter]:
        """The SSL encoder's parameters that train (none when freeze is "all")."""
        return (parameter for parameter in self.model.parameters() if parameter.requires_grad)

    def forward(self, waveform: Tensor) -> Tensor:
        if self.output == "weighted":
            states = torch.stack(self.hidden_states(waveform), dim=0)  # [L + 1, B, T, C]
            weights = torch.softmax(self.layer_weights, dim=0).to(states.dtype)
            return (weights.view(-1, 1, 1, 1) * states).sum(dim=0)
        if self.output == "layer":
            return self._run(waveform, self.layer)[-1]
        last = self._run(waveform, self.n_layers)[-1]
        return self.model.encoder.transformer.layer_norm(last) if self.final_layer_norm else last

    def hidden_states(self, waveform: Tensor) -> list[Tensor]:
        """L + 1 tensors [B, T, C]: [0] = input of the first layer (after the positional convolution, and
        after the encoder LayerNorm in post-LN models), [i] = output of layer i (no final LayerNorm)."""
        return self._run(waveform, self.n_layers)

    def _run(self, waveform: Tensor, n_layers: int) -> list[Tensor]:
        if waveform.dim() != 2:
            raise ValueError(f"SSLFrontEnd takes waveforms [batch, samples], got shape {list(waveform.shape)}")
        no_grad = self.freeze == "all" and not waveform.requires_grad
        with torch.set_grad_enabled(torch.is_grad_enabled() and not no_grad):
            frozen_cnn = self.freeze == "feature_encoder" and not waveform.requires_grad
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_cnn):
                features, _ = self.model.feature_extractor(waveform, None)
            encoder = self.model.encoder
            x = encoder.transformer._preprocess(encoder.feature_projection(features))
            states, position_bias = [x], None
            transformer = encoder.transformer
            for layer in transformer.layers[:n_layers]:
                if self.training and transformer.layer_drop > 0 and torch.rand(1).item() <= transformer.layer_drop:
                    states.append(x)  # a dropped layer passes its input on
                    continue
                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    x, position_bias = checkpoint(layer, x, None, position_bias, use_reentrant=False)
                else:
                    x, position_bias = layer(x, None, position_bias=position_bias)
                states.append(x)
        return states


def build_ssl_frontend(settings: Mapping[str, Any], *, where: str = "", prefix: str = "ssl.") -> SSLFrontEnd:
    """The front-end an `ssl` config mapping describes, with its weights loaded (when `weights` is given).

    `where` (the config file) and `prefix` (the mapping's key path) name the key in a ConfigError; weight files
    that cannot be used raise SSLWeightsError naming the file."""
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where + ': ' if where else ''}key '{prefix}{key}' {message}")

    unknown = [key for key in settings if key not in SSL_CONFIG.fields]
    if unknown:
        raise fail(unknown[0], f"is not an SSL front-end key; known: {', '.join(SSL_CONFIG.fields)}")
    values = SSL_CONFIG.defaults() | dict(settings)
    try:
        SSL_CONFIG.validate(values, typed=False)
    except Invalid as problem:
        raise fail(problem.key, problem.message) from None
    given = resolve_architecture(values["architecture"]) if values["architecture"] is not None else None
    weights = load_ssl_weights(values["weights"]) if values["weights"] is not None else None
    arguments = given
    if weights is not None and weights.architecture is not None:
        arguments = weights.architecture
        if given is not None and structure(given) != structure(arguments):
            differs = [key for key, value in structure(given).items() if structure(arguments).get(key) != value]
            raise fail("architecture", f"does not agree with {weights.source}, whose config gives "
                                       + ", ".join(f"{key} {arguments.get(key)!r} (not {given[key]!r})"
                                                   for key in differs[:3]))
    elif weights is not None and given is None:
        _, arguments = infer_architecture(weights.state, weights.source)
    layer = values["layer"]
    n_layers = arguments["encoder_num_layers"]
    if layer is not None and layer > n_layers:
        raise fail("layer", f"is {layer}; the model has {n_layers} transformer layers, so hidden states "
                            f"0..{n_layers} exist")
    frontend = SSLFrontEnd(arguments, output=values["output"], layer=layer, freeze=values["freeze"],
                           gradient_checkpointing=values["gradient_checkpointing"])
    frontend.ssl_lr = values["lr"]  # training.optim.parameter_groups gives ssl_parameters() this rate
    if weights is not None:
        try:
            apply_state(frontend.model, weights.state, what="SSL front-end", source=weights.source)
        except CheckpointError as error:  # one error class for every unusable weight file
            raise SSLWeightsError(str(error)) from None
    return frontend


__all__ = ["FREEZE", "OUTPUTS", "SSL_CONFIG", "SSLFrontEnd", "SSLWeightsError", "build_model", "build_ssl_frontend",
           "fairseq_to_torchaudio"]
