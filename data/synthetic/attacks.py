"""Spoofing attacks: recipes, waveform generators, the shared top-band roll-off, synthesis of one file."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.signal import resample

from .spectral import (
    FRAME,
    HOP,
    _frame_centres,
    _frame_count,
    _frequencies,
    _istft,
    _lifter,
    _mel_inverse,
    _mel_matrix,
    _smooth_frames,
    _stft,
)
from .voices import (
    _MODEL_CHANNEL,
    Session,
    UtterancePlan,
    Voice,
    _average_vocal_tract_log,
    _blend_voices,
    _plan_utterance,
    _render,
    _set_level,
    _tts_voice,
    _vocal_tract_log,
)


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


def _system_number(attack: str) -> int:
    """The number seeding a 2019 system's fixed traits (repeated systems share it)."""
    return int(_SAME_SYSTEM.get(attack, attack)[1:])


def _top_band_rolloff(signal: np.ndarray, seed: int, attack: str, sample_rate: int,
                      system: int | None = None) -> np.ndarray:
    """Every system under-produces the top band: a fixed per-system roll-off (12-24 dB) above 5.8-7.2 kHz.

    This is the artefact shared by all attacks (real LA countermeasures find the highest
    sub-band the most telling), so a CM trained on A01-A06 can detect the unseen systems.
    ``system``: the number seeding it, when not the 2019 attack's.
    """
    system_rng = np.random.default_rng([seed, 11, _system_number(attack) if system is None else system])
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
    # Seeds the system's fixed traits (TTS voice error, top-band roll-off) when they are not the 2019
    # attack's: ASVspoof 5 systems built from the same recipe are distinct systems.
    system: int | None = None


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
        system = int(job.attack[1:]) if job.system is None else job.system
        system_rng = np.random.default_rng([seed, 7, job.speaker, system])
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
    waveform = _top_band_rolloff(waveform, seed, job.attack, sample_rate, job.system)
    return _set_level(waveform, float(rng.uniform(-22, -16)))


def _to_pcm16(signal: np.ndarray) -> np.ndarray:
    clipped = np.clip(signal, -1.0, 1.0 - 1.0 / 32768)
    return np.round(clipped * 32768).astype(np.int16)
