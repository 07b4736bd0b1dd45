"""The SSL front-end (models/ssl) reproduces the reference hidden states of ../shared/fixtures/ssl (README section
3: Hugging Face transformers 5.25 and fairseq outputs of two tiny random models) from each weight format, and
refuses unusable weight files and settings in one line naming the file or the key."""
from __future__ import annotations

import argparse
import json
import shutil
import struct

import numpy as np
import pytest
import torch
import torchaudio

from models.checkpoint import CheckpointError
from models.ssl.frontend import SSLFrontEnd, build_model, build_ssl_frontend, fairseq_to_torchaudio
from models.ssl.presets import FACTORIES, PRESETS
from models.ssl.weights import SSLWeightsError, infer_architecture, read_safetensors
from runtime.errors import ConfigError, UserError

ATOL = 1e-5  # the fixture README's tolerance for front-end hidden states
# The tiny models' architectures, written out from the fixture README (section 3), not read from their files.
TINY_CONV = [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2
TINY = dict(extractor_conv_layer_config=TINY_CONV, encoder_embed_dim=64, encoder_pos_conv_kernel=16,
            encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4, encoder_ff_interm_features=128)
XLSR_TINY = dict(TINY, extractor_mode="layer_norm", extractor_conv_bias=True, encoder_layer_norm_first=True)
WAVLM_TINY = dict(TINY, extractor_mode="group_norm", extractor_conv_bias=False, encoder_layer_norm_first=False,
                  encoder_num_buckets=320, encoder_max_distance=800)


@pytest.fixture(scope="module")
def ssl_dir(fixtures):
    folder = fixtures / "ssl"
    if not (folder / "ssl_frontends.npz").is_file():
        pytest.skip(f"SSL fixtures not found at {folder}")
    return folder


@pytest.fixture(scope="module")
def reference(ssl_dir):
    return dict(np.load(ssl_dir / "ssl_frontends.npz"))


def _assert_reproduces(frontend: SSLFrontEnd, reference: dict, model: str, last_waves=(0, 1)) -> None:
    """Every hidden state of both waves, and the `last` output of `last_waves`, within the README's tolerance."""
    frontend.eval()
    for wave in (0, 1):
        x = torch.from_numpy(reference[f"wave_{wave}"])[None]
        with torch.no_grad():
            states = frontend.hidden_states(x)
            last = frontend(x) if wave in last_waves else None
        assert len(states) == 3
        for index, state in enumerate(states):
            np.testing.assert_allclose(state.numpy(), reference[f"{model}_w{wave}_hidden_{index}"], rtol=0, atol=ATOL,
                                       err_msg=f"{model} wave {wave} hidden state {index}")
        if last is not None:
            np.testing.assert_allclose(last.numpy(), reference[f"{model}_w{wave}_last_hidden_state"], rtol=0,
                                       atol=ATOL)


@pytest.mark.parametrize("model", ["xlsr", "wavlm"])
def test_hf_folder_reproduces_every_hidden_state(ssl_dir, reference, model):
    frontend = build_ssl_frontend({"weights": str(ssl_dir / "ssl_frontends" / f"{model}_tiny")})
    assert (frontend.output_dim, frontend.n_layers) == (64, 2)
    _assert_reproduces(frontend, reference, model)


def test_fairseq_checkpoint_reproduces_every_hidden_state(ssl_dir, reference):
    frontend = build_ssl_frontend({"weights": str(ssl_dir / "ssl_frontends" / "xlsr_tiny_fairseq.pt"),
                                   "architecture": XLSR_TINY})  # an architecture given must agree: it does
    _assert_reproduces(frontend, reference, "xlsr")


def test_old_fairseq_args_namespace(ssl_dir, reference, tmp_path):
    raw = torch.load(ssl_dir / "ssl_frontends" / "xlsr_tiny_fairseq.pt", weights_only=True)
    path = tmp_path / "old.pt"
    torch.save({"model": raw["model"], "args": argparse.Namespace(**raw["cfg"]), "cfg": None}, path)
    _assert_reproduces(build_ssl_frontend({"weights": str(path)}), reference, "xlsr",
                       last_waves=(0,))


@pytest.mark.parametrize("naming", ["fairseq", "huggingface", "torchaudio"])
def test_plain_state_dict_with_architecture(ssl_dir, reference, tmp_path, naming):
    if naming == "fairseq":
        state = torch.load(ssl_dir / "ssl_frontends" / "xlsr_tiny_fairseq.pt", weights_only=True)["model"]
    elif naming == "huggingface":
        state = {f"wav2vec2.{key}": value for key, value in
                 read_safetensors(ssl_dir / "ssl_frontends" / "xlsr_tiny" / "model.safetensors").items()}
    else:
        state = build_ssl_frontend({"weights": str(ssl_dir / "ssl_frontends" / "xlsr_tiny")}).model.state_dict()
    path = tmp_path / "plain.pth"
    torch.save(state, path)
    _assert_reproduces(build_ssl_frontend({"weights": str(path), "architecture": XLSR_TINY}), reference, "xlsr",
                       last_waves=(0,))


def test_plain_wavlm_safetensors_with_architecture(ssl_dir, reference, tmp_path):
    path = tmp_path / "wavlm.safetensors"
    shutil.copy(ssl_dir / "ssl_frontends" / "wavlm_tiny" / "model.safetensors", path)
    _assert_reproduces(build_ssl_frontend({"weights": str(path), "architecture": WAVLM_TINY}), reference, "wavlm",
                       last_waves=(0,))


@pytest.mark.parametrize("model", ["xlsr", "wavlm"])
def test_layer_and_one_hot_weighted_outputs(ssl_dir, reference, model):
    x = torch.from_numpy(reference["wave_0"])[None]
    weights = str(ssl_dir / "ssl_frontends" / f"{model}_tiny")
    weighted = build_ssl_frontend({"weights": weights, "output": "weighted"}).eval()
    chosen = build_ssl_frontend({"weights": weights, "output": "layer", "layer": 0}).eval()
    for index in range(3):
        chosen.layer = index
        one_hot = torch.full((3,), -torch.inf)
        one_hot[index] = 0.0
        with torch.no_grad():
            weighted.layer_weights.copy_(one_hot)
            outputs = chosen(x), weighted(x)
        for output in outputs:
            np.testing.assert_allclose(output.numpy(), reference[f"{model}_w0_hidden_{index}"], rtol=0, atol=ATOL)
    # XLS-R's last output is the final LayerNorm of hidden state 2 (HF 5.x: last_hidden_state != hidden_states[-1]).
    gap = np.abs(reference[f"{model}_w0_last_hidden_state"] - reference[f"{model}_w0_hidden_2"]).max()
    assert (gap > 1.0) if model == "xlsr" else (gap == 0.0)


def test_weighted_output_trains_its_weights(ssl_dir):
    frontend = build_ssl_frontend({"weights": str(ssl_dir / "ssl_frontends" / "xlsr_tiny"), "output": "weighted",
                                   "freeze": "all"})
    frontend.train()
    frontend(torch.randn(2, 4000)).square().mean().backward()
    assert frontend.layer_weights.grad is not None and frontend.layer_weights.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in frontend.model.parameters())


