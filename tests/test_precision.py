"""Mixed-precision rules that hold on any device (checked here with CPU autocast, through the autocast_context
that training uses, in bf16 and fp16): the ResNet's fbank, AASIST's sinc front end and frozen sub-systems
run in fp32 under autocast, bit-identical to an fp32 run; a grad-scaler step that overflowed is not counted."""
from __future__ import annotations

import pytest
import torch
from test_pipeline import tiny_config
from tiny_run import tiny_corpus
from torch import nn

from models.aasist import AASIST
from models.build import build_sasv_model
from models.resnet_se34v2 import ResNetSE34V2
from runtime import distributed
from runtime.config import build_config
from runtime.device import AMP_DTYPES, autocast_context
from training.state import restore_rng, rng_snapshot
from training.trainer import optimisation_step

CPU = torch.device("cpu")

AASIST_CONFIG = {"architecture": "AASIST", "nb_samp": 8000, "first_conv": 32,
                 "filts": [12, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 8],
                 "pool_ratios": [0.5, 0.5, 0.5, 0.5], "temperatures": [2.0, 2.0, 100.0, 100.0]}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_aasist_sinc_front_end_stays_fp32_under_autocast(amp):
    torch.manual_seed(0)
    model = AASIST(AASIST_CONFIG).eval()
    seen = {}
    model.first_bn.register_forward_hook(lambda _m, _i, output: seen.setdefault(len(seen), output))
    wave = torch.randn(2, 8000)
    with torch.no_grad():
        model(wave)
        with autocast_context(CPU, amp):
            _, logits = model(wave)
    assert seen[1].dtype == torch.float32 and torch.equal(seen[0], seen[1])  # front end bit-identical
    assert logits.dtype == AMP_DTYPES[amp]  # the rest of the network does run in low precision


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_resnet_fbank_stays_fp32_inside_the_forward(amp, channels_last):
    """What reaches the first convolution in a full forward (train mode, gradients on), in either layout."""
    torch.manual_seed(0)
    model = ResNetSE34V2(n_out=16, n_mels=24, layers=(1, 1, 1, 1), num_filters=(8, 8, 16, 16)).train()
    if channels_last:
        model.use_channels_last()
    seen, layouts = [], set()
    model.conv1.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    # (the 1-channel input is both layouts at once; the first block's input tells them apart)
    model.layer1.register_forward_pre_hook(
        lambda _m, args: layouts.add(args[0].is_contiguous(memory_format=torch.channels_last)))
    wave = torch.randn(2, 8000)
    model(wave)
    with autocast_context(CPU, amp):
        embedding = model(wave)
    assert seen[1].dtype == torch.float32 and torch.equal(seen[0], seen[1])
    assert layouts == {channels_last}
    assert embedding.dtype == AMP_DTYPES[amp]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_frozen_subsystems_run_in_fp32_under_autocast(tmp_path_factory, amp):
    config = build_config(tiny_config(tiny_corpus(tmp_path_factory), model_arch="ResNetSE34V2_AASIST_OC_fixed"))
    torch.manual_seed(0)
    model, _ = build_sasv_model(config, load_weights=False)
    model.eval()
    wave = torch.randn(2, 8000)
    with torch.no_grad():
        asv, (cm, _) = model.asv_embedding(wave), model.cm_embedding(wave)
        with autocast_context(CPU, amp):
            asv_amp, (cm_amp, _) = model.asv_embedding(wave), model.cm_embedding(wave)
            feats = model.score_embeddings(asv_amp, asv_amp, cm_amp)
    assert asv_amp.dtype == cm_amp.dtype == torch.float32
    assert torch.equal(asv, asv_amp) and torch.equal(cm, cm_amp)
    assert feats.dtype == AMP_DTYPES[amp]  # the trained back-end does autocast


def test_an_overflowed_scaler_step_leaves_the_weights_and_is_not_counted():
    layer = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    before = layer.weight.detach().clone()
    overflow = layer(torch.full((1, 3), 1e38)).sum() * 1e38  # inf gradients once scaled
    assert not optimisation_step(overflow, optimizer, scaler, list(layer.parameters()), clip=1.0)
    assert torch.equal(layer.weight, before) and scaler.get_scale() < 65536.0
    assert optimisation_step(layer(torch.ones(1, 3)).sum(), optimizer, scaler, list(layer.parameters()), clip=0)
    assert not torch.equal(layer.weight, before)
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    assert optimisation_step(layer(torch.ones(1, 3)).sum(), optimizer, disabled, list(layer.parameters()), clip=0)


def test_rng_snapshot_round_trip_and_the_cuda_state_formats(monkeypatch):
    snapshot = rng_snapshot()
    first = torch.rand(3)
    restore_rng(snapshot)
    assert torch.equal(torch.rand(3), first)
    # The CUDA generator of the current device gets the stored state: a tensor (this version) or the
    # first of the per-device list that earlier versions stored; nothing when none was stored.
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: restored.append(state))
    current, first_device, second_device = torch.tensor([1]), torch.tensor([2]), torch.tensor([3])
    restore_rng({**snapshot, "cuda_rng": current})
    restore_rng({**snapshot, "cuda_rng": [first_device, second_device]})
    restore_rng({**snapshot, "cuda_rng": []})
    assert restored == [current, first_device]


def test_compile_is_skipped_only_where_batchnorm_is_synchronised(monkeypatch):
    warnings = []
    assert distributed.compile_allowed(True, torch.device("cpu"), warnings.append)
    assert not distributed.compile_allowed(False, torch.device("cpu"), warnings.append) and not warnings
    monkeypatch.setattr(distributed, "syncs_batchnorm", lambda device: True)
    assert not distributed.compile_allowed(True, torch.device("cuda"), warnings.append)
    assert warnings == [("warning: compile is ignored under torchrun on CUDA: torch.compile cannot trace "
                         "SyncBatchNorm")]
