"""Simulated codec conditions for the ASVspoof 5 layout: crude stand-ins named with the release's codec ids.

The real dev and eval data went through codecs and narrowband channels (``CODEC`` C01-C11 in the
protocols). A demonstration corpus only needs the kinds of damage they do, so each id here is a short
chain of generic operations: band limiting (a wideband codec's 7 kHz or so), a narrowband channel
(resampled through 8 kHz: nothing is left above 4 kHz), companding quantisation (G.711-like mu-law,
reusing the A01 waveform model), MP3-like spectral holes (bins far below the frame's peak are dropped,
the rest quantised in dB) and a neural-codec-like coarse magnitude quantisation with lost fine phase.
Which real codec each id stands for follows the ASVspoof 5 database paper as far as we know; the
quality ``CODEC_Q`` (1 = lowest bit rate) sets the strength. Numbers are illustrative, not measured.
"""
from __future__ import annotations

from collections.abc import Callable
from math import gcd

import numpy as np
from scipy.signal import resample_poly

from .attacks import _mulaw
from .spectral import _frequencies, _istft, _stft

QUALITIES = (1, 2, 3)


def _lowpass(signal: np.ndarray, sample_rate: int, cutoff_hz: float, highpass_hz: float = 0.0) -> np.ndarray:
    freqs = _frequencies(sample_rate)
    gain = 1.0 / (1.0 + np.exp((freqs - cutoff_hz) / 60.0))
    if highpass_hz:
        gain = gain / (1.0 + np.exp(-(freqs - highpass_hz) / 30.0))
    return _istft(_stft(signal) * gain[None], len(signal))


def _narrowband(signal: np.ndarray, sample_rate: int,
                coder: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Coded at 8 kHz (``coder(signal, 8000)``) and played back at ``sample_rate``: the resampling
    filters leave nothing above 4 kHz, the coder's own noise included."""
    common = gcd(sample_rate, 8000)
    down = coder(resample_poly(signal, 8000 // common, sample_rate // common), 8000)
    return resample_poly(down, sample_rate // common, 8000 // common)[:len(signal)]


def _companding(signal: np.ndarray, sample_rate: int, rng: np.random.Generator, bits: int) -> np.ndarray:
    peak = np.max(np.abs(signal)) + 1e-9
    # The A01 model normalises to a 0.95 peak; the original level is put back.
    return _mulaw(signal, {"sample_rate": sample_rate}, rng, bits=bits) * peak / 0.95


def _spectral_holes(signal: np.ndarray, floor_db: float, step_db: float) -> np.ndarray:
    """MP3-like: bins more than ``floor_db`` below the frame's peak are dropped, the rest quantised."""
    spectrum = _stft(signal)
    level = 20 * np.log10(np.abs(spectrum) + 1e-12)
    kept = level > level.max(axis=1, keepdims=True) - floor_db
    quantised = np.round(level / step_db) * step_db
    return _istft(np.where(kept, 10 ** (quantised / 20) * np.exp(1j * np.angle(spectrum)), 0), len(signal))


def _neural(signal: np.ndarray, sample_rate: int, rng: np.random.Generator, step_db: float) -> np.ndarray:
    """Neural-codec-like: coarse log magnitudes, and the fine phase above 3 kHz not kept."""
    spectrum = _stft(signal)
    level = np.round(20 * np.log10(np.abs(spectrum) + 1e-12) / step_db) * step_db
    phase = np.angle(spectrum)
    upper = _frequencies(sample_rate)[None] > 3000
    phase = np.where(upper, 2 * np.pi * rng.random(spectrum.shape), phase)
    return _istft(10 ** (level / 20) * np.exp(1j * phase), len(signal))


# id -> (what it stands for, signal, sample rate, rng, quality -> coded signal)
CODECS: dict[str, tuple[str, Callable[[np.ndarray, int, np.random.Generator, int], np.ndarray]]] = {
    "C01": ("opus, wideband", lambda x, sr, rng, q: _spectral_holes(_lowpass(x, sr, 6000 + 500 * q), 50, 2)),
    "C02": ("amr, wideband", lambda x, sr, rng, q: _companding(_lowpass(x, sr, 6400), sr, rng, 4 + q)),
    "C03": ("speex, wideband", lambda x, sr, rng, q: _neural(_lowpass(x, sr, 7000), sr, rng, 5 - q)),
    "C04": ("Encodec", lambda x, sr, rng, q: _neural(x, sr, rng, 7 - 2 * q)),
    "C05": ("mp3", lambda x, sr, rng, q: _spectral_holes(_lowpass(x, sr, 7000), 30 + 10 * q, 3)),
    "C06": ("m4a", lambda x, sr, rng, q: _spectral_holes(_lowpass(x, sr, 6500 + 300 * q), 35 + 10 * q, 2)),
    "C07": ("mp3 + Encodec", lambda x, sr, rng, q: _neural(_spectral_holes(x, 30 + 10 * q, 3), sr, rng, 4)),
    "C08": ("opus, narrowband",
            lambda x, sr, rng, q: _narrowband(x, sr, lambda y, r: _spectral_holes(y, 40 + 5 * q, 2))),
    "C09": ("amr, narrowband", lambda x, sr, rng, q: _narrowband(x, sr, lambda y, r: _companding(y, r, rng, 6 + q))),
    "C10": ("speex, narrowband", lambda x, sr, rng, q: _narrowband(x, sr, lambda y, r: _neural(y, r, rng, 5 - q))),
    "C11": ("device and channel, narrowband",
            lambda x, sr, rng, q: _narrowband(_lowpass(x, sr, 3400, 300), sr, lambda y, r: _companding(y, r, rng, 8))),
}
NARROWBAND_CODECS = ("C08", "C09", "C10", "C11")


def apply_codec(signal: np.ndarray, codec: str, quality: int, rng: np.random.Generator,
                sample_rate: int) -> np.ndarray:
    """``signal`` through the simulated ``codec`` at ``quality`` (one of QUALITIES)."""
    if codec not in CODECS or quality not in QUALITIES:
        raise ValueError(f"unknown codec condition {codec!r} at quality {quality!r}")
    return CODECS[codec][1](np.asarray(signal, dtype=float), sample_rate, rng, quality)
