"""Speaker voices, utterance plans, source-filter rendering and the recording channel."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from .spectral import HOP, _frame_centres, _frame_count, _frequencies, _istft, _smooth_frames, _stft

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
    def sample(rng: np.random.Generator) -> Session:
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
