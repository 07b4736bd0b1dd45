"""ResNetSE34V2 reproduces the reference embeddings and front end (fixtures README section 5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.resnet_se34v2 import MainModel, ResNetSE34V2

EMB_TOL = dict(atol=1e-4, rtol=1e-4)
GOLDEN_JSON = "resnet_fidelity.json"


@pytest.fixture(scope="module")
def golden(fixtures, golden_json):
    torch.set_num_threads(2)
    meta = golden_json(GOLDEN_JSON)
    arrays = np.load(fixtures / "golden" / GOLDEN_JSON.replace(".json", ".npz"))
    return meta, arrays


@pytest.fixture(scope="module")
def vox_state(fixtures, golden):
    meta, _ = golden
    raw = torch.load(fixtures / meta["weights"]["file"], map_location="cpu", weights_only=True)
    assert len(raw) == meta["weights"]["n_keys"]
    # The project's loader detects the voxceleb_trainer layout ("__S__." model, "__L__." loss head).
    checkpoint = load_checkpoint(fixtures / meta["weights"]["file"])
    assert checkpoint.format == "voxceleb" and set(checkpoint.asv_loss_state) == {"w", "b"}
    return checkpoint.asv_state


def _model_with(state: dict) -> ResNetSE34V2:
    model = MainModel()
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def model(vox_state):
    return _model_with(vox_state)


def _embed(model: ResNetSE34V2, wave: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(wave)).numpy()


def test_state_dict_keys_and_order_match_voxceleb_file(model, vox_state):
    assert list(model.state_dict()) == list(vox_state)
    for name in ("torchfb.0.flipped_filter", "torchfb.1.spectrogram.window", "torchfb.1.mel_scale.fb"):
        assert name in vox_state


def test_embeddings_rows_alone(model, golden):
    _, arrays = golden
    waves, expected = arrays["wave_64600"], arrays["emb_64600"]
    for row in range(waves.shape[0]):
        np.testing.assert_allclose(_embed(model, waves[row:row + 1])[0], expected[row], **EMB_TOL,
                                   err_msg=f"emb_64600 row {row}")


def test_embeddings_batch(model, golden):
    _, arrays = golden
    np.testing.assert_allclose(_embed(model, arrays["wave_64600"]), arrays["emb_64600_batch4"], **EMB_TOL)


@pytest.mark.slow
def test_embedding_long_enrollment(model, golden):
    _, arrays = golden
    np.testing.assert_allclose(_embed(model, arrays["wave_long"][None])[0], arrays["emb_long"], **EMB_TOL)


def test_front_end_intermediates(model, golden):
    _, arrays = golden
    row0 = torch.from_numpy(arrays["wave_64600"][:1])
    np.testing.assert_allclose(model.mel_power(row0)[0].numpy(), arrays["melspec_row0"], rtol=1e-3, atol=0)
    np.testing.assert_allclose(model.frontend_features(row0)[0].numpy(), arrays["feat_row0"], rtol=0, atol=5e-4)


def _first_row_shift(model: ResNetSE34V2, arrays) -> float:
    return float(np.abs(_embed(model, arrays["wave_64600"][:1])[0] - arrays["emb_64600"][0]).max())


def test_reset_batchnorm_statistics_breaks_fidelity(vox_state, golden):
    _, arrays = golden
    state = dict(vox_state)
    for key in state:
        if key.endswith("running_mean"):
            state[key] = torch.zeros_like(state[key])
        elif key.endswith("running_var"):
            state[key] = torch.ones_like(state[key])
    assert _first_row_shift(_model_with(state), arrays) > 100 * EMB_TOL["atol"]


def test_swapped_same_shape_layers_break_fidelity(vox_state, golden):
    _, arrays = golden
    state = dict(vox_state)
    first, second = "layer3.1.conv1.weight", "layer3.2.conv1.weight"
    assert state[first].shape == state[second].shape
    state[first], state[second] = state[second], state[first]
    assert _first_row_shift(_model_with(state), arrays) > 100 * EMB_TOL["atol"]


def test_zero_padded_pre_emphasis_breaks_melspec_check(model, golden):
    # Reflect padding only touches the first sample; the melspec tolerance must still see it.
    _, arrays = golden
    row0 = torch.from_numpy(arrays["wave_64600"][:1])
    zero_padded = torch.nn.functional.conv1d(
        torch.nn.functional.pad(row0.unsqueeze(1), (1, 0)), model.torchfb[0].flipped_filter).squeeze(1)
    with torch.no_grad():
        mel = model.torchfb[1](zero_padded)[0].numpy()
    relative = np.abs(mel - arrays["melspec_row0"]) / np.abs(arrays["melspec_row0"])
    assert relative.max() > 1e-3


@pytest.mark.parametrize("encoder_type", ["ASP", "SAP"])
@pytest.mark.parametrize("n_mels", [64, 40])
def test_tiny_variant_shapes(encoder_type, n_mels):
    torch.manual_seed(0)
    model = ResNetSE34V2(n_out=64, encoder_type=encoder_type, n_mels=n_mels, layers=(1, 1, 1, 1),
                         num_filters=(8, 16, 32, 64)).eval()
    wave = torch.randn(3, 16000)
    with torch.no_grad():
        assert model(wave).shape == (3, 64)
        assert model.frontend_features(wave).shape == (3, n_mels, 1 + 16000 // 160)
    assert model.fc.in_features == 64 * (n_mels // 8) * (2 if encoder_type == "ASP" else 1)


def test_unknown_encoder_type_is_rejected():
    with pytest.raises(ValueError, match="encoder_type"):
        ResNetSE34V2(encoder_type="GSP")


def test_main_model_factory_ignores_trainer_options():
    model = MainModel(nOut=32, num_filters=(8, 16, 32, 64), encoder_type="SAP",
                      nPerSpeaker=2, trainfunc="aamsoftmax")
    assert model.fc.out_features == 32 and model.encoder_type == "SAP"


def test_front_end_stays_float32_under_autocast():
    torch.manual_seed(0)
    model = ResNetSE34V2(n_out=64, num_filters=(8, 16, 32, 64)).eval()
    wave = torch.randn(2, 16000)
    reference = model.frontend_features(wave)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.torchfb(wave).dtype == torch.bfloat16  # unprotected, the mel projection would drop to bf16
        features = model.frontend_features(wave)
        embedding = model(wave)
    assert features.dtype == torch.float32
    assert torch.equal(features, reference)
    assert embedding.shape == (2, 64)


def test_training_step_produces_gradients():
    torch.manual_seed(0)
    model = ResNetSE34V2(n_out=16, layers=(1, 1, 1, 1), num_filters=(8, 16, 32, 64)).train()
    model(torch.randn(2, 8000)).pow(2).sum().backward()
    assert all(param.grad is not None for param in model.parameters())


def test_utterance_feature_norm_keeps_the_long_term_spectrum():
    torch.manual_seed(0)
    wave = torch.randn(1, 16000)
    tilted = torchaudio_lowpass(wave)
    instance = ResNetSE34V2(n_mels=40, num_filters=(8, 8, 16, 16))
    utterance = ResNetSE34V2(n_mels=40, num_filters=(8, 8, 16, 16), feature_norm="utterance")
    # per-band instance norm gives every band zero mean over time: the spectral tilt is gone
    assert instance.frontend_features(tilted).mean(dim=2).abs().max() < 1e-4
    band_means = utterance.frontend_features(tilted).mean(dim=2)
    assert band_means[0, :5].mean() - band_means[0, -5:].mean() > 0.5  # low-passed: high bands stay quieter
    features = utterance.frontend_features(tilted)
    assert abs(features.mean().item()) < 1e-4 and abs(features.std().item() - 1) < 1e-3
    with pytest.raises(ValueError, match="feature_norm"):
        ResNetSE34V2(feature_norm="cmvn")


def torchaudio_lowpass(wave: torch.Tensor) -> torch.Tensor:
    import torchaudio

    return torchaudio.functional.lowpass_biquad(wave, 16000, 1000.0)