def test_freeze_choices(ssl_dir):
    weights = str(ssl_dir / "ssl_frontends" / "xlsr_tiny")
    cnn = build_ssl_frontend({"weights": weights, "freeze": "feature_encoder"})
    assert not any(p.requires_grad for p in cnn.model.feature_extractor.parameters())
    assert all(p.requires_grad for p in cnn.model.encoder.parameters())
    assert len(list(cnn.ssl_parameters())) == len(list(cnn.model.encoder.parameters()))
    frozen = build_ssl_frontend({"weights": weights, "freeze": "all"})
    frozen.train()
    assert frozen.training and not any(module.training for module in frozen.model.modules())
    assert list(frozen.ssl_parameters()) == []
    tuned = build_ssl_frontend({"weights": weights}).train()
    assert all(module.training for module in tuned.model.modules())
    assert len(list(tuned.ssl_parameters())) == len(list(tuned.model.parameters()))


@pytest.mark.slow  # the first non-reentrant torch.utils.checkpoint call imports torch._dynamo (~5 s); the rest < 1 s
@pytest.mark.parametrize("model", ["xlsr", "wavlm"])
def test_gradient_checkpointing_changes_nothing(ssl_dir, model):
    # Training mode with the file's dropouts (0.1) and layer drop: the recomputation must replay the same draws.
    weights = str(ssl_dir / "ssl_frontends" / f"{model}_tiny")
    x = torch.from_numpy(np.random.RandomState(0).standard_normal((2, 4000)).astype(np.float32))
    results = []
    for flag in (False, True):
        frontend = build_ssl_frontend({"weights": weights, "output": "weighted", "gradient_checkpointing": flag})
        frontend.train()
        torch.manual_seed(3)
        output = frontend(x)
        output.square().mean().backward()
        results.append((output.detach(), {name: p.grad for name, p in frontend.named_parameters()}))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    assert torch.equal(plain, checkpointed)
    assert plain_grads.keys() == checkpointed_grads.keys()
    assert plain_grads["model.encoder.transformer.layers.1.feed_forward.output_dense.weight"] is not None
    for name, grad in plain_grads.items():  # a layer that layer drop skipped has no gradient, in both runs
        assert (grad is None) == (checkpointed_grads[name] is None), name
        if grad is not None:
            torch.testing.assert_close(checkpointed_grads[name], grad, rtol=0, atol=1e-7, msg=name)


