"""A deterministic synthetic SASV corpus written in the ASVspoof 2019 LA layout.

It lets the toolkit train and evaluate end to end without the real database:
``generate_corpus(root)`` writes FLAC files and protocol files whose names and
formats are those of ASVspoof 2019 LA and of the SASV enrolment/trial lists.

Signal model
------------
Every speaker is a source-filter voice (``Voice``): f0 range, vocal-tract length
(formant scaling), per-vowel formant offsets, formant bandwidths, spectral tilt,
a fixed timbre peak and notch, jitter, shimmer, breathiness and speaking rate.
Within a partition and gender, f0 and vocal-tract length are spread out (Latin
hypercube) so that a few speakers are never near-duplicates. An utterance is a
random sequence of syllables (vowels, nasals, fricatives, stops, pauses) with
formant transitions, intonation and stress, rendered in the STFT domain
(Rosenberg glottal pulses and noise through time-varying resonators) and
"recorded" through a session channel (high-pass, tilt, pink noise floor, level).

Spoofing attacks claim a target speaker. Each one has an acoustic model (how
the target's voice and prosody are imitated) and a waveform generator (which
leaves the artefacts). Acoustic models:

* ``tts``: the target's voice with a small fixed estimation error per system,
  over-smoothed formants, regular durations, flattened intonation, no jitter or
  shimmer, less breath noise, a cleaner noise floor than the recordings;
* ``vc``: another (same-gender) speaker's utterance, timing and prosody,
  re-rendered with a voice blended 85 % towards the target;
* ``concat``: units of natural target speech from different sessions, spliced;
* ``filter``: another speaker's natural speech, pitch-shifted to the target's
  median f0 (phase vocoder + resampling, so the envelope moves too), then
  filtered towards the target's envelope;
* ``concat_filter``: spliced units of another speaker, pitch-shifted, filtered.

=====  ======  =============  ====================================================
id     type    acoustic       waveform generator / artefacts
=====  ======  =============  ====================================================
A01    TTS     tts            neural AR model: 8-bit mu-law output with sampling noise
A02    TTS     tts            envelope vocoder, cepstral order 24, pulse+noise (noise > 4 kHz)
A03    TTS     tts            envelope vocoder, order 40, envelope held for 40 ms
A04    TTS     concat         unit selection: natural units spliced with 3 ms joins
A05    VC      vc             envelope vocoder, order 30, noise excitation > 3 kHz
A06    VC      filter         frame-wise conversion filter (order 20) in the STFT domain
A07    TTS     tts            envelope vocoder + GAN-like post-filter (sharpened formants,
                              high-band texture noise)
A08    TTS     tts            neural source-filter: sine excitation below 4 kHz, noise above
A09    TTS     tts            STFT magnitude kept, phase randomised above 1 kHz
A10    TTS     tts            WaveRNN-like: 10-bit mu-law, band-limited to 7 kHz
A11    TTS     tts            Griffin-Lim (16 iterations) from an 80-band mel magnitude
A12    TTS     tts            WaveNet-like: 8-bit mu-law, strongly flattened prosody
A13    TTS_VC  concat_filter  long-term conversion filter in 10 ms blocks (circular wrap)
A14    TTS_VC  vc             STRAIGHT-like: order-60 envelope smoothed over 5 frames
A15    TTS_VC  vc             WaveNet-like: 8-bit mu-law with sampling noise
A16    TTS     concat         = A04
A17    VC      filter         waveform filtering in non-overlapping 20 ms blocks
A18    VC      vc             MFCC-like vocoder: 20-band mel envelope, noise > 2 kHz
A19    VC      filter         = A06
=====  ======  =============  ====================================================

Train and dev use A01-A06, eval A07-A19: A16 and A19 repeat A04 and A06, A12
and A15 share A01's waveform model with other acoustic models, the others are
unseen, as in ASVspoof 2019 LA. One artefact is common to every system: a fixed
per-system roll-off of the top band (12-24 dB above 5.8-7.2 kHz), so that, as on
the real database, a countermeasure trained on the known attacks can detect
unseen ones.

Protocols follow the real database: CM lists ``SPK UTT - ATTACK KEY``; for dev
and eval, enrolled speakers have bona fide and spoofed utterances, extra
"non-target" speakers only bona fide ones; enrolment utterances are in the flac
folder but not in the CM list; ``enr_audio/{dev,eval}/SPK_UTT.flac`` is the
concatenation of a speaker's enrolment utterances; non-target trials pair an
enrolled speaker with bona fide speech of every other speaker of the same
gender in the partition (enrolled or not, because the partitions are small).

Every utterance has its own random stream derived from ``CorpusSpec.seed``, so
the same spec gives byte-identical files. A marker file is written last;
``corpus_is_complete`` checks it, so an interrupted generation is redone.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import lfilter, resample
from tqdm import tqdm

FRAME = 512  # STFT frame (32 ms at 16 kHz)
HOP = 128  # 75 % overlap: sqrt-Hann analysis x synthesis windows sum to 2
COMPLETE_MARKER = "synthetic_corpus_complete.json"
IN_PROGRESS_MARKER = "synthetic_corpus_in_progress.json"
FORMAT_VERSION = 3  # 2: stronger speaker timbre, 48 training speakers, top-band roll-off; 3: deeper roll-off
PARTITIONS = ("train", "dev", "eval")
_PARTITION_LETTER = {"train": "T", "dev": "D", "eval": "E"}
_PROTOCOL_SUFFIX = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}


@dataclass(frozen=True)
class AttackRecipe:
    system: str  # TTS, VC or TTS_VC, as in the ASVspoof 2019 documentation
    acoustic: str  # tts | vc | concat | filter | concat_filter
    waveform: str  # key of _WAVEFORM_GENERATORS
    options: tuple[tuple[str, float], ...] = ()


ATTACKS: dict[str, AttackRecipe] = {
    "A01": AttackRecipe("TTS", "tts", "mulaw", (("bits", 8), ("flip_prob", 0.3))),
    "A02": AttackRecipe("TTS", "tts", "envelope", (("order", 24), ("noise_above_hz", 4000))),
    "A03": AttackRecipe("TTS", "tts", "envelope", (("order", 40), ("hold_frames", 5))),
    "A04": AttackRecipe("TTS", "concat", "identity"),
    "A05": AttackRecipe("VC", "vc", "envelope", (("order", 30), ("noise_above_hz", 3000))),
    "A06": AttackRecipe("VC", "filter", "spectral_filter", (("order", 20),)),
    "A07": AttackRecipe("TTS", "tts", "envelope", (("order", 30), ("postfilter", 1.6), ("texture_db", 4.0))),
    "A08": AttackRecipe("TTS", "tts", "envelope", (("order", 36), ("sine_below_hz", 4000))),
    "A09": AttackRecipe("TTS", "tts", "phase_random", (("above_hz", 1000),)),
    "A10": AttackRecipe("TTS", "tts", "mulaw", (("bits", 10), ("flip_prob", 0.1), ("cutoff_hz", 7000))),
    "A11": AttackRecipe("TTS", "tts", "griffin_lim", (("iterations", 16), ("mel_bands", 80))),
    "A12": AttackRecipe("TTS", "tts", "mulaw", (("bits", 8), ("flip_prob", 0.15), ("prosody", 0.25))),
    "A13": AttackRecipe("TTS_VC", "concat_filter", "block_filter", (("order", 16), ("block_ms", 10))),
    "A14": AttackRecipe("TTS_VC", "vc", "envelope", (("order", 60), ("smooth_frames", 5), ("noise_above_hz", 5000))),
    "A15": AttackRecipe("TTS_VC", "vc", "mulaw", (("bits", 8), ("flip_prob", 0.3))),
    "A16": AttackRecipe("TTS", "concat", "identity"),
    "A17": AttackRecipe("VC", "filter", "block_filter", (("order", 10), ("block_ms", 20))),
    "A18": AttackRecipe("VC", "vc", "envelope", (("mel_bands", 20), ("noise_above_hz", 2000))),
    "A19": AttackRecipe("VC", "filter", "spectral_filter", (("order", 20),)),
}
TRAIN_ATTACKS = ("A01", "A02", "A03", "A04", "A05", "A06")
EVAL_ATTACKS = tuple(f"A{index:02d}" for index in range(7, 20))


@dataclass(frozen=True)
class CorpusSpec:
    """Corpus sizes; the defaults are the demo corpus, ``tiny()`` the test one."""

    seed: int = 0
    sample_rate: int = 16000
    n_train_speakers: int = 48
    n_dev_speakers: int = 8  # enrolled: bona fide, spoofs, enrolment
    n_eval_speakers: int = 8
    n_dev_nontarget_speakers: int = 4  # bona fide only, zero-effort impostors
    n_eval_nontarget_speakers: int = 4
    bonafide_per_speaker: int = 10
    spoof_per_speaker_per_attack: int = 2
    enrollment_per_speaker: int = 4
    min_seconds: float = 1.0
    max_seconds: float = 3.0
    train_attacks: tuple[str, ...] = TRAIN_ATTACKS  # also used for dev
    eval_attacks: tuple[str, ...] = EVAL_ATTACKS

    @classmethod
    def tiny(cls, seed: int = 0) -> "CorpusSpec":
        return cls(
            seed=seed, n_train_speakers=6, n_dev_speakers=3, n_eval_speakers=3,
            n_dev_nontarget_speakers=2, n_eval_nontarget_speakers=2,
            bonafide_per_speaker=6, spoof_per_speaker_per_attack=1, enrollment_per_speaker=2,
            min_seconds=0.8, max_seconds=1.2,
        )

    def __post_init__(self) -> None:
        unknown = [a for a in (*self.train_attacks, *self.eval_attacks) if a not in ATTACKS]
        if unknown:
            raise ValueError(f"CorpusSpec: unknown attacks {unknown}")
        if self.n_train_speakers < 2 or self.n_dev_speakers < 2 or self.n_eval_speakers < 2:
            raise ValueError("CorpusSpec: each partition needs at least 2 enrolled speakers")
        if self.bonafide_per_speaker < 1 or self.enrollment_per_speaker < 1:
            raise ValueError("CorpusSpec: bonafide_per_speaker and enrollment_per_speaker must be >= 1")
        if not 0.3 <= self.min_seconds <= self.max_seconds:
            raise ValueError("CorpusSpec: need 0.3 <= min_seconds <= max_seconds")

    def to_json(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- voices

# Formant targets (F1-F4, Hz) of a reference adult male: ten vowels, then the
# murmurs of /m/ and /n/.
_TARGET_FORMANTS = np.array([
    [270, 2290, 3010, 3700], [390, 1990, 2550, 3600], [530, 1840, 2480, 3550],
    [660, 1720, 2410, 3500], [730, 1090, 2440, 3400], [570, 840, 2410, 3300],
    [440, 1020, 2240, 3300], [300, 870, 2240, 3300], [640, 1190, 2390, 3400],
    [490, 1350, 1690, 3300], [250, 1100, 2300, 3300], [250, 1500, 2400, 3400],
], dtype=float)
_N_VOWELS = 10
_NASALS = (10, 11)
_BASE_BANDWIDTHS = np.array([70.0, 90.0, 150.0, 250.0])
_HIGHER_POLES = np.array([4500.0, 5500.0, 6500.0, 7500.0])
_HIGHER_BANDWIDTHS = np.array([350.0, 450.0, 550.0, 650.0])
# Fricatives: (centre Hz at formant scale 1, width in octaves, gain, voicing).
_FRICATIVES = np.array([
    [6200, 0.45, 3.0, 0.0],  # s
    [3300, 0.55, 2.5, 0.0],  # sh
    [4500, 1.60, 0.8, 0.0],  # f
    [6000, 0.50, 1.5, 0.35],  # z
])


@dataclass(frozen=True)
class Voice:
    gender: str
    f0_median: float  # Hz
    f0_spread: float  # semitones per unit of intonation
    formant_scale: float  # inverse vocal-tract length, relative to the reference male
    formant_warp: np.ndarray  # (12, 4) per-target multiplicative formant offsets
    bandwidth_scale: float
    tilt_db_per_octave: float
    peak_hz: float  # fixed timbre resonance
    peak_db: float
    notch_hz: float  # fixed anti-resonance
    notch_db: float
    open_quotient: float
    jitter: float  # relative std of the period
    shimmer: float  # std of the per-period log amplitude
    breathiness: float
    speaking_rate: float


def sample_voice(rng: np.random.Generator, gender: str, f0_quantile: float, scale_quantile: float) -> Voice:
    """A random voice; f0 and vocal-tract length sit at the given quantiles of the gender's range."""
    female = gender == "female"
    f0_range, scale_range = ((165.0, 260.0), (1.04, 1.32)) if female else ((85.0, 150.0), (0.84, 1.08))
    per_formant = np.exp(rng.normal(0.0, 0.07, 4))
    return Voice(
        gender=gender,
        f0_median=float(f0_range[0] * (f0_range[1] / f0_range[0]) ** f0_quantile),
        f0_spread=float(rng.uniform(1.0, 2.8)),
        formant_scale=float(scale_range[0] + (scale_range[1] - scale_range[0]) * scale_quantile),
        formant_warp=per_formant * np.exp(rng.normal(0.0, 0.06, (len(_TARGET_FORMANTS), 4))),
        bandwidth_scale=float(rng.uniform(0.7, 1.8)),
        tilt_db_per_octave=float(rng.uniform(0.0, 7.0)),
        peak_hz=float(rng.uniform(2200, 5200)),
        peak_db=float(rng.uniform(6, 14)),
        notch_hz=float(rng.uniform(800, 2800)),
        notch_db=float(rng.uniform(6, 16)),
        open_quotient=float(rng.uniform(0.45, 0.75)),
        jitter=float(rng.uniform(0.003, 0.015)),
        shimmer=float(rng.uniform(0.02, 0.08)),
        breathiness=float(rng.uniform(0.05, 0.3) if female else rng.uniform(0.02, 0.2)),
        speaking_rate=float(rng.uniform(0.8, 1.25)),
    )


