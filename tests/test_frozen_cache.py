"""Frozen sub-systems: training on cached embeddings equals running the frozen networks every batch;
the cache is keyed, reused, invalidated and rebuilt when damaged; kernel options (channels_last, compile)."""
from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import tiny_config
from tiny_run import tiny_corpus

from data.audio import load_waveform
from data.datasets import TrainTrialDataset, partition_audio_dir
from models.build import apply_kernel_options, build_asv_network, build_sasv_model
from runtime.config import build_config
from runtime.device import seed_everything
from runtime.signals import RunInterrupted
from training import frozen_cache
from training.frozen_cache import CachedTrialDataset, EmbeddingTable, cache_description, training_inputs
from training.tasks.sasv import training_sampler
from training.trainer import Trainer

FIXED = "ResNetSE34V2_AASIST_OC_fixed"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory)


def fixed_config(corpus: Path, **overrides):
    values = tiny_config(corpus, **{"model_arch": FIXED, "epoch": 2, "trials_per_epoch": 32, **overrides})
    values["optim"] = {**values["optim"], "lr": 0.01}  # large enough that the weights move visibly
    return build_config(values)


def train(config, folder: Path) -> Trainer:
    trainer = Trainer(config, folder, torch.device("cpu"), progress=False)
    trainer.fit()
    return trainer


class Messages:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


def seeded_model(config):
    seed_everything(config["seed"])
    return build_sasv_model(config)[0]


def inputs_for(config, folder: Path, model=None):
    model = model if model is not None else seeded_model(config)
    log, warn = Messages(), Messages()
    sampler, _ = training_sampler(config)
    result = training_inputs(config, model, sampler, device=torch.device("cpu"), experiment_dir=folder,
                             progress=False, log=log, warn=warn)
    return result, log, warn


