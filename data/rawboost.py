"""RawBoost data augmentation (Tak et al., ICASSP 2022) as the SSL_Anti-spoofing recipe applies it.

Three distortions of the raw waveform, alone or combined (`algo`, the reference's numbering):
  LnL  linear and non-linear convolutive noise: N_f banks of nBands random FIR notch filters,
       bank i filtering x ** (i + 1), summed, mean removed;
  ISD  impulsive signal-dependent noise on a random P % of the samples;
  SSI  stationary signal-independent noise: white noise through one notch bank at a random SNR.
  algo 1 LnL, 2 ISD, 3 SSI, 4 LnL -> ISD -> SSI, 5 LnL -> ISD, 6 LnL -> SSI, 7 ISD -> SSI,
  8 LnL and ISD of the same input, summed; 0 = off.

Every random number comes from the `np.random.RandomState` passed in, drawn by the same legacy
calls in the same order as the reference draws from numpy's global generator, so that
`np.random.RandomState(seed)` reproduces `np.random.seed(seed)` there bit for bit (the fixture
check keeps float64 outputs, and float32 for algo 2 alone, as the reference returns them).
The arithmetic keeps the reference's operand order and its 1-element arrays, since a reordered
product or a scalar `pow` can move the last bit.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.schema import ANY_FINITE, POSITIVE, ZERO_OR_MORE, ConfigSection, Field, Invalid, Range

ALGORITHMS = range(9)  # 0 = off
RAWBOOST_STREAM = 12  # the item's generator stream [seed, epoch, index, 12]: other streams (crop: 3) unchanged


def _ordered_pairs(values: Mapping[str, Any]) -> None:
    for low, high in (("minF", "maxF"), ("minBW", "maxBW"), ("minCoeff", "maxCoeff"), ("minG", "maxG"),
                      ("SNRmin", "SNRmax")):
        low_key, high_key = f"rawboost_{low}", f"rawboost_{high}"
        if low_key in values and high_key in values and values[low_key] > values[high_key]:
            raise Invalid(low_key, f"({values[low_key]}) must not exceed cm_train.{high_key} ({values[high_key]})")


def _field(kind: type, default: Any, doc: str, reference: str, valid: Range) -> Field:
    return Field(kind, default, f"RawBoost {doc} (SSL_Anti-spoofing --{reference})", range=valid)


# Its keys in cm_train (system cm); the defaults are the argparse defaults of main_SSL_LA.py / main_SSL_DF.py.
CONFIG = ConfigSection(
    name="RawBoost",
    fields=dict(
        rawboost=Field(int, 0, "RawBoost algorithm applied to each CM training file before the crop: 0 off, 1 LnL "
                       "convolutive noise, 2 ISD impulsive noise, 3 SSI coloured noise, 4 = 1+2+3, 5 = 1+2, 6 = 1+3, "
                       "7 = 2+3 in series, 8 = 1 and 2 in parallel (SSL_Anti-spoofing --algo: 5 for LA, 3 for DF)",
                       range=Range(0, 8)),
        rawboost_nBands=_field(int, 5, "notch filters per filter bank", "nBands", POSITIVE),
        rawboost_minF=_field(float, 20.0, "lowest notch centre frequency, Hz", "minF", ZERO_OR_MORE),
        rawboost_maxF=_field(float, 8000.0, "highest notch centre frequency, Hz", "maxF", ZERO_OR_MORE),
        rawboost_minBW=_field(float, 100.0, "narrowest notch bandwidth, Hz", "minBW", POSITIVE),
        rawboost_maxBW=_field(float, 1000.0, "widest notch bandwidth, Hz", "maxBW", POSITIVE),
        rawboost_minCoeff=_field(int, 10, "fewest taps of a notch filter (an even draw gets one more)", "minCoeff",
                                 POSITIVE),
        rawboost_maxCoeff=_field(int, 100, "most taps of a notch filter", "maxCoeff", POSITIVE),
        rawboost_minG=_field(float, 0.0, "lowest filter-bank gain, dB", "minG", ANY_FINITE),
        rawboost_maxG=_field(float, 0.0, "highest filter-bank gain, dB", "maxG", ANY_FINITE),
        rawboost_minBiasLinNonLin=_field(float, 5.0, "LnL: minG is lowered by this for the non-linear banks (2nd "
                                         "on)", "minBiasLinNonLin", ANY_FINITE),
        rawboost_maxBiasLinNonLin=_field(float, 20.0, "LnL: maxG is lowered by this for the non-linear banks",
                                         "maxBiasLinNonLin", ANY_FINITE),
        rawboost_N_f=_field(int, 5, "LnL: filter banks, bank i filtering x ** i (i = 1..N_f)", "N_f", POSITIVE),
        rawboost_P=_field(float, 10.0, "ISD: at most this percentage of the samples is hit", "P", Range(0, 100)),
        rawboost_g_sd=_field(float, 2.0, "ISD: impulse gain factor", "g_sd", ZERO_OR_MORE),
        rawboost_SNRmin=_field(float, 10.0, "SSI: lowest signal-to-noise ratio, dB", "SNRmin", ANY_FINITE),
        rawboost_SNRmax=_field(float, 40.0, "SSI: highest signal-to-noise ratio, dB", "SNRmax", ANY_FINITE),
    ),
    checks=(_ordered_pairs,),
)


@dataclass(frozen=True)
class RawBoostParams:
    """The reference's RawBoost arguments (main_SSL_LA.py names); the defaults are its argparse defaults."""
    nBands: int = 5
    minF: float = 20
    maxF: float = 8000
    minBW: float = 100
    maxBW: float = 1000
    minCoeff: int = 10
    maxCoeff: int = 100
    minG: float = 0
    maxG: float = 0
    minBiasLinNonLin: float = 5
    maxBiasLinNonLin: float = 20
    N_f: int = 5
    P: float = 10
    g_sd: float = 2
    SNRmin: float = 10
    SNRmax: float = 40

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> RawBoostParams:
        """From a config section holding the `rawboost_<name>` keys of CONFIG (e.g. cm_train)."""
        return cls(**{name: settings[f"rawboost_{name}"] for name in cls.__dataclass_fields__})


