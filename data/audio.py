"""Audio reading that reproduces the reference `soundfile.read` decode, plus pad / crop rules.

Most files are read with soundfile (float64, like the reference). FLAC files
that current soundfile refuses (samples outside the declared bit depth, which
libFLAC >= 1.4 rejects) are decoded with libFLAC 1.3.x (`data.flac_fallback`)
and scaled exactly as libsndfile did: `int * 2**-(bits-1)`, no clipping.
Audio shorter than MIN_AUDIO_MS is refused (`check_duration` tells it from the header, before a run).
Fallback decodes are cached in memory and on disk (`SASV_AUDIO_CACHE`).
"""
from __future__ import annotations

import hashlib
import os
import stat as stat_module
import threading
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile
import torch

from data import flac_fallback
from runtime.errors import UserError
from runtime.files import atomic_open

DEFAULT_DISK_CACHE = "~/.cache/sasv-toolkit/flac"
# Largest plausible |sample|. Integer files decode to [-1, 1), but the real ASVspoof 2019 LA files hold
# samples outside the 16-bit range that libFLAC 1.3 decodes unclipped: up to 350388 / 32768 = 10.69 in the
# fixtures (shared/fixtures/README.md section 0.1, golden/audio_loading.json max_int), so a bound of 10 would
# refuse real data. 32 = 2**20 / 32768 leaves 3x headroom over that (20-bit integers in a 16-bit file) and
# still refuses float files written unnormalised (int16 values stored as float: |x| up to 32768).
MAX_ABS_SAMPLE = 32.0
# Shortest audio accepted, in milliseconds of the file's own duration. Every reader tiles a short file to
# its crop length (the reference `pad`), so a fragment of a few samples would be scored as a repeated
# buzz: a 1-sample file becomes a constant. 100 ms is the shortest span that still holds speech for both
# front-ends: ten 25 ms / 10 ms-hop frames of the ResNet's log-mel features, more than ten times the 129
# taps (8 ms) of AASIST's sinc filters, and several pitch periods even at 80 Hz; the shortest phones
# last some 30-50 ms and syllables 100 ms or more. The synthetic corpora never go below 0.3 s.
MIN_AUDIO_MS = 100
DEFAULT_MEMORY_CACHE_SAMPLES = 32_000_000  # 128 MB of int32, per process
_CACHE_FORMAT = "sasv-flac-int32-v1"  # bump to invalidate old disk entries


class AudioError(UserError, ValueError):
    """An audio file cannot be used; the message names the file."""


class _Decoded(NamedTuple):
    samples: np.ndarray  # int32, [n] or [n, channels], read-only
    sample_rate: int
    bits_per_sample: int


