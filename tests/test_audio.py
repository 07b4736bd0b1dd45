"""Audio reading against golden/audio_loading.json: exact libFLAC 1.3 decode, pad/crop rules, errors, caches."""
from __future__ import annotations

import hashlib
import os
import shutil
import time

import numpy as np
import pytest
import soundfile
import torch

from data import audio, flac_fallback
from data.audio import AudioError, load_waveform, pad_or_tile, random_crop, read_audio

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """Every test gets an empty memory cache and a disk cache inside tmp_path."""
    cache_dir = tmp_path / "flac-cache"
    monkeypatch.setenv("SASV_AUDIO_CACHE", str(cache_dir))
    audio.clear_memory_cache()
    yield cache_dir
    audio.clear_memory_cache()


@pytest.fixture(scope="module")
def audio_golden(golden_json) -> dict:
    return golden_json("audio_loading.json")


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def refused_by_soundfile(fingerprints: dict) -> list[str]:
    """Fixture files current soundfile cannot read, smallest first."""
    names = [name for name, fp in fingerprints.items() if fp["current_soundfile_read"] != "ok"]
    return sorted(names, key=lambda name: fingerprints[name]["n_samples"])


def fingerprint_mismatches(samples: np.ndarray, expected: dict) -> list[str]:
    out_of_range = np.flatnonzero((samples < -32768) | (samples > 32767))
    observed = {
        "n_samples": len(samples),
        "sha256_int32_le": sha256(samples.astype("<i4")),
        "sha256_float32": sha256((samples / 32768).astype(np.float32)),
        "min_int": int(samples.min()),
        "max_int": int(samples.max()),
        "n_out_of_int16_range": len(out_of_range),
        "out_of_range_samples": [[int(i), int(samples[i])] for i in out_of_range],
    }
    return [f"{key}: {value!r} != {expected[key]!r}" for key, value in observed.items() if value != expected[key]]


def test_fallback_decoder_matches_every_decode_fingerprint(fixtures, audio_golden):
    fingerprints = audio_golden["decode_fingerprints"]
    assert len(fingerprints) == len(list((fixtures / "audio").glob("*.flac")))
    problems, timings = [], []
    for name, expected in fingerprints.items():
        start = time.perf_counter()
        samples, sample_rate, bits = flac_fallback.decode_flac_int32(fixtures / name)
        timings.append((time.perf_counter() - start, name, len(samples)))
        assert samples.dtype == np.int32 and samples.ndim == 1
        assert (sample_rate, bits) == (expected["sample_rate"], 16), name
        problems += [f"{name}: {problem}" for problem in fingerprint_mismatches(samples, expected)]
    assert not problems, "\n".join(problems)
    for seconds, name, n_samples in timings:
        print(f"decode {name}: {seconds * 1000:.1f} ms ({n_samples} samples)")


@pytest.mark.slow
def test_read_audio_matches_fingerprints_and_prefers_soundfile(fixtures, audio_golden, monkeypatch):
    fallback_calls = []
    real_decode = flac_fallback.decode_flac_int32

    def recording_decode(path):
        fallback_calls.append(os.fspath(path))
        return real_decode(path)

    monkeypatch.setattr(flac_fallback, "decode_flac_int32", recording_decode)
    for name, expected in audio_golden["decode_fingerprints"].items():
        path = fixtures / name
        fallback_calls.clear()
        waveform = read_audio(path)
        assert waveform.dtype == np.float64 and waveform.shape == (expected["n_samples"],)
        assert sha256(waveform.astype(np.float32)) == expected["sha256_float32"], name
        # Every value is an exact int / 32768, out-of-range ones unclipped.
        as_int = waveform * 32768
        assert np.array_equal(as_int, np.round(as_int))
        assert (as_int.min(), as_int.max()) == (expected["min_int"], expected["max_int"]), name

        soundfile_reads = expected["current_soundfile_read"] == "ok"
        assert bool(fallback_calls) != soundfile_reads, f"{name}: fallback used={bool(fallback_calls)}"
        if soundfile_reads:  # both decoders give the same data
            samples, _, _ = real_decode(path)
            assert np.array_equal(waveform, samples * (1.0 / 32768)), name
            assert np.array_equal(waveform, soundfile.read(path)[0]), name