def _blend_voices(target: Voice, source: Voice, weight: float) -> Voice:
    """Geometric interpolation of the envelope parameters, ``weight`` towards target."""
    def mix(a: float | np.ndarray, b: float | np.ndarray):
        return np.exp(weight * np.log(a) + (1 - weight) * np.log(b))

    return dataclasses.replace(
        target,
        formant_scale=float(mix(target.formant_scale, source.formant_scale)),
        formant_warp=mix(target.formant_warp, source.formant_warp),
        bandwidth_scale=float(mix(target.bandwidth_scale, source.bandwidth_scale)) * 1.15,  # over-smoothed
        tilt_db_per_octave=weight * target.tilt_db_per_octave + (1 - weight) * source.tilt_db_per_octave,
        peak_hz=float(mix(target.peak_hz, source.peak_hz)),
        notch_hz=float(mix(target.notch_hz, source.notch_hz)),
        jitter=source.jitter * 0.5, shimmer=source.shimmer * 0.5,
        breathiness=source.breathiness, speaking_rate=source.speaking_rate,
    )


def _tts_voice(target: Voice, rng: np.random.Generator) -> Voice:
    """The target as a TTS model learns it: small fixed estimation errors, no jitter."""
    return dataclasses.replace(
        target,
        f0_median=target.f0_median * float(np.exp(rng.normal(0, 0.03))),
        formant_scale=target.formant_scale * float(np.exp(rng.normal(0, 0.01))),
        formant_warp=target.formant_warp * np.exp(rng.normal(0, 0.015, target.formant_warp.shape)),
        bandwidth_scale=target.bandwidth_scale * 1.3 * float(np.exp(rng.normal(0, 0.05))),  # over-smoothed
        jitter=0.0, shimmer=0.0, breathiness=target.breathiness * 0.5,
    )