class _SampleLRU:
    """Least-recently-used cache of fallback decodes, bounded by the total sample count."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._entries: OrderedDict[tuple, _Decoded] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> _Decoded | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple, entry: _Decoded) -> None:
        size = entry.samples.size
        with self._lock:
            if size > self.max_samples or key in self._entries:
                return
            self._entries[key] = entry
            self._total += size
            while self._total > self.max_samples:
                _, evicted = self._entries.popitem(last=False)
                self._total -= evicted.samples.size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._total = 0


_memory_cache = _SampleLRU(DEFAULT_MEMORY_CACHE_SAMPLES)


def clear_memory_cache() -> None:
    """Forget every in-process fallback decode."""
    _memory_cache.clear()


def set_memory_cache_limit(max_samples: int) -> None:
    """Bound the in-process cache to `max_samples` int32 samples (0 disables it)."""
    _memory_cache.clear()
    _memory_cache.max_samples = max_samples


def disk_cache_dir() -> Path | None:
    """Folder of the on-disk fallback cache; None when `SASV_AUDIO_CACHE` is set to ''."""
    configured = os.environ.get("SASV_AUDIO_CACHE", DEFAULT_DISK_CACHE)
    return Path(configured).expanduser() if configured else None


def _disk_cache_file(key: tuple) -> Path | None:
    folder = disk_cache_dir()
    if folder is None:
        return None
    digest = hashlib.sha256("\0".join(map(str, (_CACHE_FORMAT, *key))).encode()).hexdigest()
    return folder / f"{digest}.npz"


def _read_disk_cache(key: tuple) -> _Decoded | None:
    cache_file = _disk_cache_file(key)
    if cache_file is None or not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as archive:
            samples = archive["samples"]
            sample_rate = int(archive["sample_rate"])
            bits = int(archive["bits_per_sample"])
    except Exception:  # unreadable or foreign entry: decode again
        return None
    if samples.dtype != np.int32 or samples.ndim not in (1, 2):
        return None
    samples.flags.writeable = False
    return _Decoded(samples, sample_rate, bits)


def _write_disk_cache(key: tuple, entry: _Decoded) -> None:
    cache_file = _disk_cache_file(key)
    if cache_file is None:
        return
    try:
        with atomic_open(cache_file, "wb") as handle:  # readers never see a partial entry
            np.savez(handle, samples=entry.samples, sample_rate=np.int64(entry.sample_rate),
                     bits_per_sample=np.int64(entry.bits_per_sample))
    except OSError:  # read-only or full cache folder: the cache is optional (atomic_open removed its temporary)
        pass


def _cached_decode(key: tuple) -> _Decoded | None:
    entry = _memory_cache.get(key)
    if entry is None:
        entry = _read_disk_cache(key)
        if entry is not None:
            _memory_cache.put(key, entry)
    return entry


def _decode_flac_fallback(path: str, key: tuple, soundfile_error: Exception) -> _Decoded:
    try:
        samples, sample_rate, bits = flac_fallback.decode_flac_int32(path)
    except flac_fallback.FlacFallbackUnavailable as error:
        raise AudioError(f"soundfile cannot read {path} ({soundfile_error}) and the libFLAC 1.3 "
                         f"fallback is unavailable: {error}") from error
    except flac_fallback.FlacDecodeError as error:
        raise AudioError(f"cannot decode {path}: soundfile: {soundfile_error}; libFLAC 1.3: {error.reason}") from error
    samples.flags.writeable = False
    entry = _Decoded(samples, sample_rate, bits)
    _write_disk_cache(key, entry)
    _memory_cache.put(key, entry)
    return entry


def _decode(path: str, file_stat: os.stat_result) -> tuple[np.ndarray, int]:
    """float64 samples ([n] or [n, channels]) and the sample rate, as the reference read them."""
    is_flac = Path(path).suffix.lower() == ".flac"
    key = (os.path.realpath(path), file_stat.st_size, file_stat.st_mtime_ns)
    # Only files soundfile refused are cached, so a hit skips a failing soundfile attempt.
    entry = _cached_decode(key) if is_flac else None
    if entry is None:
        try:
            waveform, sample_rate = soundfile.read(path)
            return waveform, int(sample_rate)
        except (RuntimeError, soundfile.SoundFileError) as error:
            if not is_flac:
                raise AudioError(f"cannot read audio file {path}: {error}") from error
            entry = _decode_flac_fallback(path, key, error)
    scale = 1.0 / (1 << (entry.bits_per_sample - 1))  # libsndfile's FLAC -> double rule
    return entry.samples.astype(np.float64) * scale, entry.sample_rate


def min_samples(sample_rate: int) -> int:
    """The fewest samples a file at `sample_rate` needs: MIN_AUDIO_MS of audio (1600 at 16 kHz)."""
    return -(-sample_rate * MIN_AUDIO_MS // 1000)  # integer ceiling: exact at any rate


def _check_length(frames: int, sample_rate: int, path: str) -> None:
    if frames < min_samples(sample_rate):
        raise AudioError(f"{path} is too short: {frames} samples ({1000 * frames / sample_rate:.1f} ms at "
                         f"{sample_rate} Hz), under the {MIN_AUDIO_MS} ms minimum ({min_samples(sample_rate)} "
                         f"samples); tiled to the crop length it would be scored as a repeated fragment")


def _stat_audio_file(path: str) -> os.stat_result:
    try:
        file_stat = os.stat(path)
    except FileNotFoundError:
        raise AudioError(f"audio file not found: {path}") from None
    except OSError as error:
        raise AudioError(f"cannot access audio file {path}: {error.strerror}") from None
    if not stat_module.S_ISREG(file_stat.st_mode):
        raise AudioError(f"not a regular file: {path}")
    if file_stat.st_size == 0:
        raise AudioError(f"empty audio file (0 bytes): {path}")
    return file_stat


def check_duration(path: str | os.PathLike) -> None:
    """AudioError when `path` is shorter than MIN_AUDIO_MS, judged from its header: a header read, cheap
    enough to check every listed file before a long run. A header that soundfile cannot read (a corrupt file, or a
    FLAC file that only the libFLAC 1.3 fallback may decode) is left to `read_audio`; a header that reports
    too few frames is confirmed by decoding, so this refuses only what `read_audio` would refuse."""
    path = os.fspath(path)
    try:
        info = soundfile.info(path)
    except (RuntimeError, soundfile.SoundFileError):
        return
    if info.frames >= min_samples(info.samplerate):
        return
    waveform, file_rate = _decode(path, _stat_audio_file(path))
    if waveform.size:  # an empty file is read_audio's to name
        _check_length(len(waveform), file_rate, path)


def read_audio(path: str | os.PathLike, *, sample_rate: int = 16000, resample: bool = False,
               check_length: bool = True) -> np.ndarray:
    """Read a mono waveform as float64, like the reference `soundfile.read(path)[0]`.

    Files at another sample rate or with several channels are refused; with
    `resample=True` the same flag enables both conversions (torchaudio
    resampling to `sample_rate` and averaging the channels). Files shorter than
    MIN_AUDIO_MS are refused unless `check_length=False` (impulse responses).
    """
    path = os.fspath(path)
    file_stat = _stat_audio_file(path)

    waveform, file_rate = _decode(path, file_stat)
    channels = waveform.shape[1] if waveform.ndim == 2 else 1
    if channels > 1 and not resample:
        raise AudioError(f"{path} has {channels} channels, expected mono (resample=True averages them)")
    if waveform.size == 0:
        raise AudioError(f"no audio samples in {path}")
    _check_sample_values(waveform, path)  # before the down-mix, which could average a bad channel away
    if check_length:
        _check_length(len(waveform), file_rate, path)
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=1) if channels > 1 else waveform[:, 0]
    if file_rate != sample_rate:
        if not resample:
            raise AudioError(f"{path} is {file_rate} Hz, expected {sample_rate} Hz (resample=True converts it)")
        import torchaudio.functional  # only needed for this conversion

        waveform = torchaudio.functional.resample(torch.from_numpy(waveform), file_rate, sample_rate).numpy()
    return waveform


def _check_sample_values(waveform: np.ndarray, path: str) -> None:
    """NaN/inf samples, or samples beyond MAX_ABS_SAMPLE, are an AudioError; indices count frames."""
    frames = waveform.reshape(len(waveform), -1)
    finite = np.isfinite(frames).all(axis=1)
    if not finite.all():
        first = int(np.argmin(finite))
        raise AudioError(f"{path} has {int((~finite).sum())} NaN/inf samples (first at index {first})")
    peak = np.abs(frames).max(axis=1)
    loud = peak > MAX_ABS_SAMPLE
    if loud.any():
        first = int(np.argmax(loud))
        raise AudioError(f"{path} has {int(loud.sum())} samples beyond +-{MAX_ABS_SAMPLE:g} (first at index {first}: "
                         f"{frames[first][np.argmax(np.abs(frames[first]))]:.6g}); not a plausible waveform "
                         f"(unnormalised float audio?)")


def pad_or_tile(x: np.ndarray, max_len: int) -> np.ndarray:
    """The reference `pad`: the first `max_len` samples, or the signal repeated from its start."""
    _check_crop_args(x, max_len)
    if len(x) >= max_len:
        return x[:max_len]
    repeats = int(max_len / len(x)) + 1
    return np.tile(x, repeats)[:max_len]


def random_crop(x: np.ndarray, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """The reference `pad_random`: a random window when longer, tiling when shorter.

    As in the reference the start is drawn from [0, len - max_len) (the last
    possible start is never drawn); a signal of exactly `max_len` is returned whole.
    """
    _check_crop_args(x, max_len)
    if len(x) > max_len:
        start = int(rng.integers(0, len(x) - max_len))
        return x[start:start + max_len]
    return pad_or_tile(x, max_len)


def _check_crop_args(x: np.ndarray, max_len: int) -> None:
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"expected a non-empty 1-D waveform, got shape {x.shape}")
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")


class InMemoryAudio:
    """A waveform handed over in memory (the Python API, scoring.system), read like a file.

    It is checked as `read_audio` checks a file (1-D floating-point samples, not empty, finite, within
    MAX_ABS_SAMPLE, at least MIN_AUDIO_MS at `sample_rate`) when made, so a bad one is refused at once
    naming `name`; it must already be at the system's sample rate and mono (nothing is resampled).
    `load(max_len)` is `load_waveform`'s crop="first" rule; `str()` is its name (how extraction names it).
    """

    def __init__(self, waveform: np.ndarray | torch.Tensor, name: str, *, sample_rate: int = 16000) -> None:
        if isinstance(waveform, torch.Tensor):
            if not waveform.is_floating_point():
                raise AudioError(f"{name}: expected floating-point samples in [-1, 1], got dtype {waveform.dtype}")
            waveform = waveform.detach().cpu().to(torch.float64).numpy()
        array = np.asarray(waveform)
        if array.dtype.kind != "f":
            raise AudioError(f"{name}: expected floating-point samples in [-1, 1], got dtype {array.dtype}")
        if array.ndim != 1:
            raise AudioError(f"{name}: expected a 1-D (mono) waveform, got shape {tuple(array.shape)}")
        if array.size == 0:
            raise AudioError(f"{name}: no audio samples (an empty waveform)")
        array = array.astype(np.float64)
        _check_sample_values(array, name)
        _check_length(len(array), sample_rate, name)
        self.samples = array
        self.name = name

    def __str__(self) -> str:
        return self.name

    def load(self, max_len: int | None) -> torch.Tensor:
        waveform = self.samples if max_len is None else pad_or_tile(self.samples, max_len)
        return torch.from_numpy(waveform.astype(np.float32))


def load_waveform(path: str | os.PathLike, max_len: int | None, *, crop: str = "first",
                  rng: np.random.Generator | None = None, sample_rate: int = 16000,
                  resample: bool = False) -> torch.Tensor:
    """float32 tensor of `read_audio(path)` cut/tiled to `max_len` (None: the whole file).

    crop="first" is the reference evaluation rule (`pad_or_tile`); crop="random"
    is `random_crop` and needs `rng`.
    """
    if crop not in ("first", "random"):
        raise ValueError(f"crop must be 'first' or 'random', got {crop!r}")
    if crop == "random" and rng is None and max_len is not None:
        raise ValueError("crop='random' needs an rng (np.random.Generator)")
    waveform = read_audio(path, sample_rate=sample_rate, resample=resample)
    if max_len is not None:
        waveform = pad_or_tile(waveform, max_len) if crop == "first" else random_crop(waveform, max_len, rng)
    return torch.from_numpy(waveform.astype(np.float32))
