"""SSL_ECAPA_TDNN against UniSpeech's own ECAPA_TDNN (tests/data/ssl_ecapa, made as its README says), its config
keys and its forward pass from a waveform."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.ecapa_tdnn import ECAPATDNN
from models.ssl_ecapa import ReferenceWeightsError, conv_min_samples, load_unispeech_backend
from runtime.config import ConfigError, build_config

GOLDEN = Path(__file__).resolve().parent / "data" / "ssl_ecapa"
# Observed max abs difference against the reference: 4.5e-8 (float32 rounding); 1e-5 is the fixtures' tolerance.
ATOL = 1e-5
SIZES = {"gc0": dict(channels=16, mfa_channels=32, global_context=False, n_out=32),
         "gc1": dict(channels=16, mfa_channels=32, global_context=True, n_out=24)}
FRONTENDS = ("wavlm", "xlsr")


def _ssl_available() -> bool:
    try:
        return importlib.util.find_spec("models.ssl.frontend") is not None
    except ModuleNotFoundError:
        return False


needs_ssl = pytest.mark.skipif(not _ssl_available(), reason="models.ssl (the SSL front-end) is not in this checkout")


@pytest.fixture(scope="module")
def hidden(fixtures) -> dict[str, np.ndarray]:
    path = fixtures / "ssl" / "ssl_frontends.npz"
    if not path.is_file():
        pytest.skip(f"SSL fixtures not found at {path} (set SASV_FIXTURES)")
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    inputs = json.loads((GOLDEN / "goldens.json").read_text())["inputs"]
    for key, identity in inputs.items():
        if key != "file":  # the goldens were made from exactly these arrays
            digest = hashlib.sha256(np.ascontiguousarray(arrays[key]).astype("<f4").tobytes()).hexdigest()
            assert digest == identity["sha256_f32le"], f"{path}: {key} is not the array the goldens were made from"
    return arrays


@pytest.fixture(scope="module")
def embeddings() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "embeddings.npz") as data:
        return {key: data[key] for key in data.files}


def _backend(name: str) -> ECAPATDNN:
    network = ECAPATDNN(feat_dim=64, n_hidden=3, **SIZES[name])
    network.load_state_dict(torch.load(GOLDEN / f"reference_{name}.pt", weights_only=True), strict=True)
    return network.eval()


def _states(arrays: dict, frontend: str, wave: int) -> list[torch.Tensor]:
    return [torch.from_numpy(arrays[f"{frontend}_w{wave}_hidden_{i}"]) for i in range(3)]


@pytest.mark.parametrize("name", sorted(SIZES))
def test_backend_reproduces_unispeech_goldens(name, hidden, embeddings):
    network = _backend(name)
    reference = torch.load(GOLDEN / f"reference_{name}.pt", weights_only=True)
    assert list(network.state_dict()) == list(reference)  # the reference's key names, in its order
    with torch.no_grad():
        for frontend in FRONTENDS:
            for wave in (0, 1):
                got = network(_states(hidden, frontend, wave)).numpy()
                expected = embeddings[f"{name}_{frontend}_w{wave}_embedding"]
                assert got.shape == expected.shape
                np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_backend_batch_rows_match_single_utterances(hidden, embeddings):
    # wavlm and xlsr states of wave 0 have the same length (201 frames): one batch of two
    network = _backend("gc1")
    batch = [torch.cat(pair) for pair in zip(_states(hidden, "wavlm", 0), _states(hidden, "xlsr", 0))]
    with torch.no_grad():
        got = network(batch).numpy()
    expected = np.concatenate([embeddings["gc1_wavlm_w0_embedding"], embeddings["gc1_xlsr_w0_embedding"]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_load_unispeech_backend_checks_keys_and_shapes():
    reference = torch.load(GOLDEN / "reference_gc0.pt", weights_only=True)
    network = ECAPATDNN(feat_dim=64, n_hidden=3, **SIZES["gc0"])
    load_unispeech_backend(network, {"feature_extract.model.mask_emb": torch.zeros(64), **reference})
    assert torch.equal(network.feature_weight, reference["feature_weight"])
    wider = ECAPATDNN(feat_dim=64, n_hidden=3, **{**SIZES["gc0"], "channels": 24})
    with pytest.raises(ReferenceWeightsError, match=r"ref\.pt: 'layer1\.conv\.weight' has shape"):
        load_unispeech_backend(wider, reference, "ref.pt")
    with pytest.raises(ReferenceWeightsError, match=r"ref\.pt: no 'feature_weight'"):
        load_unispeech_backend(network, {k: v for k, v in reference.items() if k != "feature_weight"}, "ref.pt")


def test_min_samples_of_the_wav2vec2_conv_stack():
    # 25 ms receptive field, 20 ms hop at 16 kHz (T = (n - 400) // 320 + 1, the fixtures' README)
    assert conv_min_samples(None, 1) == 400
    assert conv_min_samples(None, 2) == 720


def test_bad_config_keys_name_the_key():
    with pytest.raises(ConfigError, match=r"exp\.conf: unknown key 'asv_model\.chanels'"):
        build_config({"asv_model": {"architecture": "SSL_ECAPA_TDNN", "chanels": 64}}, source="exp.conf")
    with pytest.raises(ConfigError, match=r"exp\.conf: key 'asv_model\.channels' must be a multiple of 8"):
        build_config({"asv_model": {"architecture": "SSL_ECAPA_TDNN", "channels": 60}}, source="exp.conf")
    with pytest.raises(ConfigError, match=r"exp\.conf: key 'asv_model\.ssl' must be a mapping"):
        build_config({"asv_model": {"architecture": "SSL_ECAPA_TDNN", "ssl": 3}}, source="exp.conf")
    with pytest.raises(ConfigError, match=r"exp\.conf: unknown key 'asv_model\.n_mels'"):
        build_config({"asv_model": {"architecture": "SSL_ECAPA_TDNN", "n_mels": 64}}, source="exp.conf")


@needs_ssl
def test_bad_ssl_setting_names_the_key():
    with pytest.raises(ConfigError, match=r"exp\.conf: key 'asv_model\.ssl\.bogus'"):
        build_config({"asv_model": {"architecture": "SSL_ECAPA_TDNN", "ssl": {"bogus": 1}}}, source="exp.conf")
    with pytest.raises(ConfigError, match=r"exp\.conf: key 'asv_model\.ssl\.output'"):
        build_config({"asv_model": {"architecture": "SSL_ECAPA_TDNN", "ssl": {"output": "mean"}}},
                     source="exp.conf")
    with pytest.raises(ConfigError, match=r"key 'asv_train\.samples' is 700, shorter than SSL_ECAPA_TDNN"):
        build_config({"asv_model": {"architecture": "SSL_ECAPA_TDNN", "ssl": {"architecture": "wavlm_base_plus"}},
                      "asv_train": {"samples": 700}}, source="exp.conf")


@needs_ssl
def test_network_from_waveform_matches_goldens(fixtures, hidden, embeddings):
    """The registered network, built from a config with the tiny XLS-R's fairseq weights and the golden back-end:
    waveform in, embedding out. The front-end's hidden states are allowed 1e-5 (the fixtures' README); a change of
    1e-5 in every hidden state moves these embeddings by 6e-7 (measured), so 1e-5 holds here too."""
    from models.build import build_asv_network

    weights = fixtures / "ssl" / "ssl_frontends" / "xlsr_tiny_fairseq.pt"
    config = build_config({"asv_model": {"architecture": "SSL_ECAPA_TDNN", "ssl": {"weights": str(weights)},
                                         **SIZES["gc0"]}})
    network = build_asv_network(config)
    load_unispeech_backend(network, torch.load(GOLDEN / "reference_gc0.pt", weights_only=True))
    network.eval()
    waves = torch.from_numpy(np.stack([hidden["wave_0"], hidden["wave_1"][:64600]]))
    with torch.no_grad():
        got = network(waves)
    assert got.shape == (2, 32)
    np.testing.assert_allclose(got[:1].numpy(), embeddings["gc0_xlsr_w0_embedding"], rtol=0, atol=ATOL)
