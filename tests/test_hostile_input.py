"""Hostile input in the data and config layers: harmless variants (a UTF-8 byte-order mark, CRLF line
ends) give the same results; everything else is refused with one line that names the culprit (file and
line, or key and value), never a number that looks right.

Grouped by kind: protocols and lists, config files, config values, audio."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from data.audio import MAX_ABS_SAMPLE, AudioError, read_audio
from data.datasets import WaveformDataset
from data.protocols import (
    ProtocolError,
    read_cm_protocol,
    read_enrollment_files,
    read_enrollment_utterances,
    read_sasv_trials,
)
from data.speaker_lists import CroppedUtteranceDataset, read_voxceleb_train_list, read_voxceleb_trials
from runtime.config import (
    ASV_MIN_SAMPLES,
    RANGES,
    SCHEMA,
    ConfigError,
    _fields,
    aasist_min_samples,
    build_config,
    config_text,
    load_config,
)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.conf"))


def one_line(error: pytest.ExceptionInfo, *needles: str) -> str:
    """The error's message is one line holding every needle."""
    message = str(error.value)
    assert "\n" not in message and "\r" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# =========================================================================== protocols and lists
CM = "LA_0079 LA_T_1 - - bonafide\nLA_0079 LA_T_2 - A01 spoof\nLA_0080 LA_T_3 - - bonafide\n"
TRIALS = "LA_0079 LA_D_1 bonafide target\nLA_0080 LA_D_1 bonafide nontarget\nLA_0079 LA_D_2 A07 spoof\n"
ENROLLMENT_FILES = "LA_0079 LA_0079_LA_D_5\nLA_0080 LA_0080_LA_D_6\n"
ENROLLMENT_UTTERANCES = "LA_0079 LA_D_5,LA_D_7\nLA_0080 LA_D_6\n"
VOX_TRAIN = "id10001 id10001/a/00001.wav\nid10002 id10002/b/00001.wav\n"
VOX_TRIALS = "1 id10001/a/00001.wav id10001/c/00002.wav\n0 id10001/a/00001.wav id10002/b/00001.wav\n"

READERS = {  # name: (reader of one file, well-formed content)
    "cm_protocol": (read_cm_protocol, CM),
    "sasv_trials": (read_sasv_trials, TRIALS),
    "enrollment_files": (read_enrollment_files, ENROLLMENT_FILES),
    "enrollment_utterances": (lambda path: read_enrollment_utterances([path]), ENROLLMENT_UTTERANCES),
    "voxceleb_train_list": (lambda path: read_voxceleb_train_list(path, "/root"), VOX_TRAIN),
    "voxceleb_trials": (read_voxceleb_trials, VOX_TRIALS),
}


def write(folder: Path, text: str, name: str = "list.txt", *, bom: bool = False, crlf: bool = False) -> Path:
    path = folder / name
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    return path


@pytest.mark.parametrize("variant", ["bom", "crlf", "bom_and_crlf"])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_bom_and_crlf_give_the_same_entries(tmp_path, reader, variant):
    read, text = READERS[reader]
    plain = read(write(tmp_path, text, "plain.txt"))
    odd = read(write(tmp_path, text, "odd.txt", bom="bom" in variant, crlf="crlf" in variant))
    assert odd == plain


def test_real_trial_list_with_bom_and_crlf(fixtures, tmp_path):
    original = fixtures / "protocols" / "ASVspoof2019.LA.asv.dev.gi.trl.txt"
    windows = write(tmp_path, original.read_text(), "trials.txt", bom=True, crlf=True)
    assert read_sasv_trials(windows) == read_sasv_trials(original)


def test_line_numbers_count_lines_as_an_editor_does(tmp_path):
    """A form feed inside a line is not a line break (str.splitlines would make it one)."""
    path = write(tmp_path, "1 a.wav b.wav\n0 a.wav\x0c c.wav\n0 a.wav b.wav\n")
    with pytest.raises(ProtocolError) as error:
        read_voxceleb_trials(path)
    one_line(error, f"{path}:3:", "first on line 1")


