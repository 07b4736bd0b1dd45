"""SSL_AASIST reproduces TakHemlata/SSL_Anti-spoofing's model.py (fixtures ssl/README.md section 4): the
back-end from the reference's SSL features, the whole network from the waveform, its checkpoints' key names."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from models.aasist import AASIST
from models.aasist import CONFIG as AASIST_CONFIG
from models.checkpoint import CheckpointError, apply_state, load_cm_weights, save_subsystem_checkpoint
from models.ssl_aasist import CONFIG, SSLAASISTBackend
from runtime.config import ConfigError, load_config
from runtime.schema import Invalid

ATOL = 1e-5  # the fixture README's tolerance for SSL-AASIST logits and intermediates
ARRAYS = ("LL_out", "gat_S", "gat_T", "last_hidden", "output")


def _have_frontend() -> bool:
    try:
        return importlib.util.find_spec("models.ssl.frontend") is not None
    except ModuleNotFoundError:
        return False


needs_frontend = pytest.mark.skipif(not _have_frontend(), reason="models.ssl (the SSL front-end) is not merged yet")


@pytest.fixture(scope="module")
def ssl_fixtures(fixtures):
    folder = fixtures / "ssl"
    if not (folder / "ssl_aasist.npz").is_file():
        pytest.skip(f"SSL fixtures not found in {folder}")
    torch.set_num_threads(2)
    return folder


@pytest.fixture(scope="module")
def reference(ssl_fixtures):
    return dict(np.load(ssl_fixtures / "ssl_aasist.npz"))


@pytest.fixture(scope="module")
def backend(ssl_fixtures):
    """The back-end with the reference .pth's back-end tensors (every key but ssl_model.*), by its own names."""
    path = ssl_fixtures / "ssl_aasist_tiny.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = SSLAASISTBackend(ssl_dim=64)
    apply_state(model, {key: value for key, value in state.items() if not key.startswith("ssl_model.")},
                what="SSL_AASIST back-end", source=path)
    return model.eval()


def _run_backend(model: SSLAASISTBackend, ssl_x: np.ndarray) -> dict[str, np.ndarray]:
    """The back-end's outputs and the intermediates the fixture stores, caught by forward hooks."""
    caught: dict[str, torch.Tensor] = {}
    hooks = [getattr(model, name).register_forward_hook(lambda _m, _i, out, key=key: caught.__setitem__(key, out))
             for name, key in (("LL", "LL_out"), ("GAT_layer_S", "gat_S"), ("GAT_layer_T", "gat_T"))]
    try:
        with torch.no_grad():
            embedding, logits = model(torch.from_numpy(ssl_x))
    finally:
        for hook in hooks:
            hook.remove()
    return {**{key: value.numpy() for key, value in caught.items()}, "last_hidden": embedding.numpy(),
            "output": logits.numpy()}


def test_backend_reproduces_the_reference_on_the_batch(backend, reference):
    got = _run_backend(backend, reference["ssl_x"])
    for key in ARRAYS:
        assert got[key].shape == reference[key].shape, key
        np.testing.assert_allclose(got[key], reference[key], atol=ATOL, rtol=0, err_msg=key)
    assert backend.embedding_dim == reference["last_hidden"].shape[1] == 160


def test_backend_reproduces_the_reference_one_wave_at_a_time(backend, reference):
    for row in range(reference["ssl_x"].shape[0]):
        got = _run_backend(backend, reference["ssl_x"][row:row + 1])
        for key in ARRAYS:
            np.testing.assert_allclose(got[key], reference[key][row:row + 1], atol=ATOL, rtol=0,
                                       err_msg=f"{key}, wave {row}")


def test_backend_refuses_features_too_short_for_its_max_pool(backend):
    with pytest.raises(ValueError, match="frames >= 3"):
        backend(torch.zeros(1, 2, 64))


