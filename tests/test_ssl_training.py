"""SSL networks inside the training tasks: the SSL learning-rate group, the first-sample crop of the SSL recipe,
and tiny runs of systems cm, asv and sasv with SSL_AASIST / SSL_ECAPA_TDNN on the tiny synthetic corpus."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch
from tiny_run import run_main_here, tiny_corpus, write_config

from data.audio import pad_or_tile
from data.speaker_lists import CroppedUtteranceDataset
from models import network_class
from training.optim import parameter_groups

# A randomly initialised XLS-R-shaped front-end: 7 conv layers of 16 channels, 1 pre-LN layer of width 32.
TINY_SSL = {"extractor_mode": "layer_norm", "extractor_conv_bias": True,
            "extractor_conv_layer_config": [[16, 10, 5]] + [[16, 3, 2]] * 4 + [[16, 2, 2]] * 2,
            "encoder_embed_dim": 32, "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4,
            "encoder_num_layers": 1, "encoder_num_heads": 4, "encoder_ff_interm_features": 64,
            "encoder_layer_norm_first": True}
TINY_SSL_AASIST = {"architecture": "SSL_AASIST", "filts": [24, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 8]}
TINY_SSL_ECAPA = {"architecture": "SSL_ECAPA_TDNN", "channels": 16, "mfa_channels": 48, "attention_channels": 8,
                  "se_channels": 8, "n_out": 16}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory)


def test_parameter_groups_give_the_ssl_front_end_its_own_rate():
    model = network_class("cm", "SSL_AASIST")({**TINY_SSL_AASIST, "ssl": {"architecture": TINY_SSL, "lr": 1e-3}})
    groups = parameter_groups(model.parameters(), model, "model")
    assert [group["name"] for group in groups] == ["model", "model_ssl"]
    ssl_ids = {id(p) for p in model.ssl_model.parameters()}
    assert {id(p) for p in groups[1]["params"]} == ssl_ids
    assert not ssl_ids & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    optimizer = torch.optim.Adam(groups, lr=1e-6)
    assert [group["lr"] for group in optimizer.param_groups] == [1e-6, 1e-3]

    # No rate of its own, or nothing of it trains: one group, as before.
    for ssl in ({"architecture": TINY_SSL}, {"architecture": TINY_SSL, "lr": 1e-3, "freeze": "all"}):
        model = network_class("cm", "SSL_AASIST")({**TINY_SSL_AASIST, "ssl": ssl})
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = parameter_groups(trainable, model, "model")
        assert [group["name"] for group in groups] == ["model"] and len(groups[0]["params"]) == len(trainable)


def test_first_crop_is_the_files_first_samples_tiled(tmp_path):
    rng = np.random.default_rng(0)
    long, short = rng.uniform(-0.5, 0.5, 9000), rng.uniform(-0.5, 0.5, 3000)
    paths = []
    for name, wave in (("long", long), ("short", short)):
        paths.append(tmp_path / f"{name}.flac")
        soundfile.write(paths[-1], wave, 16000, subtype="PCM_16")
    dataset = CroppedUtteranceDataset(paths, [0, 1], samples=8000, seed=3, crop="first")
    for index, path in enumerate(paths):
        expected = pad_or_tile(soundfile.read(path, dtype="float32")[0], 8000)
        for epoch in (0, 1):  # no draw: the same crop every epoch
            np.testing.assert_array_equal(dataset[(epoch, index)][0].numpy(), expected)
    random = CroppedUtteranceDataset(paths, [0, 1], samples=8000, seed=3)
    assert not np.array_equal(random[(0, 0)][0].numpy(), dataset[(0, 0)][0].numpy())
    with pytest.raises(ValueError, match="crop"):
        CroppedUtteranceDataset(paths, [0, 1], samples=8000, seed=3, crop="middle")


@pytest.mark.slow
@pytest.mark.parametrize("system", ["cm", "asv", "sasv"])
def test_ssl_networks_train_and_score_in_every_system(system, corpus, tmp_path):
    """One epoch of each system with the SSL networks: it trains (the SSL group at its own rate), scores and
    writes finite metrics. cm: SSL_AASIST with the SSL recipe's first-sample crops, RawBoost and a codec."""
    overrides = {"epoch": 1, "test_samples": 8000}
    if system == "cm":
        overrides.update(system="cm", cm_model={**TINY_SSL_AASIST, "ssl": {"architecture": TINY_SSL, "lr": 1e-3}},
                         cm_train={"samples": 8000, "crop": "first", "rawboost": 5, "scheduler": "constant",
                                   "codecs": [{"codec": "mulaw", "p": 0.5}]})
    elif system == "asv":
        overrides.update(system="asv", asv_model={**TINY_SSL_ECAPA, "ssl": {"architecture": TINY_SSL}},
                         asv_train={"samples": 8000, "lr": 1e-3})
    else:
        overrides.update(asv_model={**TINY_SSL_ECAPA, "ssl": {"architecture": TINY_SSL}},
                         cm_model={**TINY_SSL_AASIST, "ssl": {"architecture": TINY_SSL, "lr": 1e-4}})
    config = write_config(tmp_path / "ssl.conf", corpus, **overrides)
    result = run_main_here(config, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    output = tmp_path / "run" / "ssl"
    checkpoint = torch.load(output / "weights" / "last.ckpt", map_location="cpu", weights_only=True)
    groups = checkpoint["extra"]["optimizer"]["param_groups"]
    names = [group.get("name") for group in groups]
    if system in ("cm", "sasv"):
        assert "model_ssl" in names
        assert groups[names.index("model_ssl")]["initial_lr"] == pytest.approx(1e-3 if system == "cm" else 1e-4)
    rows = (output / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and "nan" not in rows[1].lower()
    final = json.loads((output / "metrics_eval.json").read_text())
    headline = {"cm": "eer", "asv": "eer", "sasv": "sasv_eer"}[system]
    assert 0.0 <= final[headline] <= 1.0
