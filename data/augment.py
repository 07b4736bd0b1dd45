"""MUSAN noise and RIR reverberation for speaker-model training (voxceleb_trainer's recipe).

Each training crop gets, with equal odds, nothing, reverberation, or additive noise of one
MUSAN category: `noise` (1 file, SNR 0-15 dB), `speech` (3-7 files, babble, SNR 13-20 dB)
or `music` (1 file, SNR 5-15 dB). Categories whose folder is absent, and reverberation
without an RIR folder, are left out of the draw.

Expected folders (any depth below them; .wav or .flac):
  musan_dir/{noise,speech,music}/...   e.g. voxceleb_trainer's musan_split
  rir_dir/...                          e.g. RIRS_NOISES/simulated_rirs
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.audio import random_crop, read_audio
from runtime.schema import ConfigSection, Field

# Its keys in asv_train (system asv).
CONFIG = ConfigSection(
    name="Augmenter",
    fields=dict(
        musan_dir=Field(str, None, "MUSAN folder with noise/, speech/, music/ (e.g. musan_split); enables noise "
                        "augmentation"),
        rir_dir=Field(str, None, "room impulse responses folder (e.g. RIRS_NOISES/simulated_rirs); enables "
                      "reverberation"),
    ),
)

NOISE_SNR_DB = {"noise": (0.0, 15.0), "speech": (13.0, 20.0), "music": (5.0, 15.0)}
NOISE_FILES = {"noise": (1, 1), "speech": (3, 7), "music": (1, 1)}
AUDIO_SUFFIXES = (".wav", ".flac")


class AugmentError(ValueError):
    """An augmentation folder is missing or holds no audio."""


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _power_db(waveform: np.ndarray) -> float:
    return 10.0 * np.log10(np.mean(waveform ** 2) + 1e-4)


class Augmenter:
    """augment(waveform float [T], rng) -> augmented float64 [T]; see the module docstring."""

    def __init__(self, musan_dir: str | Path | None, rir_dir: str | Path | None, *, sample_rate: int = 16000,
                 resample: bool = False) -> None:
        self.sample_rate = sample_rate
        self.resample = resample
        self.noises: dict[str, list[Path]] = {}
        self.rirs: list[Path] = []
        if musan_dir is not None:
            root = Path(musan_dir)
            if not root.is_dir():
                raise AugmentError(f"MUSAN folder {root} does not exist")
            for category in NOISE_SNR_DB:
                files = _audio_files(root / category) if (root / category).is_dir() else []
                if files:
                    self.noises[category] = files
            if not self.noises:
                raise AugmentError(f"MUSAN folder {root} has no audio under {', '.join(NOISE_SNR_DB)}/")
        if rir_dir is not None:
            root = Path(rir_dir)
            if not root.is_dir():
                raise AugmentError(f"RIR folder {root} does not exist")
            self.rirs = _audio_files(root)
            if not self.rirs:
                raise AugmentError(f"RIR folder {root} holds no .wav or .flac file")
        # Equal odds for "unchanged" and every available kind, as voxceleb_trainer.
        self.choices = ["none"] + (["reverb"] if self.rirs else []) + [c for c in NOISE_SNR_DB if c in self.noises]

    def _read(self, path: Path, check_length: bool = True) -> np.ndarray:
        return read_audio(path, sample_rate=self.sample_rate, resample=self.resample, check_length=check_length)

    def reverberate(self, waveform: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # An impulse response is convolved, not tiled: a short one (a dry room) is no fragment.
        rir = self._read(self.rirs[int(rng.integers(len(self.rirs)))], check_length=False)
        rir = rir / np.sqrt(np.sum(rir ** 2))  # unit energy: the level stays that of the dry signal
        from scipy.signal import fftconvolve  # here: scipy.signal takes 1.5 s to import, RIRs are optional

        return fftconvolve(waveform, rir, mode="full")[:len(waveform)]

    def add_noise(self, waveform: np.ndarray, category: str, rng: np.random.Generator) -> np.ndarray:
        low, high = NOISE_FILES[category]
        files = self.noises[category]
        count = min(int(rng.integers(low, high + 1)), len(files))
        chosen = rng.choice(len(files), size=count, replace=False)
        clean_db = _power_db(waveform)
        mixed = np.array(waveform, dtype=np.float64)
        for index in chosen:
            noise = random_crop(self._read(files[int(index)]), len(waveform), rng)
            snr = rng.uniform(*NOISE_SNR_DB[category])
            mixed += np.sqrt(10.0 ** ((clean_db - _power_db(noise) - snr) / 10.0)) * noise
        return mixed

    def __call__(self, waveform: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        kind = self.choices[int(rng.integers(len(self.choices)))]
        if kind == "none":
            return waveform
        if kind == "reverb":
            return self.reverberate(waveform, rng)
        return self.add_noise(waveform, kind, rng)