def test_duplicated_sasv_trial_names_both_lines(tmp_path):
    path = write(tmp_path, TRIALS + "\nLA_0079 LA_D_1 bonafide target\n")
    with pytest.raises(ProtocolError) as error:
        read_sasv_trials(path)
    one_line(error, f"{path}:5:", "duplicate trial of speaker 'LA_0079' with test utterance 'LA_D_1'",
             "first on line 1")


def test_same_pair_with_another_key_is_a_duplicated_trial(tmp_path):
    path = write(tmp_path, TRIALS + "LA_0080 LA_D_1 bonafide target\n")
    with pytest.raises(ProtocolError) as error:
        read_sasv_trials(path)
    one_line(error, f"{path}:4:", "'LA_0080'", "'LA_D_1'", "first on line 2")


def test_duplicated_voxceleb_trial_names_both_lines(tmp_path):
    path = write(tmp_path, VOX_TRIALS + "0 id10001/a/00001.wav id10002/b/00001.wav\n", crlf=True)
    with pytest.raises(ProtocolError) as error:
        read_voxceleb_trials(path)
    one_line(error, f"{path}:3:", "duplicate trial 'id10001/a/00001.wav' 'id10002/b/00001.wav'", "first on line 2")


def test_duplicated_utterance_in_a_cm_protocol(tmp_path):
    path = write(tmp_path, CM + "LA_0080 LA_T_2 - - bonafide\n", bom=True)
    with pytest.raises(ProtocolError) as error:
        read_cm_protocol(path)
    one_line(error, f"{path}:4:", "duplicate utterance id 'LA_T_2'", "first on line 2")


def test_duplicated_utterance_in_a_voxceleb_training_list(tmp_path):
    path = write(tmp_path, VOX_TRAIN + "id10003 id10001/a/00001.wav\n")
    with pytest.raises(ProtocolError) as error:
        read_voxceleb_train_list(path, tmp_path)
    one_line(error, f"{path}:3:", "duplicate utterance 'id10001/a/00001.wav'", "first on line 1")


@pytest.mark.parametrize("extra, expected", [
    ("LA_0079 LA_0079_LA_D_9\n", "duplicate speaker 'LA_0079' (first on line 1)"),
    ("LA_0081 LA_0080_LA_D_6\n", "duplicate enrollment file 'LA_0080_LA_D_6' (first on line 2)"),
])
def test_duplicated_enrollment_file_entry(tmp_path, extra, expected):
    path = write(tmp_path, ENROLLMENT_FILES + extra)
    with pytest.raises(ProtocolError) as error:
        read_enrollment_files(path)
    one_line(error, f"{path}:3:", expected)


@pytest.mark.parametrize("male, expected", [
    ("LA_0081 LA_D_7\n", "duplicate utterance id 'LA_D_7' (also at {female}:1)"),
    ("LA_0081 LA_D_8\nLA_0080 LA_D_9\n", "speaker 'LA_0080' is listed twice (also at {female}:2)"),
])
def test_duplicated_enrollment_utterance_list_entry(tmp_path, male, expected):
    female = write(tmp_path, ENROLLMENT_UTTERANCES, "female.txt")
    male_path = write(tmp_path, male, "male.txt")
    with pytest.raises(ProtocolError) as error:
        read_enrollment_utterances([female, male_path])
    one_line(error, f"{male_path}:{male.count(chr(10))}:", expected.format(female=female))


# =========================================================================== config files
def conf(folder: Path, text: str, name: str = "exp.conf", **options) -> Path:
    return write(folder, text, name, **options)