def test_fairseq_to_torchaudio_drops_pretraining_tensors(ssl_dir):
    state = torch.load(ssl_dir / "ssl_aasist_tiny.pth", weights_only=True)
    ssl = {key.removeprefix("ssl_model.model."): value for key, value in state.items()
           if key.startswith("ssl_model.model.")}
    converted = fairseq_to_torchaudio(ssl)
    assert not any(key.startswith(("mask_emb", "quantizer", "project_q", "final_proj")) for key in converted)
    model = build_model(dict(XLSR_TINY, **{key: 0.0 for key in ("encoder_projection_dropout",
                         "encoder_attention_dropout", "encoder_ff_interm_dropout", "encoder_dropout",
                         "encoder_layer_drop")}))
    model.load_state_dict(converted, strict=True)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_torchaudios_factories(name):
    with torch.device("meta"):
        ours = build_model(PRESETS[name])
        theirs = getattr(torchaudio.models, FACTORIES[name])()
    assert repr(ours) == repr(theirs)  # module tree, sizes, dropout rates
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    for mine, reference in zip(ours.encoder.transformer.layers, theirs.encoder.transformer.layers):
        assert mine.layer_norm_first == reference.layer_norm_first
        assert mine.attention.num_heads == reference.attention.num_heads
    assert ours.encoder.transformer.layer_drop == theirs.encoder.transformer.layer_drop


@pytest.mark.parametrize("name", ["xlsr_300m", "wavlm_large", "wav2vec2_base"])
def test_architecture_inferred_from_preset_shapes(name, tmp_path):
    with torch.device("meta"):
        state = build_model(PRESETS[name]).state_dict()
    found, arguments = infer_architecture(state, tmp_path / "x.pt")
    assert arguments == PRESETS[found] and found == name