def _draw(rs: np.random.RandomState, low: float, high: float) -> np.ndarray:
    # The reference keeps a 1-element array (uniform(size=(1,))) and computes with it as such.
    return rs.uniform(low=low, high=high, size=(1,))


def _peak_normalise(x: np.ndarray, always: bool) -> np.ndarray:
    peak = np.amax(np.abs(x))
    return x / peak if always or peak > 1 else x


def _notch_bank(rs: np.random.RandomState, p: RawBoostParams, gain_low: float, gain_high: float,
                fs: int) -> np.ndarray:
    """The taps of nBands cascaded random band-stop FIR filters, scaled to a random peak gain (dB)."""
    from scipy import signal  # here: scipy.signal takes a second or more to import

    taps = np.ones(1)
    for _ in range(p.nBands):
        centre = _draw(rs, p.minF, p.maxF)
        width = _draw(rs, p.minBW, p.maxBW)
        count = int(_draw(rs, p.minCoeff, p.maxCoeff).item())
        count += 1 - count % 2  # an odd number of taps: a band-stop FIR needs a type I filter
        low, high = centre - width / 2, centre + width / 2
        low = low if low > 0 else 1 / 1000
        high = high if high < fs / 2 else fs / 2 - 1 / 1000
        band = signal.firwin(count, [float(np.asarray(low).item()), float(np.asarray(high).item())],
                             window="hamming", fs=fs)
        taps = np.convolve(band, taps)
    gain = _draw(rs, gain_low, gain_high)
    _, response = signal.freqz(taps, 1, fs=fs)
    return pow(10, gain / 20) * taps / np.amax(np.abs(response))