@needs_frontend
def test_full_model_reproduces_the_reference_from_the_waveform(ssl_fixtures, reference, tmp_path):
    """The reference .pth (front-end in fairseq names) through load_cm_weights, then our own checkpoint of it
    (torchaudio names) loaded into a fresh network: both give the reference logits."""
    from models.ssl_aasist import SSL_AASIST

    model_config = {"architecture": "SSL_AASIST", "ssl": {"weights": str(ssl_fixtures / "ssl_frontends" /
                                                                         "xlsr_tiny_fairseq.pt")}}
    model = SSL_AASIST(model_config)
    load_cm_weights(model, ssl_fixtures / "ssl_aasist_tiny.pth")
    model.eval()
    wave = torch.from_numpy(reference["wave"])
    with torch.no_grad():
        embedding, logits = model(wave)
    np.testing.assert_allclose(logits.numpy(), reference["output"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(embedding.numpy(), reference["last_hidden"], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="freq_aug"):
        model(wave[:1], freq_aug=True)

    ours = save_subsystem_checkpoint(tmp_path / "ours.ckpt", cm_model=model)
    again = SSL_AASIST(model_config)
    load_cm_weights(again, ours)
    loaded = again.state_dict()
    assert all(torch.equal(value, loaded[key]) for key, value in model.state_dict().items())


def test_a_state_dict_of_another_architecture_is_one_line_naming_the_file(ssl_fixtures, tmp_path):
    aasist_file = tmp_path / "AASIST.pth"
    torch.save(AASIST(AASIST_CONFIG.defaults()).state_dict(), aasist_file)
    with pytest.raises(CheckpointError) as error:
        load_cm_weights(SSLAASISTBackend(ssl_dim=64), aasist_file)
    assert str(aasist_file) in str(error.value) and "\n" not in str(error.value)
    assert "pos_S" in str(error.value)  # 23 spectral nodes of the sinc front-end against the LL's 42

    ssl_file = ssl_fixtures / "ssl_aasist_tiny.pth"
    with pytest.raises(CheckpointError) as error:
        load_cm_weights(AASIST(AASIST_CONFIG.defaults()), ssl_file)
    assert str(ssl_file) in str(error.value) and "\n" not in str(error.value)


def test_the_declaration_refuses_bad_keys_naming_them(tmp_path):
    good = {"architecture": "SSL_AASIST", "ssl": {"weights": None}}
    for bad, key in (({**good, "gat_dim": [64, 32]}, "gat_dim"),
                     ({**good, "filts": [128, [1, 32], [32, 32], [32, 64], [32, 64]]}, "filts[4][0]"),
                     ({**good, "pool_ratios": [0.5, 0.5, 1.5, 0.5]}, "pool_ratios[2]"),
                     ({**good, "ssl": "xlsr"}, "ssl"),
                     ({"architecture": "SSL_AASIST"}, "ssl")):
        with pytest.raises(Invalid) as error:
            CONFIG.validate(bad, typed=False)
        assert error.value.key == key
    path = tmp_path / "exp.conf"
    path.write_text('{"system": "cm", "cm_model": {"architecture": "SSL_AASIST", "ssl": {"weights": null}, '
                    '"gat_dims": [64]}}')
    with pytest.raises(ConfigError) as error:  # through the config loader, as a user meets it
        load_config(path)
    assert "'cm_model.gat_dims'" in str(error.value) and str(path) in str(error.value)


def test_min_samples_gives_the_front_end_three_frames():
    # The standard feature encoder: receptive field 400 samples, hop 320 (T = floor((n - 400) / 320) + 1).
    assert CONFIG.min_samples({"ssl": {"architecture": "xlsr_300m"}})[0] == 400 + 2 * 320
    tiny = {"extractor_conv_layer_config": [[8, 4, 2], [8, 3, 3]]}  # receptive 4 + 2 * 2 = 8, hop 6
    assert CONFIG.min_samples({"ssl": {"architecture": tiny}})[0] == 8 + 2 * 6


class _Renaming(torch.nn.Linear):
    """A network whose files name its weight `w` (as a foreign toolkit's would)."""

    def adapt_state_dict(self, state):
        if "broken" in state:
            raise ValueError("cannot rename 'broken'")
        return {("weight" if key == "w" else key): value for key, value in state.items()}


def test_apply_state_renames_through_the_network_hook_and_reports_its_failure_naming_the_file():
    network = _Renaming(2, 1)
    apply_state(network, {"w": torch.ones(1, 2), "bias": torch.zeros(1)}, what="CM model", source="foreign.pth")
    assert torch.equal(network.weight, torch.ones(1, 2))
    with pytest.raises(CheckpointError) as error:
        apply_state(network, {"broken": torch.ones(1)}, what="CM model", source="foreign.pth")
    assert str(error.value).startswith("foreign.pth: ") and "\n" not in str(error.value)