def test_audio_loading_cases(fixtures, audio_golden):
    stored = np.load(fixtures / "golden" / "audio_loading.npz")
    assert audio_golden["cases"]
    for case_name in audio_golden["cases"]:
        case = audio_golden[case_name]
        call = case["call"]
        path = fixtures / call["file"]
        if call["function"] == "pad":
            start, stop = call["slice"]
            tensor = torch.from_numpy(pad_or_tile(read_audio(path)[start:stop], call["max_len"]).astype(np.float32))
        else:
            assert call["function"].startswith("read_waveform_eval") and call["slice"] is None
            tensor = load_waveform(path, call["max_len"])
        assert tensor.dtype == torch.float32
        values = tensor.numpy()
        assert len(values) == case["length"], case_name
        assert float(np.abs(values).max()) == case["max_abs"], case_name
        assert np.array_equal(values[:1000], stored[f"{case_name}__first1000"]), case_name
        assert np.array_equal(values[-1000:], stored[f"{case_name}__last1000"]), case_name
        assert sha256(values) == case["sha256_float32"], case_name


def test_load_waveform_whole_file_and_random_crop(fixtures, audio_golden):
    name = refused_by_soundfile(audio_golden["decode_fingerprints"])[0]
    full = read_audio(fixtures / name)
    whole = load_waveform(fixtures / name, None)
    assert whole.dtype == torch.float32 and np.array_equal(whole.numpy(), full.astype(np.float32))
    crop = load_waveform(fixtures / name, 64600, crop="random", rng=np.random.default_rng(3)).numpy()
    start = int(np.random.default_rng(3).integers(0, len(full) - 64600))
    assert np.array_equal(crop, full[start:start + 64600].astype(np.float32))
    with pytest.raises(ValueError, match="rng"):
        load_waveform(fixtures / name, 64600, crop="random")
    with pytest.raises(ValueError, match="crop"):
        load_waveform(fixtures / name, 64600, crop="middle")


# ---------------------------------------------------------------- pad / crop rules

def test_pad_or_tile_edge_cases():
    signal = np.arange(1.0, 6.0)  # 5 samples
    assert np.array_equal(pad_or_tile(signal, 12), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2])
    assert np.array_equal(pad_or_tile(signal, 10), np.concatenate([signal, signal]))
    assert np.array_equal(pad_or_tile(signal, 5), signal)
    assert np.array_equal(pad_or_tile(signal, 3), [1, 2, 3])
    assert np.array_equal(pad_or_tile(np.array([0.25]), 7), np.full(7, 0.25))
    assert pad_or_tile(signal, 12).dtype == signal.dtype
    for length in (1, 2, 7, 777, 1000):  # the reference expression, for comparison
        source = np.random.default_rng(length).standard_normal(length)
        reference = np.tile(source, (1, int(4000 / length) + 1))[:, :4000][0]
        assert np.array_equal(pad_or_tile(source, 4000), reference)
    with pytest.raises(ValueError):
        pad_or_tile(np.array([]), 4)
    with pytest.raises(ValueError):
        pad_or_tile(signal, 0)


def test_random_crop_rules_and_determinism():
    signal = np.arange(100.0)
    crops = [random_crop(signal, 30, np.random.default_rng(seed)) for seed in range(40)]
    starts = {int(crop[0]) for crop in crops}
    for crop in crops:
        assert np.array_equal(crop, np.arange(crop[0], crop[0] + 30))
    assert min(starts) >= 0 and max(starts) < 70 and len(starts) > 10
    assert np.array_equal(random_crop(signal, 30, np.random.default_rng(7)),
                          random_crop(signal, 30, np.random.default_rng(7)))
    # Like the reference randint(len - max_len): one extra sample still starts at 0.
    assert np.array_equal(random_crop(signal, 99, np.random.default_rng(1)), signal[:99])
    assert np.array_equal(random_crop(signal, 100, np.random.default_rng(1)), signal)  # reference errors here
    assert np.array_equal(random_crop(signal[:7], 30, np.random.default_rng(1)), pad_or_tile(signal[:7], 30))
    assert np.array_equal(random_crop(np.array([0.5]), 4, np.random.default_rng(1)), np.full(4, 0.5))


# ---------------------------------------------------------------- error cases

def write_noise_flac(path, n_samples: int = 20000, sample_rate: int = 16000, channels: int = 1) -> np.ndarray:
    shape = (n_samples, channels) if channels > 1 else (n_samples,)
    samples = (np.random.default_rng(0).standard_normal(shape) * 3000).astype(np.int16)
    soundfile.write(path, samples, sample_rate, subtype="PCM_16")
    return samples


def assert_audio_error(path, match: str, **kwargs) -> None:
    with pytest.raises(AudioError, match=match) as caught:
        read_audio(path, **kwargs)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


def test_missing_and_empty_files(tmp_path):
    assert_audio_error(tmp_path / "missing.flac", "not found")
    (tmp_path / "empty.flac").touch()
    assert_audio_error(tmp_path / "empty.flac", "empty")
    no_frames = tmp_path / "no_frames.wav"
    soundfile.write(no_frames, np.zeros(0, dtype=np.int16), 16000)
    assert_audio_error(no_frames, "no audio samples")