def tensor_data_offset(path: Path) -> int:
    """Where the bytes of the first tensor of a torch.save file begin (an uncompressed zip member)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


@pytest.mark.slow
def test_cached_training_equals_frozen_networks_every_batch(corpus, tmp_path):
    cached = train(fixed_config(corpus), tmp_path / "cached")
    direct = train(fixed_config(corpus, cache_frozen_embeddings=False), tmp_path / "direct")
    assert len(list((tmp_path / "cached" / "frozen_embeddings").glob("train-*.pt"))) == 1
    assert not (tmp_path / "direct" / "frozen_embeddings").exists()
    assert cached.state.step == direct.state.step == 2 * 32 // 8
    initial = seeded_model(fixed_config(corpus)).backend.state_dict()  # both runs start from these
    moved = max(float((cached.task.model.backend.state_dict()[k].float() - v.float()).abs().max())
                for k, v in initial.items())
    assert moved > 1e-3  # the comparison below is between two trainings that did something
    # Same weights up to float rounding: the frozen networks see the same crops, but batched
    # differently (a training batch mixes trials; the cache embeds eval_batch_size utterances at a time).
    for name, tensor in direct.task.model.state_dict().items():
        torch.testing.assert_close(cached.task.model.state_dict()[name], tensor, atol=1e-5, rtol=0, msg=name)
    torch.testing.assert_close(cached.task.loss.center, direct.task.loss.center, atol=1e-5, rtol=0)
    for name in ("scores/dev_epoch_001.txt", "scores/dev_epoch_002.txt", "scores/eval.txt"):
        a = np.loadtxt(tmp_path / "cached" / name, usecols=3)
        b = np.loadtxt(tmp_path / "direct" / name, usecols=3)
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    losses = [[row["train_loss"] for row in trainer.state.metrics] for trainer in (cached, direct)]
    np.testing.assert_allclose(*losses, atol=1e-5, rtol=0)


def test_cache_reused_invalidated_and_rebuilt(corpus, tmp_path):
    config = fixed_config(corpus, dirs={**tiny_config(corpus)["dirs"], "embedding": str(tmp_path / "cache")})
    first, log, _ = inputs_for(config, tmp_path)
    n_utterances = len(training_sampler(config)[0].utterances())
    assert first.cache_file.parent == tmp_path / "cache"
    assert f"0 of {n_utterances} training utterances reused, {n_utterances} embedded now" in log.lines[0]
    again, log, warn = inputs_for(config, tmp_path)
    assert again.cache_file == first.cache_file and not warn.lines
    assert f"{n_utterances} of {n_utterances} training utterances reused, 0 embedded now" in log.lines[0]
    torch.testing.assert_close(again.forward.asv, first.forward.asv, atol=0, rtol=0)

    # Any change of a frozen weight gives another cache file.
    model = seeded_model(config)
    with torch.no_grad():
        model.cm_model.out_layer.bias[0] += 1e-3
    changed, log, _ = inputs_for(config, tmp_path, model)
    assert changed.cache_file != first.cache_file and "0 of" in log.lines[0]

    # A touched audio file is embedded again; the others are reused.
    utterance = training_sampler(config)[0].utterances()[0]
    audio = partition_audio_dir(config["dirs"]["database"], "train") / f"{utterance}.flac"
    status = audio.stat()
    os.utime(audio, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))
    _, log, _ = inputs_for(config, tmp_path)
    assert f"{n_utterances - 1} of {n_utterances} training utterances reused, 1 embedded now" in log.lines[0]

    # Damage: a flipped byte inside the tensors, then a truncated file; each is detected and rebuilt.
    path = first.cache_file
    data = bytearray(path.read_bytes())
    data[tensor_data_offset(path) + 5] ^= 0xFF  # one byte of the first stored tensor
    path.write_bytes(bytes(data))
    rebuilt, log, warn = inputs_for(config, tmp_path)
    assert len(warn.lines) == 1 and "is damaged" in warn.lines[0] and str(path) in warn.lines[0]
    assert f"0 of {n_utterances}" in log.lines[0]
    torch.testing.assert_close(rebuilt.forward.asv, again.forward.asv, atol=1e-6, rtol=0)
    path.write_bytes(path.read_bytes()[:1000])
    _, log, warn = inputs_for(config, tmp_path)
    assert len(warn.lines) == 1 and "is damaged (unreadable" in warn.lines[0]
    assert EmbeddingTable.load(path, cache_description(config, seeded_model(config))).asv.shape[0] \
        == n_utterances


@pytest.mark.parametrize("overrides, reason", [
    ({"train_crop": "random"}, "train_crop is random"),
    ({"cache_frozen_embeddings": False}, "cache_frozen_embeddings is false"),
    ({"train_cm": True}, "the CM network is trained"),
    ({"train_asv": True, "train_crop": "random"}, "the ASV network is trained"),
    ({"model_arch": "ResNetSE34V2_AASIST_OC"}, None),  # joint: nothing is frozen, nothing to say
])
def test_no_cache_says_why_once(corpus, tmp_path, overrides, reason):
    config = fixed_config(corpus, **overrides)
    result, log, _ = inputs_for(config, tmp_path)
    assert type(result.dataset) is TrainTrialDataset and result.cache_file is None
    if reason is None:
        assert log.lines == []
    else:
        assert len(log.lines) == 1 and reason in log.lines[0]
    assert not (tmp_path / "frozen_embeddings").exists()


def test_bad_audio_redrawn_as_with_waveforms(corpus, tmp_path):
    """With a bad training file, the cached trials (and redraw counts and messages) are the waveform path's."""
    database = tmp_path / "LA"
    source = partition_audio_dir(corpus / "LA", "train")
    target = partition_audio_dir(database, "train")
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).symlink_to(path)
    config = fixed_config(corpus, on_bad_audio="skip", dirs={**tiny_config(corpus)["dirs"], "database": str(database)})
    waveform = TrainTrialDataset(training_sampler(config)[0], target, samples=8000, crop="first", seed=config["seed"],
                                 on_bad_audio="skip")
    bad_utterance = waveform.trial(0, 0).enrollment
    (target / f"{bad_utterance}.flac").unlink()
    (target / f"{bad_utterance}.flac").write_bytes(b"")
    cached, _, _ = inputs_for(config, tmp_path)
    assert isinstance(cached.dataset, CachedTrialDataset)
    names = {row: name for name, row in cached.dataset.rows.items()}
    assert bad_utterance not in cached.dataset.rows
    redrawn = 0
    for index in range(24):
        enrollment, test, label, redraws, speakers = cached.dataset[(0, index)]
        enrollment_wave, test_wave, expected_label, expected_redraws, expected_speakers = waveform[(0, index)]
        assert (label, redraws) == (expected_label, expected_redraws)
        assert torch.equal(speakers, expected_speakers)
        assert torch.equal(load_waveform(target / f"{names[enrollment]}.flac", 8000), enrollment_wave)
        assert torch.equal(load_waveform(target / f"{names[test]}.flac", 8000), test_wave)
        redrawn += redraws
    assert redrawn >= 1
    assert cached.dataset._reported == waveform._reported != set()


def test_kernel_options(corpus, monkeypatch):
    config = fixed_config(corpus, train_cm=True)
    model = build_sasv_model(config)[0]
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    apply_kernel_options(model, torch.device("cpu"), compile=True)
    assert compiled == [model.backend, model.cm_model]  # the trained networks; the frozen ASV is left alone
    assert not model.asv_model.channels_last  # CPU: unchanged
    assert model.asv_model.conv1.weight.is_contiguous()

    # channels_last (what CUDA gets) computes the same embedding; checked here on the CPU kernels.
    network = build_asv_network(config).eval()
    wave = torch.randn(2, 8000)
    with torch.no_grad():
        expected = network(wave)
        network.use_channels_last()
        assert network.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(network(wave), expected, atol=1e-4, rtol=1e-4)


def test_stopped_build_keeps_what_was_embedded(corpus, tmp_path, monkeypatch):
    """A signal during the cache build (poll raises) keeps the saved steps; the next run embeds only the rest."""
    monkeypatch.setattr(frozen_cache, "SAVE_EVERY", 16)
    config = fixed_config(corpus)  # eval_batch_size 16: one batch per saved step
    n_utterances = len(training_sampler(config)[0].utterances())
    calls = []

    def poll() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RunInterrupted("stopped", 2)

    sampler, _ = training_sampler(config)
    with pytest.raises(RunInterrupted):
        training_inputs(config, seeded_model(config), sampler, device=torch.device("cpu"),
                        experiment_dir=tmp_path, progress=False, log=Messages(), warn=Messages(), poll=poll)
    _, log, warn = inputs_for(config, tmp_path)
    assert not warn.lines
    assert f"32 of {n_utterances} training utterances reused, {n_utterances - 32} embedded now" in log.lines[0]
