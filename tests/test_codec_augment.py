"""Codec augmentation (data/codec_augment.py): in-memory round trips through PyAV's FFmpeg on real speech, the
per-item draws, the config checks, and RawBoost + codec together in the CM training dataset."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import soundfile

from data import codec_augment
from data.codec_augment import CODECS, CodecAugment, CodecSpec, encode_decode
from data.rawboost import RawBoost, RawBoostParams
from data.speaker_lists import CroppedUtteranceDataset
from runtime.config import ConfigError, build_config
from training.tasks.cm import file_augmentations

BITRATES = {"mp3": 32000, "opus": 24000, "aac": 32000, "amr_nb": 12200, "mp2": 64000, "ac3": 96000}
# Lowest correlation with the input accepted per codec (8 kHz codecs lose the 4-8 kHz band).
MIN_CORRELATION = {"amr_nb": 0.8, "mulaw": 0.9, "alaw": 0.9}


@pytest.fixture(scope="module")
def speech(fixtures):
    path = fixtures / "golden" / "aasist_fidelity.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    wave = np.load(path)["wave_64600"][1].astype(np.float64)  # real speech, 16 kHz, peak just under 1
    assert np.abs(wave).max() <= 1.0
    return wave[:32000]


def _lag(reference: np.ndarray, decoded: np.ndarray, span: int = 60) -> int:
    """The shift of `decoded` against `reference` that correlates best (0: aligned)."""
    middle = slice(span, len(reference) - span)
    scores = [np.dot(reference[middle], decoded[span + lag:len(reference) - span + lag])
              for lag in range(-span, span + 1)]
    return int(np.argmax(scores)) - span


@pytest.mark.parametrize("codec", list(CODECS))
def test_round_trip_keeps_rate_length_alignment_and_most_of_the_signal(speech, codec):
    decoded = encode_decode(speech, codec, BITRATES.get(codec), 16000)
    assert decoded.shape == speech.shape and decoded.dtype == np.float64
    assert np.abs(decoded - speech).max() > 1e-3  # a lossy codec did run
    assert np.corrcoef(speech, decoded)[0, 1] > MIN_CORRELATION.get(codec, 0.95)
    assert 0.7 < np.sum(decoded ** 2) / np.sum(speech ** 2) < 1.3
    # priming delay compensated: within one sample (Opus's low-bitrate phase shift is one sample at 16 kHz)
    assert abs(_lag(speech, decoded)) <= 1
    np.testing.assert_array_equal(decoded, encode_decode(speech, codec, BITRATES.get(codec), 16000))


def test_draws_follow_the_probabilities_and_the_key():
    augment = CodecAugment.from_settings([{"codec": "mp3", "p": 0.5, "bitrate": [16000, 64000]},
                                          {"codec": "amr_nb", "p": 0.2, "bitrate": [5000, 8000]},
                                          {"codec": "mulaw", "p": 0.1}], 16000)
    draws = [augment.draw((3, 0, index, 0)) for index in range(4000)]
    counts = Counter(draw[0] if draw else None for draw in draws)
    for name, p in (("mp3", 0.5), ("amr_nb", 0.2), ("mulaw", 0.1), (None, 0.2)):
        assert abs(counts[name] / len(draws) - p) < 0.03, (name, counts)
    mp3_rates = {rate for name, rate in filter(None, draws) if name == "mp3"}
    assert min(mp3_rates) >= 16000 and max(mp3_rates) <= 64000 and len(mp3_rates) > 100
    assert {rate for name, rate in filter(None, draws) if name == "amr_nb"} == {5150, 5900, 6700, 7400, 7950}
    assert {rate for name, rate in filter(None, draws) if name == "mulaw"} == {None}
    assert draws == [augment.draw((3, 0, index, 0)) for index in range(4000)]  # same key, same draw
    other_seed = [augment.draw((4, 0, index, 0)) for index in range(4000)]
    assert other_seed != draws and Counter(d[0] if d else None for d in other_seed).keys() == counts.keys()


def test_same_key_same_audio(speech):
    augment = CodecAugment.from_settings([{"codec": "opus", "p": 1.0, "bitrates": [8000, 16000, 32000]}], 16000)
    keys = [(1, 0, index, 0) for index in range(6)]
    outputs = [augment(speech, key) for key in keys]
    assert all(np.array_equal(out, augment(speech, key)) for out, key in zip(outputs, keys))
    assert len({augment.draw(key) for key in keys}) > 1


def test_config_errors_name_the_key(monkeypatch):
    cases = (([{"codec": "mp4", "p": 0.5}], "cm_train.codecs[0].codec"),
             ([{"codec": "mp3", "p": 0.5, "bitrate": [1000, 64000]}], "cm_train.codecs[0].bitrate"),
             ([{"codec": "amr_nb", "p": 0.5, "bitrates": [9000]}], "cm_train.codecs[0].bitrates[0]"),
             ([{"codec": "mp3", "p": 0.5}], "cm_train.codecs[0]"),
             ([{"codec": "g722", "p": 0.5, "bitrates": [64000]}], "cm_train.codecs[0].bitrates"),
             ([{"codec": "mulaw", "p": 1.5}], "cm_train.codecs[0].p"),
             ([{"codec": "mulaw", "p": 0.6}, {"codec": "alaw", "p": 0.6}], "cm_train.codecs"),
             ([{"codec": "mulaw", "p": 0.5, "rate": 8000}], "cm_train.codecs[0].rate"),
             (["mp3"], "cm_train.codecs[0]"))
    for codecs, key in cases:
        with pytest.raises(ConfigError) as caught:
            build_config({"cm_train": {"codecs": codecs}})
        assert f"'{key}'" in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    # a codec this PyAV build lacks is refused when the config is read, naming the key and the codec
    monkeypatch.setitem(CODECS, "mp3", CodecSpec("no_such_encoder", "mp3", rates=(16000,),
                                                 bitrate_range=(8000, 320000)))
    with pytest.raises(ConfigError) as caught:
        build_config({"cm_train": {"codecs": [{"codec": "mp3", "p": 0.5, "bitrates": [32000]}]}})
    assert "'cm_train.codecs[0].codec'" in str(caught.value) and "no_such_encoder" in str(caught.value)
    assert codec_augment.missing_codec(CODECS["aac"]) is None


def test_rawboost_then_codec_in_the_dataset(tmp_path, speech):
    path = tmp_path / "utt.wav"
    soundfile.write(path, speech, 16000, subtype="PCM_16")
    config = build_config({"cm_train": {"rawboost": 5, "codecs": [{"codec": "mp3", "p": 1.0,
                                                                    "bitrate": [24000, 48000]}]}})
    augments = file_augmentations(config["cm_train"], 16000)
    assert [type(a) for a in augments] == [RawBoost, CodecAugment]
    dataset = CroppedUtteranceDataset([path], [1], samples=16000, seed=9, file_augments=augments)
    item = dataset[(2, 0)][0].numpy()
    np.testing.assert_array_equal(item, dataset[(2, 0)][0].numpy())
    read = soundfile.read(path)[0]
    whole = augments[1](RawBoost(5, RawBoostParams(), 16000)(read, (9, 2, 0, 0)), (9, 2, 0, 0))
    start = int(np.random.default_rng([9, 2, 0, 3]).integers(0, len(read) - 16000))  # the crop's own draw
    np.testing.assert_array_equal(item, whole[start:start + 16000].astype(np.float32))
    assert not np.array_equal(item, dataset[(3, 0)][0].numpy())
