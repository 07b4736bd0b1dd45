"""STFT analysis/synthesis, mel filterbanks, cepstral liftering and frame smoothing."""
from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FRAME = 512  # STFT frame (32 ms at 16 kHz)
HOP = 128  # 75 % overlap: sqrt-Hann analysis x synthesis windows sum to 2


@functools.cache
def _window() -> np.ndarray:
    return np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / FRAME))


def _frame_count(n_samples: int) -> int:
    return -(-n_samples // HOP) + FRAME // HOP - 1


def _frame_centres(n_samples: int) -> np.ndarray:
    """Sample index at the centre of each STFT frame."""
    return np.arange(_frame_count(n_samples)) * HOP + FRAME // 2 - (FRAME - HOP)


def _stft(signal: np.ndarray) -> np.ndarray:
    # Left padding FRAME - HOP: every real sample is covered by FRAME // HOP frames.
    n_frames = _frame_count(len(signal))
    padded = np.zeros((n_frames - 1) * HOP + FRAME)
    padded[FRAME - HOP:FRAME - HOP + len(signal)] = signal
    frames = sliding_window_view(padded, FRAME)[::HOP]
    return np.fft.rfft(frames * _window(), axis=-1)


def _istft(spectrum: np.ndarray, n_samples: int) -> np.ndarray:
    frames = np.fft.irfft(spectrum, FRAME, axis=-1) * _window()
    n_frames, overlap = len(frames), FRAME // HOP
    out = np.zeros((n_frames + overlap - 1) * HOP)
    blocks = frames.reshape(n_frames, overlap, HOP)
    for shift in range(overlap):
        out[shift * HOP:(shift + n_frames) * HOP] += blocks[:, shift, :].reshape(-1)
    return out[FRAME - HOP:FRAME - HOP + n_samples] / 2.0


def _frequencies(sample_rate: int) -> np.ndarray:
    return np.fft.rfftfreq(FRAME, 1.0 / sample_rate)


def _smooth_frames(values: np.ndarray, width: int) -> np.ndarray:
    """Hann smoothing along the first (frame) axis, edges held."""
    if width <= 1:
        return values
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    pad = width // 2
    padded = np.concatenate([np.repeat(values[:1], pad, 0), values, np.repeat(values[-1:], width - 1 - pad, 0)])
    if values.ndim == 1:
        return np.convolve(padded, kernel, mode="valid")
    return np.stack([np.convolve(padded[:, j], kernel, mode="valid") for j in range(values.shape[1])], 1)


def _lifter(log_magnitude: np.ndarray, order: int) -> np.ndarray:
    """Cepstral smoothing of log magnitudes (frames, bins): keep quefrencies < order."""
    cepstrum = np.fft.irfft(log_magnitude, FRAME, axis=-1)
    cepstrum[:, order:FRAME - order + 1] = 0.0
    return np.fft.rfft(cepstrum, axis=-1).real


@functools.cache
def _mel_matrix(n_bands: int, sample_rate: int) -> np.ndarray:
    """Triangular mel filterbank, (n_bands, bins)."""
    def mel(hz): return 2595 * np.log10(1 + hz / 700)
    def hz(m): return 700 * (10 ** (m / 2595) - 1)
    edges = hz(np.linspace(0, mel(sample_rate / 2), n_bands + 2))
    freqs = _frequencies(sample_rate)
    rising = (freqs[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    falling = (edges[2:, None] - freqs[None]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0.0, np.minimum(rising, falling))


@functools.cache
def _mel_inverse(n_bands: int, sample_rate: int) -> np.ndarray:
    """Least-squares way back from mel bands to STFT bins, (n_bands, bins)."""
    return np.linalg.pinv(_mel_matrix(n_bands, sample_rate).T)