@pytest.mark.parametrize("text, key, lines", [
    ('{\n  "seed": 1,\n  "epoch": 2,\n  "seed": 3\n}\n', "seed", "lines 2 and 4"),
    ('{\n "optim": {"lr": 0.1,\n           "wd": 0.0,\n           "lr": 0.2}}\n', "optim.lr", "lines 2 and 4"),
    ('optim: {lr: 0.1, lr: 0.2}\n', "optim.lr", "both on line 1"),
    ('cm_model:\n  filts: [1]\n  first_conv: 3\n  filts: [2]\n', "cm_model.filts", "lines 2 and 4"),
    ('dirs:\n  database: a\ndirs:\n  database: b\n', "dirs", "lines 1 and 3"),
])
def test_key_given_twice_names_file_key_and_both_lines(tmp_path, text, key, lines):
    path = conf(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    one_line(error, str(path), f"key '{key}' is given twice ({lines})")


def test_key_given_twice_in_a_set_value():
    with pytest.raises(ConfigError) as error:
        build_config({}, overrides=["cm_model={first_conv: 3, first_conv: 4}"])
    one_line(error, "--set cm_model={first_conv: 3, first_conv: 4}", "key 'first_conv' is given twice")


def test_merge_key_may_be_overridden(tmp_path):
    """A YAML merge (<<) followed by an explicit key is an override, not a duplicate."""
    path = conf(tmp_path, 'optim:\n  <<: {lr: 0.1, wd: 0.5}\n  lr: 0.2\n')
    config = load_config(path)
    assert config["optim"]["lr"] == 0.2 and config["optim"]["wd"] == 0.5


@pytest.mark.parametrize("variant", ["bom", "crlf", "bom_and_crlf"])
def test_config_with_bom_and_crlf_loads_the_same(tmp_path, variant):
    text = (REPO / "configs" / "demo.conf").read_text()
    odd = conf(tmp_path, text, "demo.conf", bom="bom" in variant, crlf="crlf" in variant)
    assert load_config(odd) == load_config(REPO / "configs" / "demo.conf")


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_config_text_reads_back_to_the_same_config(tmp_path, path):
    overrides = ["seed=7", "optim.lr=2e-4", "dirs.database=/data/LA 2019/", "asv_train.samples=24000"]
    config = load_config(path, overrides)
    text = config_text(config, ["main.py", "--config", str(path), "--set", *overrides])
    assert text.startswith(f"# command: main.py --config {path} --set seed=7 optim.lr=2e-4 'dirs.database=")
    written = conf(tmp_path, text, "config.conf")
    again = load_config(written)
    assert again == config and again["config_name"] == config["config_name"]
    raw = yaml.safe_load(text)
    for key, _ in _fields(SCHEMA):  # every key is written out, defaults included
        node = raw
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, key
            node = node[part]


def test_config_text_keeps_a_hostile_command_line_in_its_comment(tmp_path):
    config = build_config({"dirs": {"database": "a: b # c\n"}})
    text = config_text(config, ["main.py", "--set", "x=1\nseed: 99\r\x00", "--device", "cpu\u2028"])
    assert text.splitlines()[0].startswith("# command: ") and "seed: 99" in text.splitlines()[0]
    again = load_config(conf(tmp_path, text))
    assert again == config and again["seed"] == 1234 and again["dirs"]["database"] == "a: b # c\n"


@pytest.mark.parametrize("content, expected", [
    (b"\xef\xbb\xbf" + (REPO / "configs" / "aasist" / "AASIST-L.conf").read_bytes().replace(b"\n", b"\r\n"), None),
    (b'{"model_config": {"first_conv": 128, "temperatures": [2.0, NaN]}}',
     "key 'model_config.temperatures[1]' is nan; NaN and infinity are not valid values"),
    (b"\xff\xfe{\x00", "aasist_config is not a text file"),
])
def test_aasist_config_file(tmp_path, content, expected):
    from models.build import aasist_model_config

    path = tmp_path / "AASIST.conf"
    path.write_bytes(content)
    if expected is None:
        config = build_config({"aasist_config": str(path)})
        assert aasist_model_config(config) == aasist_model_config(
            build_config({"aasist_config": str(REPO / "configs" / "aasist" / "AASIST-L.conf")}))
        return
    with pytest.raises(ConfigError) as error:  # validation reads a readable file's model_config; the builder the rest
        aasist_model_config(build_config({"aasist_config": str(path)}))
    one_line(error, str(path), expected)


# =========================================================================== config values
@pytest.mark.parametrize("values, key, shown", [
    ({"seed": -1}, "seed", "must be in [0, 9223372036854775807], got -1"),
    ({"optim": {"lr": 0}}, "optim.lr", "must be positive, got 0.0"),
    ({"optim": {"lr": -1e-4}}, "optim.lr", "must be positive, got -0.0001"),
    ({"asv_train": {"lr": 0.0}}, "asv_train.lr", "must be positive, got 0.0"),
    ({"cm_train": {"lr": -1}}, "cm_train.lr", "must be positive, got -1.0"),
    ({"optim": {"wd": -1e-5}}, "optim.wd", "must be zero or more, got -1e-05"),
    ({"asv_train": {"wd": -1}}, "asv_train.wd", "must be zero or more, got -1.0"),
    ({"cm_train": {"wd": -0.1}}, "cm_train.wd", "must be zero or more, got -0.1"),
    ({"optim": {"gamma": 1.5}}, "optim.gamma", "must be in (0, 1], got 1.5"),
    ({"asv_train": {"lr_decay": 0}}, "asv_train.lr_decay", "must be in (0, 1], got 0.0"),
    ({"optim": {"r_real": 2}}, "optim.r_real", "must be in [-1, 1], got 2.0"),
    ({"speaker_loss": {"margin": -0.1}}, "speaker_loss.margin", "must be in [0, 1.5708], got -0.1"),
    ({"cm_train": {"betas": [0.9, 1.0]}}, "cm_train.betas[1]", "must be in [0, 1), got 1.0"),
    ({"cm_train": {"class_weights": [-0.1, 0.9]}}, "cm_train.class_weights[0]", "must be zero or more, got -0.1"),
    ({"sample_rate": 16}, "sample_rate", "must be in [4000, 192000], got 16"),
    ({"asv_model": {"n_mels": 36}}, "asv_model.n_mels", "must be a multiple of 8"),
    ({"loader": {"n_workers": -2}}, "loader.n_workers", "must be zero or more, got -2"),
])
def test_out_of_range_value_names_key_and_value(tmp_path, values, key, shown):
    import json

    path = conf(tmp_path, json.dumps(values))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    one_line(error, str(path), f"key '{key}'", shown)


@pytest.mark.parametrize("text, key", [
    ("speaker_loss: {weight: .nan}", "speaker_loss.weight"),
    ("gradient_clip: .nan", "gradient_clip"),
    ("optim: {lr: .inf}", "optim.lr"),
    ('optim: {wd: "nan"}', "optim.wd"),
    ("asv_train: {init_b: -.inf}", "asv_train.init_b"),
    ("cm_model: {pool_ratios: [0.5, .nan, 0.5, 0.5]}", "cm_model.pool_ratios[1]"),
])
def test_nan_or_inf_anywhere_names_key_and_value(tmp_path, text, key):
    path = conf(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    one_line(error, str(path), f"key '{key}' is ", "NaN and infinity are not valid values")


def test_bad_value_from_the_command_line_names_the_override(tmp_path):
    path = conf(tmp_path, "optim: {lr: 0.001}")
    with pytest.raises(ConfigError) as error:
        load_config(path, ["optim.lr=nan"])
    one_line(error, "--set optim.lr=nan: key 'optim.lr' is nan")
    with pytest.raises(ConfigError) as error:
        load_config(path, ["seed=-5"])
    one_line(error, "--set seed=-5: key 'seed' must be", "got -5")


def test_cm_learning_rate_floor_above_the_rate(tmp_path):
    with pytest.raises(ConfigError) as error:
        build_config({"cm_train": {"lr": 1e-4, "lr_min": 1e-3}})
    one_line(error, "cm_train.lr_min (0.001) must not exceed cm_train.lr (0.0001)")


def test_every_numeric_key_has_a_range():
    numeric = {key for key, field in _fields(SCHEMA) if not field.ignored and
               set(field.kind if isinstance(field.kind, tuple) else (field.kind,)) & {int, float}}
    numeric_lists = {"cm_train.betas", "cm_train.class_weights", "b2.class_weights"}
    assert numeric | numeric_lists == set(RANGES)
    for key, field in _fields(SCHEMA):
        if key in RANGES and field.default is not None and not isinstance(field.default, list):
            assert field.default in RANGES[key], key


AASIST_SMALL = {"architecture": "AASIST", "first_conv": 32, "filts": [12, [1, 4], [4, 4], [4, 8], [8, 8]],
                "gat_dims": [8, 8], "pool_ratios": [0.5, 0.5, 0.5, 0.5], "temperatures": [2.0, 2.0, 100.0, 100.0]}


@pytest.mark.parametrize("values, key, needed", [
    ({"test_samples": 2314}, "test_samples", "AASIST (AASIST's default first_conv 128) accepts: at least 2315"),
    ({"train_samples": 2000, "cm_model": AASIST_SMALL}, "train_samples",
     "AASIST (cm_model.first_conv 32) accepts: at least 2219"),
    ({"cm_train": {"samples": 1000}}, "cm_train.samples", "at least 2315 samples"),
    ({"enrollment_samples": {"dev": 256, "eval": 48000}}, "enrollment_samples.dev",
     "ResNetSE34V2 (512-point STFT) accepts: at least 257"),
    ({"asv_train": {"samples": 100}}, "asv_train.samples", "at least 257"),
    ({"system": "cm", "test_samples": 2000}, "test_samples", "at least 2315"),
])
def test_sample_counts_shorter_than_the_networks_accept(values, key, needed):
    with pytest.raises(ConfigError) as error:
        build_config(values)
    one_line(error, f"key '{key}' is", needed)


def test_sample_count_minimums_follow_the_system_and_the_aasist_config(tmp_path):
    assert build_config({"system": "asv", "test_samples": 300, "train_samples": 10})["test_samples"] == 300
    assert build_config({"test_samples": 2315})["test_samples"] == 2315
    aasist = tmp_path / "aasist.conf"
    aasist.write_text(json.dumps({"model_config": {**AASIST_SMALL, "first_conv": 1024}}))
    with pytest.raises(ConfigError) as error:
        build_config({"aasist_config": str(aasist), "test_samples": 3000})
    one_line(error, "key 'test_samples' is 3000", f"AASIST ({aasist} model_config.first_conv 1024)", "3211")


def test_minimum_sample_counts_are_what_the_networks_accept():
    """The bounds in runtime.config, measured: the networks run at the minimum and fail one sample below."""
    from models.aasist import AASIST
    from models.resnet_se34v2 import ResNetSE34V2

    torch.manual_seed(0)
    networks = [(ResNetSE34V2(n_out=8, n_mels=16, num_filters=(8, 8, 8, 8), layers=(1, 1, 1, 1)), ASV_MIN_SAMPLES)]
    networks += [(AASIST({**AASIST_SMALL, "first_conv": conv}), aasist_min_samples(conv)) for conv in (32, 129)]
    for network, minimum in networks:
        network.eval()
        with torch.no_grad():
            output = network(torch.randn(1, minimum))
            assert torch.isfinite(output[1] if isinstance(output, tuple) else output).all()
            with pytest.raises((RuntimeError, ValueError)):
                network(torch.randn(1, minimum - 1))


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CUDA", "cuda:", "cpu0"])
def test_unknown_device_names_the_value(name):
    from runtime.device import resolve_device

    with pytest.raises(ConfigError) as error:
        resolve_device(name)
    one_line(error, f"unknown device {name!r}", "expected auto, cpu, cuda or cuda:N")


def test_unknown_device_in_a_config_and_on_the_command_line(tmp_path, capsys):
    import argparse

    from runtime.cli import add_config_args, config_from_args, run_cli

    path = conf(tmp_path, "device: gpu")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    one_line(error, f"{path}: key 'device': unknown device 'gpu'")
    parser = argparse.ArgumentParser()
    add_config_args(parser, config_required=False)
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: config_from_args(parser.parse_args(["--device", "gpu"])) and 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert err == ["error: --device gpu: unknown device 'gpu'; expected auto, cpu, cuda or cuda:N"]


def test_cuda_device_index_beyond_the_devices(monkeypatch):
    from runtime.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError) as error:
        resolve_device("cuda:2")
    one_line(error, "device 'cuda:2'", "only 2 CUDA device(s)")


# =========================================================================== audio
def float_wav(path: Path, samples: np.ndarray) -> Path:
    soundfile.write(path, samples.astype(np.float32), 16000, format="WAV", subtype="FLOAT")
    return path


def test_implausibly_loud_float_wav_is_an_audio_error(tmp_path):
    samples = np.zeros(16000)
    samples[[700, 900]] = 1e4
    path = float_wav(tmp_path / "loud.wav", samples)
    with pytest.raises(AudioError) as error:
        read_audio(path)
    one_line(error, str(path), "2 samples beyond +-32", "first at index 700: 10000")


@pytest.mark.parametrize("peak", [1.0, 10.69, 32.0, -32.0])
def test_loud_but_plausible_samples_load(tmp_path, peak):
    samples = np.zeros(16000)
    samples[3] = peak
    waveform = read_audio(float_wav(tmp_path / "ok.wav", samples))
    assert waveform[3] == np.float32(peak)


def test_threshold_keeps_every_real_fixture_file(golden_json):
    """The real LA recordings hold samples up to 350388 / 32768 = 10.69 (libFLAC 1.3 decode, unclipped)."""
    fingerprints = golden_json("audio_loading.json")["decode_fingerprints"]
    peak = max(max(-fp["min_int"], fp["max_int"]) for fp in fingerprints.values()) / 32768
    assert 10 < peak < MAX_ABS_SAMPLE


def test_loud_channel_is_not_averaged_away(tmp_path):
    samples = np.zeros((1000, 2))
    samples[10] = [-1e3, 1e3]  # averages to 0
    path = tmp_path / "stereo.wav"
    soundfile.write(path, samples.astype(np.float32), 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioError) as error:
        read_audio(path, resample=True)
    one_line(error, str(path), "beyond +-32", "index 10")


def test_infinite_samples_are_an_audio_error(tmp_path):
    samples = np.zeros(1000)
    samples[42] = -np.inf
    path = float_wav(tmp_path / "inf.wav", samples)
    with pytest.raises(AudioError) as error:
        read_audio(path)
    one_line(error, str(path), "1 NaN/inf samples (first at index 42)")


def test_on_bad_audio_handles_loud_files_like_unreadable_ones(tmp_path, capsys):
    rng = np.random.default_rng(0)
    good = float_wav(tmp_path / "good.wav", rng.standard_normal(4000) * 0.1)
    loud = float_wav(tmp_path / "loud.wav", rng.standard_normal(4000) * 1e3)
    with pytest.raises(AudioError) as error:
        CroppedUtteranceDataset([good, loud], [0, 0], samples=2000, seed=0)[0, 1]
    one_line(error, str(loud), "beyond +-32")
    skipping = CroppedUtteranceDataset([good, loud], [0, 0], samples=2000, seed=0, on_bad_audio="skip")
    waveform, label, redraws = skipping[0, 1]
    assert redraws >= 1 and label == 0 and waveform.abs().max() < 1
    assert str(loud) in capsys.readouterr().err
    index, zeros, problem = WaveformDataset([good, loud], 2000, on_bad_audio="skip")[1]
    assert index == 1 and not zeros.any() and str(loud) in problem and "beyond +-32" in problem
    assert math.isfinite(float(WaveformDataset([good, loud], 2000)[0][1].sum()))