# --------------------------------------------------------------------------- bad input
def _write_safetensors(path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def test_safetensors_dtypes(tmp_path):
    arrays = {"h": np.array([1.5, -2.0], np.float16), "q": np.array([[7, -8]], np.int64),
              "z": np.zeros((0, 3), np.float32)}
    header, data = {}, b""
    for name, array in arrays.items():
        header[name] = {"dtype": {"float16": "F16", "int64": "I64", "float32": "F32"}[str(array.dtype)],
                        "shape": list(array.shape), "data_offsets": [len(data), len(data) + array.nbytes]}
        data += array.tobytes()
    header["b"] = {"dtype": "BF16", "shape": [1], "data_offsets": [len(data), len(data) + 2]}
    data += b"\x80\x3f"  # bfloat16 1.0
    path = tmp_path / "t.safetensors"
    _write_safetensors(path, json.dumps(header).encode(), data)
    tensors = read_safetensors(path)
    for name, array in arrays.items():
        assert str(tensors[name].dtype).endswith(str(array.dtype)) and np.array_equal(tensors[name].numpy(), array)
    assert tensors["b"].dtype == torch.bfloat16 and tensors["b"].item() == 1.0


@pytest.mark.parametrize("case", ["huge_header", "not_json", "bad_offsets", "truncated_data", "short"])
def test_bad_safetensors_named(tmp_path, case):
    path = tmp_path / "m.safetensors"
    entry = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    if case == "huge_header":
        path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    elif case == "not_json":
        _write_safetensors(path, b"{not json", b"")
    elif case == "bad_offsets":
        _write_safetensors(path, json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode(),
                           bytes(16))
    elif case == "truncated_data":
        _write_safetensors(path, json.dumps(entry).encode(), bytes(10))
    else:
        path.write_bytes(b"\x01\x02")
    with pytest.raises(SSLWeightsError, match=str(path)) as error:
        build_ssl_frontend({"weights": str(path), "architecture": XLSR_TINY})
    assert "\n" not in str(error.value)


def _one_line(settings, match: str, kind=UserError):
    with pytest.raises(kind, match=match) as error:
        build_ssl_frontend(settings)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_weight_files_of_other_architectures(fixtures, ssl_dir, tmp_path):
    _one_line({"weights": str(fixtures / "weights" / "AASIST-L.pth")}, "AASIST-L.pth.*expected", SSLWeightsError)
    _one_line({"weights": str(ssl_dir / "ssl_aasist_tiny.pth")}, "ssl_aasist_tiny.pth.*SSL_AASIST", SSLWeightsError)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"],
                                                  "hidden_size": 64}))
    _write_safetensors(bert / "model.safetensors", b"{}")
    message = _one_line({"weights": str(bert)}, "config.json.*BertModel.*Wav2Vec2Model", SSLWeightsError)
    assert str(bert) in message
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(ssl_dir / "ssl_frontends" / "xlsr_tiny" / "model.safetensors", no_config)
    _one_line({"weights": str(no_config)}, f"{no_config}.*config.json", SSLWeightsError)


def test_truncated_and_mismatched_files(ssl_dir, tmp_path):
    source = ssl_dir / "ssl_frontends" / "xlsr_tiny_fairseq.pt"
    truncated = tmp_path / "xlsr.pt"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    _one_line({"weights": str(truncated)}, f"{truncated}.*expected", SSLWeightsError)
    garbage = tmp_path / "random.bin"
    garbage.write_bytes(np.random.RandomState(1).bytes(4096))
    _one_line({"weights": str(garbage)}, str(garbage), SSLWeightsError)
    # A WavLM model's tensors under an XLS-R config: every misfit is listed, in one line naming the file.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(ssl_dir / "ssl_frontends" / "xlsr_tiny" / "config.json", mixed)
    shutil.copy(ssl_dir / "ssl_frontends" / "wavlm_tiny" / "model.safetensors", mixed)
    _one_line({"weights": str(mixed)}, "model.safetensors: SSL front-end weights do not fit", SSLWeightsError)
    # Shapes that do not fit the architecture given for a plain state dict.
    plain = tmp_path / "plain.pt"
    torch.save(torch.load(source, weights_only=True)["model"], plain)
    _one_line({"weights": str(plain), "architecture": dict(XLSR_TINY, encoder_ff_interm_features=256)},
              f"{plain}.*another shape", SSLWeightsError)
    _one_line({"weights": str(plain)}, f"{plain}.*match no preset.*ssl.architecture", SSLWeightsError)
    assert issubclass(SSLWeightsError, CheckpointError)


def test_settings_errors_name_the_key(ssl_dir):
    weights = str(ssl_dir / "ssl_frontends" / "xlsr_tiny")
    message = _one_line({"weights": weights, "output": "layer", "layer": 3}, "'ssl.layer'", ConfigError)
    assert "0..2" in message
    _one_line({"weights": weights, "output": "layer"}, "'ssl.layer'", ConfigError)
    _one_line({"weights": weights, "architecture": "wavlm_base"}, f"'ssl.architecture'.*{weights}", ConfigError)
    _one_line({"weights": weights, "freeze": "cnn"}, "'ssl.freeze'", ConfigError)
    _one_line({}, "'ssl.weights'", ConfigError)
    _one_line({"architecture": dict(XLSR_TINY, encoder_num_heads=5)}, "'ssl.architecture.encoder_num_heads'",
              ConfigError)
    _one_line({"architecture": "xlsr_3b"}, "'ssl.architecture'", ConfigError)
    with pytest.raises(ConfigError, match=r"^conf/x\.conf: key 'cm_model\.ssl\.lr'"):
        build_ssl_frontend({"architecture": XLSR_TINY, "lr": -1.0}, where="conf/x.conf", prefix="cm_model.ssl.")