def _fir(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """`taps` applied to `x`, delay-compensated by half the filter length, same length as `x`."""
    from scipy import signal

    extra = taps.shape[0] + 1
    filtered = signal.lfilter(taps, 1, np.pad(x, (0, extra), "constant"))
    return filtered[int(extra / 2):int(filtered.shape[0] - extra / 2)]


def lnl_convolutive_noise(x: np.ndarray, rs: np.random.RandomState, p: RawBoostParams, fs: int) -> np.ndarray:
    """Algo 1: the sum over i = 1..N_f of x ** i through a random notch bank each; the non-linear banks
    (i >= 2) draw their gain from [minG - minBiasLinNonLin, maxG - maxBiasLinNonLin) (low > high is allowed)."""
    total = np.zeros(x.shape[0])
    for order in range(1, p.N_f + 1):
        gains = (p.minG, p.maxG) if order == 1 else (p.minG - p.minBiasLinNonLin, p.maxG - p.maxBiasLinNonLin)
        total = total + _fir(np.power(x, order), _notch_bank(rs, p, *gains, fs))
    return _peak_normalise(total - np.mean(total), always=False)


def isd_additive_noise(x: np.ndarray, rs: np.random.RandomState, p: RawBoostParams) -> np.ndarray:
    """Algo 2: a random beta in [0, P) % of the samples get x * (1 + g_sd * u1 * u2), u1, u2 ~ U[-1, 1).
    Keeps the input dtype (the reference writes into a copy of its input)."""
    beta = _draw(rs, 0, p.P)
    hit = rs.permutation(x.shape[0])[:int((x.shape[0] * (beta / 100)).item())]
    first = 2 * rs.rand(hit.shape[0]) - 1
    second = 2 * rs.rand(hit.shape[0]) - 1
    noisy = x.copy()
    noisy[hit] = x[hit] + p.g_sd * x[hit] * np.multiply(first, second)
    return _peak_normalise(noisy, always=False)


def ssi_additive_noise(x: np.ndarray, rs: np.random.RandomState, p: RawBoostParams, fs: int) -> np.ndarray:
    """Algo 3: white Gaussian noise through a random notch bank, added at a random SNR in [SNRmin, SNRmax) dB."""
    noise = rs.normal(0, 1, x.shape[0])  # drawn before the filter bank, as the reference
    noise = _peak_normalise(_fir(noise, _notch_bank(rs, p, p.minG, p.maxG, fs)), always=True)
    snr = _draw(rs, p.SNRmin, p.SNRmax)
    noise = noise / np.linalg.norm(noise, 2) * np.linalg.norm(x, 2) / 10.0 ** (0.05 * snr)
    return x + noise


_SERIES = {1: ("lnl",), 2: ("isd",), 3: ("ssi",), 4: ("lnl", "isd", "ssi"), 5: ("lnl", "isd"), 6: ("lnl", "ssi"),
           7: ("isd", "ssi")}


def rawboost(x: np.ndarray, algo: int, rs: np.random.RandomState, params: RawBoostParams | None = None,
             fs: int = 16000) -> np.ndarray:
    """RawBoost `algo` (0..8) of the 1-D waveform `x`, drawing from `rs`; same length as `x`.

    Give `x` as float32 (what librosa.load gives the reference) to reproduce the reference's numbers."""
    if algo not in ALGORITHMS:
        raise ValueError(f"RawBoost algo must be 0..8, got {algo!r}")
    p = params or RawBoostParams()
    steps = {"lnl": lambda y: lnl_convolutive_noise(y, rs, p, fs), "isd": lambda y: isd_additive_noise(y, rs, p),
             "ssi": lambda y: ssi_additive_noise(y, rs, p, fs)}
    if algo == 8:  # in parallel: both from the same input, LnL drawn first
        convolved = steps["lnl"](x)
        return _peak_normalise(convolved + steps["isd"](x), always=False)
    for step in _SERIES.get(algo, ()):
        x = steps[step](x)
    return x


def item_stream(key: Sequence[int], stream: int) -> list[int]:
    """The seed-sequence entropy of one augmentation `stream` for the item key (seed, epoch, index, attempt):
    [seed, epoch, index, stream], plus the attempt when an unreadable file was replaced, as the crop's
    stream [seed, epoch, index, 3(, attempt)] (data/speaker_lists.py): the same numbers whatever the workers,
    ranks or resumption, and no other stream changes when an augmentation is switched on."""
    seed, epoch, index, attempt = key
    return [seed, epoch, index, stream] if attempt == 0 else [seed, epoch, index, stream, attempt]


def item_random_state(key: Sequence[int], stream: int = RAWBOOST_STREAM) -> np.random.RandomState:
    """A legacy RandomState (what RawBoost draws from) for one item: MT19937 seeded from item_stream(key, stream)."""
    return np.random.RandomState(np.random.MT19937(np.random.SeedSequence(item_stream(key, stream))))


class RawBoost:
    """augment(waveform, key) -> waveform: RawBoost `algo` from the item's own stream (item_stream, RAWBOOST_STREAM);
    `key` is (seed, epoch, index, attempt).

    The waveform is cast to float32 first, as librosa gives the reference its input (16- and 24-bit PCM
    are exact in float32, so nothing is lost); the result is float64 (float32 for algo 2)."""

    def __init__(self, algo: int, params: RawBoostParams, sample_rate: int) -> None:
        if algo not in ALGORITHMS or algo == 0:
            raise ValueError(f"RawBoost algo must be 1..8, got {algo!r}")
        self.algo, self.params, self.sample_rate = algo, params, sample_rate

    def __call__(self, waveform: np.ndarray, key: Sequence[int]) -> np.ndarray:
        return rawboost(np.asarray(waveform, dtype=np.float32), self.algo, item_random_state(key),
                        self.params, self.sample_rate)