# --------------------------------------------------------------------------- STFT

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


# --------------------------------------------------------------------------- utterances

@dataclass
class UtterancePlan:
    """Voice-independent content of an utterance, one value per STFT frame."""

    n_samples: int
    target: np.ndarray  # int index into _TARGET_FORMANTS (consonants: next vowel)
    voice_gain: np.ndarray
    aspiration_gain: np.ndarray
    frication_gain: np.ndarray
    frication_centre: np.ndarray  # Hz at formant scale 1
    frication_width: np.ndarray  # octaves
    nasal: np.ndarray  # 1 on nasal murmurs (wider bandwidths)
    intonation: np.ndarray  # in units of the speaker's f0 spread
    f0_offset: float  # semitones, utterance-level


def _plan_utterance(rng: np.random.Generator, n_samples: int, sample_rate: int,
                    speaking_rate: float, regular: bool = False, prosody: float = 1.0) -> UtterancePlan:
    n_frames = _frame_count(n_samples)
    frame_s = HOP / sample_rate
    spread = 0.1 if regular else 0.35  # relative duration variability

    def frames_for(seconds: float) -> int:
        seconds *= np.exp(rng.normal(0, spread)) / speaking_rate
        return max(1, int(round(seconds / frame_s)))

    # (frames, target, voice, aspiration, frication, fricative row or -1, nasal, stress)
    segments: list[tuple] = [(int(rng.uniform(0.08, 0.25) / frame_s), -1, 0, 0, 0, -1, 0, 0)]
    used = segments[0][0]
    trailing = int(rng.uniform(0.08, 0.25) / frame_s)
    while used < n_frames - trailing:
        vowel = int(rng.integers(_N_VOWELS))
        onset = rng.random()
        if onset < 0.3:
            row = int(rng.integers(len(_FRICATIVES)))
            segments.append((frames_for(0.10), vowel, _FRICATIVES[row, 3], 0, 1, row, 0, 0))
        elif onset < 0.5:
            segments.append((frames_for(0.06), vowel, 0, 0, 0, -1, 0, 0))  # stop closure
            segments.append((max(1, frames_for(0.015)), vowel, 0, 0.6, 0.7, 2, 0, 0))  # burst
        elif onset < 0.65:
            nasal = _NASALS[int(rng.integers(2))]
            segments.append((frames_for(0.07), nasal, 0.35, 0, 0, -1, 1, 0))
        elif onset < 0.72:
            segments.append((frames_for(0.06), vowel, 0, 0.5, 0, -1, 0, 0))  # /h/
        stress = rng.uniform(0.55, 1.0)
        segments.append((frames_for(0.13), vowel, stress, 0, 0, -1, 0, stress))
        if rng.random() < 0.3:
            row = int(rng.integers(len(_FRICATIVES)))
            segments.append((frames_for(0.09), vowel, _FRICATIVES[row, 3], 0, 1, row, 0, 0))
        if rng.random() < 0.1:
            segments.append((frames_for(0.2), -1, 0, 0, 0, -1, 0, 0))  # pause
        used = sum(s[0] for s in segments)
    segments.append((max(0, n_frames - used), -1, 0, 0, 0, -1, 0, 0))  # trailing silence
    lengths = [s[0] for s in segments]
    target, voicing, aspiration, frication, fricative, nasal, stress = (
        np.repeat(np.array([s[i] for s in segments]), lengths)[:n_frames] for i in range(1, 8))
    # Silences and closures take the formants of the next vowel (anticipation).
    target = target.astype(int)
    valid = np.flatnonzero(target >= 0)
    following = np.minimum(np.searchsorted(valid, np.arange(n_frames)), len(valid) - 1)
    target = target[valid[following]]
    fricative = fricative.astype(int)
    rows = np.clip(fricative, 0, None)
    centre = _FRICATIVES[rows, 0] * np.exp(0.05 * rng.standard_normal(n_frames))
    contour = _smooth_frames(rng.normal(0, 1, n_frames), max(3, int(0.3 / frame_s)))
    contour /= contour.std() + 1e-9
    declination = np.linspace(0.8, -0.8, n_frames)
    accents = _smooth_frames(stress.astype(float) * 1.2, max(3, int(0.1 / frame_s)))
    return UtterancePlan(
        n_samples=n_samples, target=target,
        voice_gain=_smooth_frames(voicing.astype(float), 3),
        aspiration_gain=_smooth_frames(aspiration.astype(float), 3),
        frication_gain=_smooth_frames(frication * _FRICATIVES[rows, 2] * (fricative >= 0), 3),
        frication_centre=centre, frication_width=_FRICATIVES[rows, 1],
        nasal=nasal.astype(float),
        intonation=prosody * (0.6 * contour + declination + accents - accents.mean()),
        f0_offset=float(rng.normal(0, 0.6 * prosody)),
    )