def test_truncated_and_corrupt_flac(tmp_path):
    valid = tmp_path / "valid.flac"
    write_noise_flac(valid)
    content = valid.read_bytes()
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(content[: len(content) // 2])
    assert_audio_error(truncated, "truncated")
    header_only = tmp_path / "header_only.flac"
    header_only.write_bytes(content[:30])
    assert_audio_error(header_only, "cannot decode")
    corrupt = tmp_path / "corrupt.flac"
    damaged = bytearray(content)
    damaged[len(content) // 2: len(content) // 2 + 64] = bytes(range(64))
    corrupt.write_bytes(bytes(damaged))
    assert_audio_error(corrupt, "CRC|LOST_SYNC|BAD_HEADER")
    not_audio = tmp_path / "not_audio.wav"
    not_audio.write_bytes(b"this is not audio" * 10)
    assert_audio_error(not_audio, "cannot read")


def test_sample_rate_and_channels(tmp_path):
    narrowband = tmp_path / "narrowband.flac"
    write_noise_flac(narrowband, n_samples=8000, sample_rate=8000)
    assert_audio_error(narrowband, "8000 Hz")
    upsampled = read_audio(narrowband, resample=True)
    assert upsampled.dtype == np.float64 and len(upsampled) == 16000

    stereo = tmp_path / "stereo.flac"
    write_noise_flac(stereo, n_samples=4000, channels=2)
    assert_audio_error(stereo, "2 channels")
    both = soundfile.read(stereo)[0]
    assert np.array_equal(read_audio(stereo, resample=True), both.mean(axis=1))


def test_non_finite_samples(tmp_path):
    for bad_value in (np.nan, np.inf):
        samples = np.zeros(1000, dtype=np.float32)
        samples[123] = bad_value
        path = tmp_path / f"bad_{bad_value}.wav"
        soundfile.write(path, samples, 16000, subtype="FLOAT")
        assert_audio_error(path, "NaN/inf samples .*index 123")


def test_missing_pyflac_is_explained(fixtures, audio_golden, monkeypatch):
    monkeypatch.setattr(flac_fallback.importlib.util, "find_spec", lambda name: None)
    flac_fallback._load_library.cache_clear()
    try:
        assert not flac_fallback.fallback_available()
        with pytest.raises(flac_fallback.FlacFallbackUnavailable, match="pip install pyFLAC==2.1.0"):
            flac_fallback.require_fallback()
        path = fixtures / refused_by_soundfile(audio_golden["decode_fingerprints"])[0]
        assert_audio_error(path, "pyFLAC")
    finally:
        monkeypatch.undo()
        flac_fallback._load_library.cache_clear()
    assert flac_fallback.fallback_available() and flac_fallback.libflac_version().startswith("1.3.")


# ---------------------------------------------------------------- caches

def test_disk_cache_hit_and_stale_entry(fixtures, audio_golden, tmp_path, monkeypatch, isolated_caches):
    fingerprints = audio_golden["decode_fingerprints"]
    first_name, second_name = refused_by_soundfile(fingerprints)[:2]
    path = tmp_path / "copy.flac"
    shutil.copyfile(fixtures / first_name, path)
    expected = read_audio(path)
    assert len(list(isolated_caches.glob("*.npz"))) == 1
    assert not list(isolated_caches.glob("*.tmp"))

    def broken_decoder(path):
        raise flac_fallback.FlacDecodeError(os.fspath(path), "decoder disabled by the test")

    monkeypatch.setattr(flac_fallback, "decode_flac_int32", broken_decoder)
    audio.clear_memory_cache()
    assert np.array_equal(read_audio(path), expected)  # from disk
    for cache_file in isolated_caches.glob("*.npz"):
        cache_file.unlink()
    assert np.array_equal(read_audio(path), expected)  # from memory

    # A changed file (new size and mtime) must not be served from either cache.
    shutil.copyfile(fixtures / second_name, path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert_audio_error(path, "decoder disabled")
    monkeypatch.undo()
    monkeypatch.setenv("SASV_AUDIO_CACHE", str(isolated_caches))
    assert sha256(read_audio(path).astype(np.float32)) == fingerprints[second_name]["sha256_float32"]


def test_damaged_or_unwritable_disk_cache_is_skipped(fixtures, audio_golden, tmp_path, monkeypatch,
                                                     isolated_caches):
    name = refused_by_soundfile(audio_golden["decode_fingerprints"])[0]
    expected_sha = audio_golden["decode_fingerprints"][name]["sha256_float32"]
    read_audio(fixtures / name)
    (cache_file,) = isolated_caches.glob("*.npz")
    cache_file.write_bytes(b"damaged")
    audio.clear_memory_cache()
    assert sha256(read_audio(fixtures / name).astype(np.float32)) == expected_sha
    assert cache_file.stat().st_size > 1000  # rewritten

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SASV_AUDIO_CACHE", str(blocker / "cache"))
    audio.clear_memory_cache()
    assert sha256(read_audio(fixtures / name).astype(np.float32)) == expected_sha

    monkeypatch.setenv("SASV_AUDIO_CACHE", "")
    assert audio.disk_cache_dir() is None
    monkeypatch.delenv("SASV_AUDIO_CACHE")
    assert audio.disk_cache_dir() == audio.Path(audio.DEFAULT_DISK_CACHE).expanduser()


def test_memory_cache_is_bounded_by_samples():
    cache = audio._SampleLRU(max_samples=10)

    def entry(n: int) -> audio._Decoded:
        return audio._Decoded(np.zeros(n, dtype=np.int32), 16000, 16)

    cache.put("a", entry(4))
    cache.put("b", entry(4))
    assert cache.get("a") is not None  # "a" becomes the most recent
    cache.put("c", entry(4))  # 12 > 10: evicts "b", the least recently used
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.put("huge", entry(11))
    assert cache.get("huge") is None


def test_cached_samples_are_not_aliased(fixtures, audio_golden):
    name = refused_by_soundfile(audio_golden["decode_fingerprints"])[0]
    first = read_audio(fixtures / name)
    first[:] = 0.0
    assert np.abs(read_audio(fixtures / name)).max() > 0


# ---------------------------------------------------------------- too short to be speech

def test_minimum_length_in_samples():
    assert audio.MIN_AUDIO_MS == 100
    assert [audio.min_samples(rate) for rate in (16000, 8000, 22050, 44100)] == [1600, 800, 2205, 4410]


@pytest.mark.parametrize("suffix", ["flac", "wav"])
@pytest.mark.parametrize("n_samples", [1, 1599])
def test_audio_under_the_minimum_is_refused_by_every_reader(tmp_path, suffix, n_samples):
    path = tmp_path / f"short.{suffix}"
    write_noise_flac(path, n_samples=n_samples)  # soundfile takes the format from the suffix
    assert_audio_error(path, f"too short: {n_samples} samples")
    with pytest.raises(AudioError, match="too short") as caught:
        load_waveform(path, 64600)  # the tiling path scoring and training use
    assert str(path) in str(caught.value)
    with pytest.raises(AudioError, match="too short"):
        audio.check_duration(path)  # the header check run before scoring


@pytest.mark.parametrize("suffix", ["flac", "wav"])
def test_audio_at_the_minimum_is_read_and_tiled(tmp_path, suffix):
    path = tmp_path / f"minimum.{suffix}"
    samples = write_noise_flac(path, n_samples=1600)
    audio.check_duration(path)
    assert np.array_equal(read_audio(path), samples / 32768.0)
    tiled = load_waveform(path, 4000)
    assert len(tiled) == 4000 and torch.equal(tiled[1600:3200], tiled[:1600])


def test_minimum_is_a_duration_at_the_file_rate(tmp_path):
    short, enough = tmp_path / "short_8k.flac", tmp_path / "enough_8k.flac"
    write_noise_flac(short, n_samples=799, sample_rate=8000)
    write_noise_flac(enough, n_samples=800, sample_rate=8000)
    assert_audio_error(short, "799 samples .*8000 Hz", resample=True)
    assert len(read_audio(enough, resample=True)) == 1600


def test_duration_check_reads_only_the_header(tmp_path, monkeypatch, fixtures, audio_golden):
    long_file = tmp_path / "long.flac"
    write_noise_flac(long_file, n_samples=1600)
    not_audio = tmp_path / "not_audio.wav"
    not_audio.write_bytes(b"this is not audio" * 10)

    def no_decode(*args):
        raise AssertionError("decoded")

    monkeypatch.setattr(audio, "_decode", no_decode)
    audio.check_duration(long_file)
    audio.check_duration(not_audio)  # an unreadable header is read_audio's to name, when the file is read
    # Real LA files that only the libFLAC 1.3 fallback decodes: their headers read, and they are long enough.
    for name in refused_by_soundfile(audio_golden["decode_fingerprints"]):
        audio.check_duration(fixtures / name)


def test_short_audio_under_skip_is_marked_like_unreadable_audio(tmp_path):
    from data.datasets import WaveformDataset

    good, short = tmp_path / "good.flac", tmp_path / "short.flac"
    write_noise_flac(good, n_samples=1600)
    write_noise_flac(short, n_samples=1)
    skipping = WaveformDataset([good, short], 3200, on_bad_audio="skip")
    assert skipping[0][2] == ""
    index, wave, problem = skipping[1]
    assert index == 1 and str(short) in problem and "too short" in problem and not wave.any()
    with pytest.raises(AudioError, match="too short"):
        WaveformDataset([short], 3200, on_bad_audio="error")[0]
