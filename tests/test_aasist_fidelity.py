"""AASIST and AASIST-L reproduce the reference outputs with the real weights (fixtures README section 4)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.aasist import AASIST, SincFilterBank

OUT_TOL = dict(atol=1e-4, rtol=1e-4)
SINC_ATOL = 1e-8  # below the 3.9e-8 gap between the numpy-1 and numpy-2 filter banks
GOLDEN_JSON = "aasist_fidelity.json"


@pytest.fixture(scope="module")
def golden(fixtures, golden_json):
    torch.set_num_threads(2)
    meta = golden_json(GOLDEN_JSON)
    arrays = np.load(fixtures / "golden" / GOLDEN_JSON.replace(".json", ".npz"))
    return meta, arrays


@pytest.fixture(scope="module")
def checkpoints(fixtures, golden):
    """tag -> (model_config, state_dict) for every model the golden JSON describes."""
    meta, _ = golden
    loaded = {}
    for tag, paths in meta["models"].items():
        config_path = fixtures / paths["config"].split()[0]  # "weights/X.conf (model_config)"
        with open(config_path) as handle:
            config = json.load(handle)["model_config"]
        # The released tensors live on CUDA.
        state = torch.load(fixtures / paths["weights"], map_location="cpu", weights_only=True)
        loaded[tag] = (config, state)
    return loaded


def _build(config: dict, state: dict) -> AASIST:
    model = AASIST(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def models(checkpoints):
    return {tag: _build(config, state) for tag, (config, state) in checkpoints.items()}


def _run(model: AASIST, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        embedding, logits = model(torch.from_numpy(wave))
    return embedding.numpy(), logits.numpy()


@pytest.fixture(scope="module")
def primary_tag(golden) -> str:
    """The full AASIST entry of the golden JSON (used for the single-model checks)."""
    meta, _ = golden
    return next(tag for tag, paths in meta["models"].items() if paths["weights"].endswith("/AASIST.pth"))


def test_golden_covers_both_variants(golden):
    meta, _ = golden
    assert sorted(paths["weights"].rsplit("/", 1)[-1] for paths in meta["models"].values()) == [
        "AASIST-L.pth", "AASIST.pth"]


def test_state_dict_matches_release(models, checkpoints):
    for tag, model in models.items():
        assert list(model.state_dict()) == list(checkpoints[tag][1]), tag
        assert "conv_time.band_pass" not in model.state_dict()


def test_sinc_band_pass_matches_numpy2_build(models, golden):
    _, arrays = golden
    expected, numpy1 = arrays["sinc_band_pass"], arrays["sinc_band_pass_numpy1"]
    assert np.abs(expected - numpy1).max() > SINC_ATOL  # the check can tell the two builds apart
    for tag, model in models.items():
        np.testing.assert_allclose(model.conv_time.band_pass.numpy(), expected, rtol=0, atol=SINC_ATOL,
                                   err_msg=tag)


@pytest.mark.slow
def test_rows_alone(models, golden):
    _, arrays = golden
    waves = arrays["wave_64600"]
    for tag, model in models.items():
        for row in range(waves.shape[0]):
            embedding, logits = _run(model, waves[row:row + 1])
            np.testing.assert_allclose(embedding[0], arrays[f"{tag}_emb_64600"][row], **OUT_TOL,
                                       err_msg=f"{tag} emb row {row}")
            np.testing.assert_allclose(logits[0], arrays[f"{tag}_logits_64600"][row], **OUT_TOL,
                                       err_msg=f"{tag} logits row {row}")


@pytest.mark.slow
def test_batch(models, golden):
    _, arrays = golden
    for tag, model in models.items():
        embedding, logits = _run(model, arrays["wave_64600"])
        np.testing.assert_allclose(embedding, arrays[f"{tag}_emb_64600_batch6"], **OUT_TOL, err_msg=tag)
        np.testing.assert_allclose(logits, arrays[f"{tag}_logits_64600_batch6"], **OUT_TOL, err_msg=tag)


@pytest.mark.slow
def test_other_lengths(models, golden):
    meta, arrays = golden
    others = sorted(key for key in meta["inputs"] if key.startswith("wave_other_"))
    assert others
    for tag, model in models.items():
        for name in others:
            suffix = name[len("wave_"):]
            embedding, logits = _run(model, arrays[name][None])
            label = f"{tag} {name}"
            np.testing.assert_allclose(embedding[0], arrays[f"{tag}_emb_{suffix}"], **OUT_TOL, err_msg=label)
            np.testing.assert_allclose(logits[0], arrays[f"{tag}_logits_{suffix}"], **OUT_TOL, err_msg=label)


def test_numpy1_filters_reproduce_numpy1_outputs(models, golden, primary_tag):
    # Proves the forward pass really uses the band_pass buffer.
    _, arrays = golden
    model = models[primary_tag]
    original = model.conv_time.band_pass.clone()
    try:
        model.conv_time.band_pass.copy_(torch.from_numpy(arrays["sinc_band_pass_numpy1"]))
        embedding, logits = _run(model, arrays["wave_64600"][:1])
    finally:
        model.conv_time.band_pass.copy_(original)
    np.testing.assert_allclose(embedding[0], arrays[f"{primary_tag}_emb_64600_numpy1sinc"][0], **OUT_TOL)
    np.testing.assert_allclose(logits[0], arrays[f"{primary_tag}_logits_64600_numpy1sinc"][0], **OUT_TOL)


def _logit_shift(model: AASIST, arrays, tag: str) -> float:
    _, logits = _run(model, arrays["wave_64600"][:1])
    return float(np.abs(logits[0] - arrays[f"{tag}_logits_64600"][0]).max())


def test_reset_batchnorm_statistics_breaks_fidelity(checkpoints, golden, primary_tag):
    _, arrays = golden
    config, state = checkpoints[primary_tag]
    state = dict(state)
    for key in state:
        if key.endswith("running_mean"):
            state[key] = torch.zeros_like(state[key])
        elif key.endswith("running_var"):
            state[key] = torch.ones_like(state[key])
    assert _logit_shift(_build(config, state), arrays, primary_tag) > 100 * OUT_TOL["atol"]


def test_swapped_same_shape_layers_break_fidelity(checkpoints, golden, primary_tag):
    _, arrays = golden
    config, state = checkpoints[primary_tag]
    state = dict(state)
    first, second = "encoder.4.0.conv1.weight", "encoder.5.0.conv1.weight"
    assert state[first].shape == state[second].shape
    state[first], state[second] = state[second], state[first]
    assert _logit_shift(_build(config, state), arrays, primary_tag) > 100 * OUT_TOL["atol"]


def test_pre_activation_bn1_is_unused_but_bn2_is(checkpoints, golden, primary_tag):
    _, arrays = golden
    config, state = checkpoints[primary_tag]
    scrambled_bn1 = dict(state, **{"encoder.2.0.bn1.running_mean": state["encoder.2.0.bn1.running_mean"] + 5.0})
    assert _logit_shift(_build(config, scrambled_bn1), arrays, primary_tag) <= OUT_TOL["atol"]
    scrambled_bn2 = dict(state, **{"encoder.2.0.bn2.running_mean": state["encoder.2.0.bn2.running_mean"] + 5.0})
    assert _logit_shift(_build(config, scrambled_bn2), arrays, primary_tag) > 100 * OUT_TOL["atol"]


def test_band_pass_follows_dtype_and_stays_out_of_state_dict(checkpoints, primary_tag):
    config, _ = checkpoints[primary_tag]
    model = AASIST(config).to(torch.float64)
    assert model.conv_time.band_pass.dtype == torch.float64
    assert not any(name.startswith("conv_time") for name, _ in model.named_parameters())


def test_frequency_mask_zeroes_a_contiguous_band_run():
    torch.manual_seed(0)
    bank = SincFilterBank(out_channels=70, kernel_size=128)
    assert bank.kernel_size == 129
    wave = torch.randn(1, 1, 400)
    widths = []
    for _ in range(20):
        silent = (bank(wave, mask=True)[0].abs().sum(dim=1) == 0).nonzero().flatten()
        if len(silent):
            assert silent.tolist() == list(range(int(silent[0]), int(silent[-1]) + 1))
        widths.append(len(silent))
    assert max(widths) > 0 and max(widths) <= 19
    assert (bank(wave)[0].abs().sum(dim=1) > 0).all()


def test_training_forward_shapes_and_gradients(checkpoints):
    config = min((config for config, _ in checkpoints.values()), key=lambda c: c["gat_dims"][0])  # the light one
    torch.manual_seed(0)
    model = AASIST(config).train()
    embedding, logits = model(torch.randn(2, 16000), freq_aug=True)
    assert embedding.shape == (2, 5 * config["gat_dims"][1]) and logits.shape == (2, 2)
    logits.sum().backward()
    assert model.out_layer.weight.grad is not None and model.pos_S.grad is not None


def test_config_errors_name_the_key():
    with pytest.raises(KeyError, match="gat_dims"):
        AASIST({"filts": [70, [1, 32]], "pool_ratios": [0.5] * 4, "temperatures": [2.0] * 4, "first_conv": 128})