def _f0_track(plan: UtterancePlan, voice: Voice) -> np.ndarray:
    """f0 in Hz per sample."""
    semitones = plan.f0_offset + voice.f0_spread * plan.intonation
    per_frame = voice.f0_median * 2.0 ** (semitones / 12)
    return np.interp(np.arange(plan.n_samples), _frame_centres(plan.n_samples), per_frame)


def _glottal_source(f0: np.ndarray, voice: Voice, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Rosenberg flow derivative with per-period jitter/shimmer, plus aspiration noise."""
    rough_phase = np.cumsum(f0) / sample_rate
    jitter = rng.normal(0, voice.jitter, int(rough_phase[-1]) + 3)
    phase = np.cumsum(f0 * (1 + jitter[rough_phase.astype(int)])) / sample_rate
    period = phase.astype(int)
    position = phase - period
    opening = 0.75 * voice.open_quotient
    closing = 0.25 * voice.open_quotient
    flow = np.where(
        position < opening, 0.5 - 0.5 * np.cos(np.pi * position / opening),
        np.where(position < opening + closing, np.cos(0.5 * np.pi * (position - opening) / closing), 0.0))
    flow *= np.exp(rng.normal(0, voice.shimmer, period[-1] + 2))[period]
    derivative = np.diff(flow, prepend=0.0)
    derivative /= np.sqrt(np.mean(derivative ** 2)) + 1e-12
    aspiration = rng.standard_normal(len(f0)) * (0.25 + flow) * voice.breathiness * 0.2
    return derivative + aspiration


def _resonances(formants: np.ndarray, bandwidths: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Log magnitude of cascaded 2-pole resonators, unity gain at DC: (frames, bins)."""
    f2 = (freqs ** 2).astype(np.float32)[None]
    power = np.ones((len(formants), len(freqs)), np.float32)
    for column in range(formants.shape[1]):  # float32, one resonator at a time: fast
        centre2 = (formants[:, column:column + 1] ** 2).astype(np.float32)
        bandwidth2 = (bandwidths[:, column:column + 1] ** 2).astype(np.float32)
        detuning = centre2 - f2
        power *= centre2 * centre2 / (detuning * detuning + bandwidth2 * f2)
    return 0.5 * np.log(power.astype(np.float64))


def _speaker_log_envelope(voice: Voice, freqs: np.ndarray) -> np.ndarray:
    """Frame-independent part of a voice's envelope: higher poles, tilt, timbre."""
    # Fixed poles above F4 keep the high band from falling off too fast.
    higher = _resonances((_HIGHER_POLES * voice.formant_scale)[None], _HIGHER_BANDWIDTHS[None], freqs)[0]
    tilt = voice.tilt_db_per_octave * np.log2(np.maximum(freqs, 500.0) / 500.0)
    tilt += 6.0 / (1.0 + (freqs / 400.0) ** 2)  # low shelf: strong first harmonics
    peak = 20 * np.log10(1 + (10 ** (voice.peak_db / 20) - 1)
                         * np.exp(-0.5 * ((freqs - voice.peak_hz) / (0.12 * voice.peak_hz)) ** 2))
    notch = 20 * np.log10(1 - (1 - 10 ** (-voice.notch_db / 20))
                          * np.exp(-0.5 * ((freqs - voice.notch_hz) / (0.08 * voice.notch_hz)) ** 2))
    return higher + (tilt + peak + notch) * (np.log(10) / 20)


def _vocal_tract_log(plan: UtterancePlan, voice: Voice, freqs: np.ndarray) -> np.ndarray:
    """Log magnitude of the speaker's vocal tract for every frame of the plan."""
    formants = _TARGET_FORMANTS[plan.target] * voice.formant_warp[plan.target] * voice.formant_scale
    formants = np.exp(_smooth_frames(np.log(formants), 7))  # ~50 ms transitions
    bandwidths = (_BASE_BANDWIDTHS * voice.bandwidth_scale)[None] * (1 + 0.8 * plan.nasal[:, None])
    return _resonances(formants, bandwidths, freqs) + _speaker_log_envelope(voice, freqs)[None]


def _average_vocal_tract_log(voice: Voice, freqs: np.ndarray) -> np.ndarray:
    """Log envelope averaged over the vowels: a long-term, content-free envelope."""
    formants = _TARGET_FORMANTS[:_N_VOWELS] * voice.formant_warp[:_N_VOWELS] * voice.formant_scale
    bandwidths = np.broadcast_to(_BASE_BANDWIDTHS * voice.bandwidth_scale, formants.shape)
    return _resonances(formants, bandwidths, freqs).mean(0) + _speaker_log_envelope(voice, freqs)


@dataclass(frozen=True)
class Session:
    """Recording channel of one utterance."""

    highpass_hz: float
    tilt_db_per_octave: float
    snr_db: float
    level_dbfs: float

    @staticmethod
    def sample(rng: np.random.Generator) -> "Session":
        return Session(float(rng.uniform(50, 120)), float(rng.normal(0, 0.3)),
                       float(rng.uniform(38, 52)), float(rng.uniform(-22, -16)))

    def log_response(self, freqs: np.ndarray) -> np.ndarray:
        highpass = 2 * np.log(freqs + 1e-3) - 0.5 * np.log(freqs ** 4 + self.highpass_hz ** 4)
        tilt = self.tilt_db_per_octave * np.log2(np.maximum(freqs, 60.0) / 1000.0) * (np.log(10) / 20)
        return highpass + tilt


def _render(plan: UtterancePlan, voice: Voice, session: Session, rng: np.random.Generator,
            sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Speech through the session channel, level-normalised, and its f0 per sample."""
    freqs = _frequencies(sample_rate)
    f0 = _f0_track(plan, voice)
    source = _stft(_glottal_source(f0, voice, rng, sample_rate))
    noise = _stft(rng.standard_normal(plan.n_samples))
    tract = np.exp(_vocal_tract_log(plan, voice, freqs))
    octaves = np.log2(np.maximum(freqs, 100.0)[None] / (plan.frication_centre[:, None] * np.sqrt(voice.formant_scale)))
    frication = plan.frication_gain[:, None] * np.exp(-0.5 * (octaves / plan.frication_width[:, None]) ** 2)
    spectrum = source * tract * plan.voice_gain[:, None]
    spectrum += noise * (tract * (0.3 * plan.aspiration_gain[:, None]) + frication * 0.15)
    spectrum *= np.exp(session.log_response(freqs))[None]
    speech = _istft(spectrum, plan.n_samples)
    return _record(speech, session, rng), f0


# Generative models reproduce the average channel of their training data, with a
# cleaner noise floor than the recordings.
_MODEL_CHANNEL = Session(highpass_hz=100.0, tilt_db_per_octave=0.0, snr_db=58.0, level_dbfs=-19.0)


def _active_rms(signal: np.ndarray) -> float:
    """RMS over the louder half of 8 ms blocks: a speech level that ignores pauses."""
    usable = len(signal) // HOP * HOP
    energies = np.mean(signal[:usable].reshape(-1, HOP) ** 2, axis=1)
    loud = np.sort(energies)[len(energies) // 2:]
    return float(np.sqrt(np.mean(loud)) + 1e-12)


def _set_level(signal: np.ndarray, level_dbfs: float) -> np.ndarray:
    signal = signal * (10 ** (level_dbfs / 20) / _active_rms(signal))
    peak = np.max(np.abs(signal))
    return signal * (0.95 / peak) if peak > 0.95 else signal


# Pink-noise approximation (three poles and zeros, -3 dB/octave).
_PINK_B = np.array([0.049922035, -0.095993537, 0.050612699, -0.004408786])
_PINK_A = np.array([1.0, -2.494956002, 2.017265875, -0.522189400])


def _record(speech: np.ndarray, session: Session, rng: np.random.Generator) -> np.ndarray:
    speech = _set_level(speech, session.level_dbfs)
    floor = lfilter(_PINK_B, _PINK_A, rng.standard_normal(len(speech) + 2000))[2000:]
    floor *= 10 ** ((session.level_dbfs - session.snr_db) / 20) / (np.std(floor) + 1e-12)
    return speech + floor


# --------------------------------------------------------------------------- waveform generators

def _excitation_spectrum(f0: np.ndarray, voiced: np.ndarray, rng: np.random.Generator, sample_rate: int,
                         noise_above_hz: float, sine_below_hz: float) -> np.ndarray:
    """Flat-spectrum vocoder excitation: pulses (or sines) in voiced bands, noise elsewhere."""
    freqs = _frequencies(sample_rate)
    phase = np.cumsum(f0) / sample_rate
    if sine_below_hz > 0:
        n_harmonics = int(sine_below_hz / max(f0.min(), 50.0))
        harmonics = np.arange(1, n_harmonics + 1)
        # Only harmonics below the cut-off: each one is gated by its own frequency.
        gates = (harmonics[None, :] * f0[:, None] < sine_below_hz)
        periodic = np.sum(np.cos(2 * np.pi * np.outer(phase, harmonics)) * gates, axis=1)
    else:
        periodic = np.diff(phase.astype(int), prepend=0).astype(float)
    periodic_spec = _stft(periodic)
    periodic_spec /= np.sqrt(np.mean(np.abs(periodic_spec) ** 2, axis=1, keepdims=True)) + 1e-9
    noise_spec = _stft(rng.standard_normal(len(f0)))
    noise_spec /= np.sqrt(np.mean(np.abs(noise_spec) ** 2, axis=1, keepdims=True)) + 1e-9
    upper = sine_below_hz if sine_below_hz > 0 else noise_above_hz
    band = 1.0 / (1.0 + np.exp((freqs - upper) / 150.0)) if upper > 0 else np.ones_like(freqs)
    mix = voiced[:, None] * band[None]
    return periodic_spec * mix + noise_spec * np.sqrt(1 - mix ** 2)


def _envelope_vocoder(signal: np.ndarray, context: dict, rng: np.random.Generator, order: float = 30,
                      noise_above_hz: float = 0, hold_frames: float = 1, smooth_frames: float = 1,
                      postfilter: float = 1.0, texture_db: float = 0.0, mel_bands: float = 0,
                      sine_below_hz: float = 0) -> np.ndarray:
    """Analyse a smooth spectral envelope, resynthesise it from an ideal excitation."""
    sample_rate = context["sample_rate"]
    freqs = _frequencies(sample_rate)
    power = np.abs(_stft(signal)) ** 2 + 1e-10
    if mel_bands:  # band energies, linearly interpolated back to the bins
        mel = _mel_matrix(int(mel_bands), sample_rate)
        centres = freqs @ mel.T / mel.sum(1)
        log_bands = 0.5 * np.log(power @ mel.T / mel.sum(1))
        log_env = np.stack([np.interp(freqs, centres, row) for row in log_bands])
    else:
        log_env = _lifter(0.5 * np.log(power), int(order))
    if hold_frames > 1:
        held = np.arange(len(log_env)) // int(hold_frames) * int(hold_frames)
        log_env = log_env[held]
    log_env = _smooth_frames(log_env, int(smooth_frames))
    if postfilter != 1.0:
        mean = log_env.mean(axis=1, keepdims=True)
        log_env = mean + postfilter * (log_env - mean)
    if texture_db:
        texture = rng.normal(0, texture_db / 8.7, log_env.shape) * (freqs[None] > 3000)
        log_env = log_env + texture
    voiced = np.clip(context["voice_gain"] * 3.0, 0, 1)
    excitation = _excitation_spectrum(context["f0"], voiced, rng, sample_rate, noise_above_hz, sine_below_hz)
    return _istft(excitation * np.exp(log_env), len(signal))


def _mulaw(signal: np.ndarray, context: dict, rng: np.random.Generator, bits: float = 8,
           flip_prob: float = 0.0, cutoff_hz: float = 0) -> np.ndarray:
    """mu-law quantised output as from an autoregressive sample-level model."""
    levels = 2 ** int(bits)
    mu = levels - 1
    scaled = signal / (np.max(np.abs(signal)) + 1e-9) * 0.95
    companded = np.sign(scaled) * np.log1p(mu * np.abs(scaled)) / np.log1p(mu)
    codes = np.round((companded + 1) / 2 * mu)
    # Sampling from the predicted distribution sometimes picks a neighbouring code.
    codes += (rng.random(len(codes)) < flip_prob) * rng.choice([-1.0, 1.0], len(codes))
    companded = np.clip(codes, 0, mu) / mu * 2 - 1
    out = np.sign(companded) * np.expm1(np.abs(companded) * np.log1p(mu)) / mu
    if cutoff_hz:
        spectrum = _stft(out)
        freqs = _frequencies(context["sample_rate"])
        spectrum *= 1.0 / (1.0 + np.exp((freqs - cutoff_hz) / 40.0))[None]
        out = _istft(spectrum, len(out))
    return out


def _phase_random(signal: np.ndarray, context: dict, rng: np.random.Generator,
                  above_hz: float = 1500) -> np.ndarray:
    spectrum = _stft(signal)
    random_phase = np.exp(2j * np.pi * rng.random(spectrum.shape))
    upper = _frequencies(context["sample_rate"])[None] > above_hz
    spectrum = np.where(upper, np.abs(spectrum) * random_phase, spectrum)
    return _istft(spectrum, len(signal))


def _griffin_lim(signal: np.ndarray, context: dict, rng: np.random.Generator,
                 iterations: float = 16, mel_bands: float = 80) -> np.ndarray:
    magnitude = np.abs(_stft(signal))
    mel = _mel_matrix(int(mel_bands), context["sample_rate"])
    magnitude = np.maximum(magnitude @ mel.T @ _mel_inverse(int(mel_bands), context["sample_rate"]), 0.0)
    spectrum = magnitude * np.exp(2j * np.pi * rng.random(magnitude.shape))
    for _ in range(int(iterations)):
        rebuilt = _stft(_istft(spectrum, len(signal)))
        spectrum = magnitude * np.exp(1j * np.angle(rebuilt))
    return _istft(spectrum, len(signal))


def _conversion_log_filter(context: dict, order: int, n_frames: int) -> np.ndarray:
    """Smooth log ratio of the target's envelope to the (pitch-shifted) source's, per frame.

    With a plan the ratio follows the phones (frame-wise mapping); without one
    (spliced units) it is the ratio of long-term envelopes.
    """
    freqs = _frequencies(context["sample_rate"])
    shifted = freqs / context["shift"]  # resampling moved the source's envelope up by `shift`
    plan = context["plan"]
    if plan is None:
        difference = (_average_vocal_tract_log(context["target_voice"], freqs)
                      - _average_vocal_tract_log(context["source_voice"], shifted))
        difference = np.broadcast_to(difference, (n_frames, len(freqs)))
    else:
        difference = (_vocal_tract_log(plan, context["target_voice"], freqs)
                      - _vocal_tract_log(plan, context["source_voice"], shifted))
    return _lifter(difference, order)


def _spectral_filter(signal: np.ndarray, context: dict, rng: np.random.Generator, order: float = 20) -> np.ndarray:
    spectrum = _stft(signal)
    spectrum *= np.exp(_conversion_log_filter(context, int(order), len(spectrum)))
    return _istft(spectrum, len(signal))


def _block_filter(signal: np.ndarray, context: dict, rng: np.random.Generator, order: float = 20,
                  block_ms: float = 20) -> np.ndarray:
    """Filter non-overlapping blocks with the frame's FIR: circular wrap at block edges."""
    sample_rate = context["sample_rate"]
    block = int(block_ms * sample_rate / 1000)
    log_filter = _conversion_log_filter(context, int(order), _frame_count(len(signal)))
    n_blocks = -(-len(signal) // block)
    padded = np.zeros(n_blocks * block)
    padded[:len(signal)] = signal
    centres = _frame_centres(len(signal))
    frame_of_block = np.clip(np.searchsorted(centres, np.arange(n_blocks) * block + block // 2), 0, len(centres) - 1)
    block_freqs = np.fft.rfftfreq(block, 1.0 / sample_rate)
    response = np.stack([np.interp(block_freqs, _frequencies(sample_rate), row)
                         for row in log_filter[frame_of_block]])
    blocks = np.fft.irfft(np.fft.rfft(padded.reshape(n_blocks, block), axis=1) * np.exp(response), block, axis=1)
    return blocks.reshape(-1)[:len(signal)]


def _pitch_shift(signal: np.ndarray, ratio: float) -> np.ndarray:
    """Phase-vocoder time stretch by ``ratio``, then resampling back to the original length."""
    spectrum = _stft(signal)
    n_stretched = int(round(len(signal) * ratio))
    positions = np.linspace(0, len(spectrum) - 1.001, _frame_count(n_stretched))
    index = positions.astype(int)
    fraction = (positions - index)[:, None]
    magnitude = (1 - fraction) * np.abs(spectrum[index]) + fraction * np.abs(spectrum[index + 1])
    expected = 2 * np.pi * HOP * np.arange(spectrum.shape[1]) / FRAME
    deviation = np.angle(spectrum[index + 1]) - np.angle(spectrum[index]) - expected
    deviation -= 2 * np.pi * np.round(deviation / (2 * np.pi))
    advance = np.cumsum(expected + deviation, axis=0)
    phase = np.angle(spectrum[0]) + np.concatenate([np.zeros((1, advance.shape[1])), advance[:-1]])
    stretched = _istft(magnitude * np.exp(1j * phase), n_stretched)
    return resample(stretched, len(signal))


# A16 and A19 are the same systems as A04 and A06 (as in ASVspoof 2019 LA).
_SAME_SYSTEM = {"A16": "A04", "A19": "A06"}


def _top_band_rolloff(signal: np.ndarray, seed: int, attack: str, sample_rate: int) -> np.ndarray:
    """Every system under-produces the top band: a fixed per-system roll-off (12-24 dB) above 5.8-7.2 kHz.

    This is the artefact shared by all attacks (real LA countermeasures find the highest
    sub-band the most telling), so a CM trained on A01-A06 can detect the unseen systems.
    """
    system_rng = np.random.default_rng([seed, 11, int(_SAME_SYSTEM.get(attack, attack)[1:])])
    cutoff_hz, depth_db = system_rng.uniform(5800, 7200), system_rng.uniform(12, 24)
    freqs = _frequencies(sample_rate)
    gain_db = -depth_db / (1.0 + np.exp(-(freqs - cutoff_hz) / 250.0))
    return _istft(_stft(signal) * (10 ** (gain_db / 20))[None], len(signal))


def _identity(signal: np.ndarray, context: dict, rng: np.random.Generator) -> np.ndarray:
    return signal


_WAVEFORM_GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "envelope": _envelope_vocoder, "mulaw": _mulaw, "phase_random": _phase_random,
    "griffin_lim": _griffin_lim, "spectral_filter": _spectral_filter,
    "block_filter": _block_filter, "identity": _identity,
}


# --------------------------------------------------------------------------- synthesis of one file

@dataclass(frozen=True)
class _Job:
    partition: str
    utterance: str
    speaker: int  # index into the voice list
    attack: str | None  # None: bona fide
    source_speaker: int  # VC / filtering source (-1: none)
    seed: tuple[int, ...]
    n_samples: int
    enrolment: bool = False


def _natural(voice: Voice, n_samples: int, rng: np.random.Generator,
             sample_rate: int) -> tuple[np.ndarray, UtterancePlan, np.ndarray]:
    plan = _plan_utterance(rng, n_samples, sample_rate, voice.speaking_rate)
    signal, f0 = _render(plan, voice, Session.sample(rng), rng, sample_rate)
    return signal, plan, f0


def _splice(units: list[np.ndarray], rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Unit selection: runs of 120-350 ms from different recordings, 3 ms cross-fades."""
    n_samples = len(units[0])
    owner = np.zeros(n_samples, dtype=int)
    start, previous = 0, 0
    while start < n_samples:
        length = int(rng.uniform(0.12, 0.35) * sample_rate)
        previous = (previous + 1 + int(rng.integers(len(units) - 1))) % len(units)
        owner[start:start + length] = previous
        start += length
    ramp = np.ones(int(0.003 * sample_rate)) / int(0.003 * sample_rate)
    out = np.zeros(n_samples)
    for index, unit in enumerate(units):
        weight = np.convolve((owner == index).astype(float), ramp, mode="same")
        out += weight * unit
    return out


def _synthesise(job: _Job, voices: list[Voice], seed: int, sample_rate: int) -> np.ndarray:
    rng = np.random.default_rng(list(job.seed))
    target = voices[job.speaker]
    if job.attack is None:
        return _natural(target, job.n_samples, rng, sample_rate)[0]
    recipe = ATTACKS[job.attack]
    options = dict(recipe.options)
    prosody = options.pop("prosody", 0.5)
    source = voices[job.source_speaker] if job.source_speaker >= 0 else target
    context: dict = {"sample_rate": sample_rate, "target_voice": target, "source_voice": source}
    if recipe.acoustic == "tts":
        # A TTS system is one fixed model per target: its voice error depends on (speaker, attack).
        system_rng = np.random.default_rng([seed, 7, job.speaker, int(job.attack[1:])])
        voice = _tts_voice(target, system_rng)
        plan = _plan_utterance(rng, job.n_samples, sample_rate, voice.speaking_rate, regular=True, prosody=prosody)
        signal, f0 = _render(plan, voice, _MODEL_CHANNEL, rng, sample_rate)
    elif recipe.acoustic == "vc":
        voice = _blend_voices(target, source, 0.85)
        plan = _plan_utterance(rng, job.n_samples, sample_rate, source.speaking_rate)
        signal, f0 = _render(plan, voice, _MODEL_CHANNEL, rng, sample_rate)
    elif recipe.acoustic == "concat":
        units = [_natural(target, job.n_samples, rng, sample_rate) for _ in range(3)]
        signal = _splice([unit[0] for unit in units], rng, sample_rate)
        plan, f0 = units[0][1], units[0][2]
    elif recipe.acoustic in ("filter", "concat_filter"):
        # Pitch conversion by resampling, then a filter maps the envelope to the target.
        context["shift"] = float(np.clip(target.f0_median / source.f0_median, 0.5, 2.0))
        if recipe.acoustic == "filter":
            signal, plan, f0 = _natural(source, job.n_samples, rng, sample_rate)
            context["plan"] = plan
        else:
            units = [_natural(source, job.n_samples, rng, sample_rate) for _ in range(3)]
            signal = _splice([unit[0] for unit in units], rng, sample_rate)
            plan, f0 = units[0][1], units[0][2]
            context["plan"] = None
        signal = _pitch_shift(signal, context["shift"])
        f0 = f0 * context["shift"]
    else:
        raise ValueError(f"attack {job.attack}: unknown acoustic model {recipe.acoustic!r}")
    context.setdefault("plan", plan)
    context.update(f0=f0, voice_gain=plan.voice_gain)
    waveform = _WAVEFORM_GENERATORS[recipe.waveform](signal, context, rng, **options)
    waveform = _top_band_rolloff(waveform, seed, job.attack, sample_rate)
    return _set_level(waveform, float(rng.uniform(-22, -16)))


def _to_pcm16(signal: np.ndarray) -> np.ndarray:
    clipped = np.clip(signal, -1.0, 1.0 - 1.0 / 32768)
    return np.round(clipped * 32768).astype(np.int16)


# --------------------------------------------------------------------------- corpus layout

@dataclass(frozen=True)
class _Speaker:
    name: str  # LA_00NN
    partition: str
    gender: str
    enrolled: bool  # False: dev/eval bona-fide-only speaker
    strata: tuple[float, float]  # quantiles of f0 and vocal-tract length within the gender


def _speakers(spec: CorpusSpec) -> list[_Speaker]:
    groups = [("eval", spec.n_eval_speakers, True), ("eval", spec.n_eval_nontarget_speakers, False),
              ("dev", spec.n_dev_speakers, True), ("dev", spec.n_dev_nontarget_speakers, False),
              ("train", spec.n_train_speakers, True)]
    speakers: list[_Speaker] = []
    for group_index, (partition, count, enrolled) in enumerate(groups):
        genders = (["female", "male"] * count)[:count]
        np.random.default_rng([spec.seed, 1, group_index]).shuffle(genders)
        for gender in genders:
            speakers.append(_Speaker(f"LA_{len(speakers) + 1:04d}", partition, gender, enrolled, (0.5, 0.5)))
    # Latin-hypercube f0 / vocal-tract length within each partition and gender, so
    # that a small partition does not hold two near-identical voices.
    for group_index, (partition, gender) in enumerate((p, g) for p in PARTITIONS for g in ("female", "male")):
        members = [i for i, s in enumerate(speakers) if s.partition == partition and s.gender == gender]
        rng = np.random.default_rng([spec.seed, 5, group_index])
        f0_rank, scale_rank = rng.permutation(len(members)), rng.permutation(len(members))
        for k, index in enumerate(members):
            strata = ((f0_rank[k] + rng.uniform(0.2, 0.8)) / len(members),
                      (scale_rank[k] + rng.uniform(0.2, 0.8)) / len(members))
            speakers[index] = dataclasses.replace(speakers[index], strata=strata)
    return speakers


def _plan_jobs(spec: CorpusSpec, speakers: list[_Speaker]) -> list[_Job]:
    duration_rng = np.random.default_rng([spec.seed, 2])
    jobs: list[_Job] = []

    def add(partition: str, speaker: int, attack: str | None, source: int, enrolment: bool) -> None:
        seconds = duration_rng.uniform(spec.min_seconds, spec.max_seconds)
        seed = (spec.seed, 3, len(jobs))
        jobs.append(_Job(partition, "", speaker, attack, source, seed,
                         int(seconds * spec.sample_rate), enrolment))

    for partition in PARTITIONS:
        attacks = spec.eval_attacks if partition == "eval" else spec.train_attacks
        members = [i for i, s in enumerate(speakers) if s.partition == partition]
        for index in members:
            for _ in range(spec.bonafide_per_speaker):
                add(partition, index, None, -1, False)
            if not speakers[index].enrolled:
                continue
            if partition != "train":
                for _ in range(spec.enrollment_per_speaker):
                    add(partition, index, None, -1, True)
            # Conversion sources: another speaker of the same gender when there is one.
            others = [i for i in members if i != index and speakers[i].gender == speakers[index].gender]
            others = others or [i for i in members if i != index]
            for attack in attacks:
                for _ in range(spec.spoof_per_speaker_per_attack):
                    add(partition, index, attack, others[int(duration_rng.integers(len(others)))], False)
    # Unique random 7-digit utterance numbers, as in the real database.
    numbers = np.random.default_rng([spec.seed, 4]).choice(9_000_000, size=len(jobs), replace=False) + 1_000_000
    return [dataclasses.replace(job, utterance=f"LA_{_PARTITION_LETTER[job.partition]}_{number}")
            for job, number in zip(jobs, numbers.tolist())]


def _flac_dir(root: Path, partition: str) -> Path:
    return root / "LA" / f"ASVspoof2019_LA_{partition}" / "flac"


def _write_flac(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    partial = path.with_name(path.name + ".partial")
    sf.write(partial, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    os.replace(partial, path)


def _write_text(path: Path, lines: list[str]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in lines))
    os.replace(partial, path)


def _protocol_lines(spec: CorpusSpec, speakers: list[_Speaker], jobs: list[_Job]) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for partition in PARTITIONS:
        cm = [job for job in jobs if job.partition == partition and not job.enrolment]
        files[f"ASVspoof2019.LA.cm.{_PROTOCOL_SUFFIX[partition]}.txt"] = [
            f"{speakers[j.speaker].name} {j.utterance} - {j.attack or '-'} {'spoof' if j.attack else 'bonafide'}"
            for j in cm]
        if partition == "train":
            continue
        enrolled = [i for i, s in enumerate(speakers) if s.partition == partition and s.enrolled]
        members = [i for i, s in enumerate(speakers) if s.partition == partition]
        bonafide = {i: [j.utterance for j in cm if j.speaker == i and j.attack is None] for i in members}
        for gender in ("female", "male"):
            files[f"ASVspoof2019.LA.asv.{partition}.{gender}.trn.txt"] = [
                f"{speakers[i].name} {','.join(_enrolment(jobs, i))}" for i in enrolled
                if speakers[i].gender == gender]
        files[f"ASVspoof2019.LA.asv.{partition}.gi.trn.txt"] = [
            f"{speakers[i].name} {speakers[i].name}_{_enrolment(jobs, i)[0]}" for i in enrolled]
        trials: list[str] = []
        for i in enrolled:
            name = speakers[i].name
            same_gender = [k for k in members if k != i and speakers[k].gender == speakers[i].gender]
            impostors = same_gender or [k for k in members if k != i]
            trials += [f"{name} {u} bonafide target" for u in bonafide[i]]
            trials += [f"{name} {u} bonafide nontarget" for k in impostors for u in bonafide[k]]
            trials += [f"{name} {j.utterance} {j.attack} spoof" for j in cm if j.speaker == i and j.attack]
        files[f"ASVspoof2019.LA.asv.{partition}.gi.trl.txt"] = trials
    return files


def _enrolment(jobs: list[_Job], speaker: int) -> list[str]:
    return sorted(job.utterance for job in jobs if job.enrolment and job.speaker == speaker)


def _produce(job: _Job, voices: list[Voice], spec: CorpusSpec, root: Path) -> np.ndarray | None:
    """Synthesise and write one file; enrolment audio is returned for enr_audio/."""
    pcm = _to_pcm16(_synthesise(job, voices, spec.seed, spec.sample_rate))
    _write_flac(_flac_dir(root, job.partition) / f"{job.utterance}.flac", pcm, spec.sample_rate)
    return pcm if job.enrolment else None


def _default_workers(jobs: list[_Job], sample_rate: int) -> int:
    seconds = sum(job.n_samples for job in jobs) / sample_rate
    # Starting processes only pays off for corpora of minutes of audio.
    return 1 if seconds < 30 else max(1, min(4, os.cpu_count() or 1))


# --------------------------------------------------------------------------- public entry points

def corpus_is_complete(root: Path, spec: CorpusSpec | None = None) -> bool:
    """True when ``root`` holds a fully written corpus (for ``spec``, if given)."""
    marker = Path(root) / COMPLETE_MARKER
    try:
        written = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if written.get("format_version") != FORMAT_VERSION:
        return False
    return spec is None or written.get("spec") == spec.to_json()


def generate_corpus(root: Path, spec: CorpusSpec = CorpusSpec(), *, progress: bool = True,
                    workers: int | None = None) -> Path:
    """Write the corpus under ``root`` (no-op when already complete for ``spec``); returns ``root``.

    ``workers``: processes to synthesise with (default: 1 for small corpora, else up to 4).
    Anything under root/LA, root/protocols and root/enr_audio left by an earlier
    synthetic corpus is replaced; a root holding other data there is refused.
    """
    root = Path(root)
    if corpus_is_complete(root, spec):
        return root
    managed = [root / "LA", root / "protocols", root / "enr_audio"]
    ours = (root / COMPLETE_MARKER).exists() or (root / IN_PROGRESS_MARKER).exists()
    if not ours and any(path.exists() for path in managed):
        raise FileExistsError(f"{root}: holds LA/, protocols/ or enr_audio/ not written by the synthetic "
                              "generator; refusing to overwrite it")
    (root / COMPLETE_MARKER).unlink(missing_ok=True)
    for path in managed:
        shutil.rmtree(path, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"format_version": FORMAT_VERSION, "spec": spec.to_json()}, indent=1)
    _write_text(root / IN_PROGRESS_MARKER, [payload])

    speakers = _speakers(spec)
    voices = [sample_voice(np.random.default_rng([spec.seed, 0, index]), s.gender, *s.strata)
              for index, s in enumerate(speakers)]
    jobs = _plan_jobs(spec, speakers)
    for partition in PARTITIONS:
        _flac_dir(root, partition).mkdir(parents=True, exist_ok=True)
    workers = workers or _default_workers(jobs, spec.sample_rate)
    produce = functools.partial(_produce, voices=voices, spec=spec, root=root)
    enrolment_audio: dict[int, dict[str, np.ndarray]] = {}
    with contextlib.ExitStack() as stack:
        results: Iterator = map(produce, jobs)
        if workers > 1:
            # Every job has its own seed, so the files do not depend on the worker count.
            start = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = stack.enter_context(ProcessPoolExecutor(workers, multiprocessing.get_context(start)))
            results = pool.map(produce, jobs, chunksize=8)
        for job, pcm in tqdm(zip(jobs, results), total=len(jobs), desc="synthetic corpus",
                             unit="utt", disable=not progress):
            if pcm is not None:
                enrolment_audio.setdefault(job.speaker, {})[job.utterance] = pcm
    for speaker, recordings in enrolment_audio.items():
        folder = root / "enr_audio" / speakers[speaker].partition
        folder.mkdir(parents=True, exist_ok=True)
        order = sorted(recordings)
        joined = np.concatenate([recordings[name] for name in order])
        _write_flac(folder / f"{speakers[speaker].name}_{order[0]}.flac", joined, spec.sample_rate)
    (root / "protocols").mkdir(exist_ok=True)
    for name, lines in _protocol_lines(spec, speakers, jobs).items():
        _write_text(root / "protocols" / name, lines)
    _write_text(root / COMPLETE_MARKER, [payload])
    (root / IN_PROGRESS_MARKER).unlink()
    return root
