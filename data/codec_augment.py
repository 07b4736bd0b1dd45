"""Codec augmentation (ASVspoof 5 style): a training file encoded and decoded in memory with one lossy codec.

Each item draws, from its own stream [seed, epoch, index, CODEC_STREAM] (data.rawboost.item_stream),
one number u in [0, 1): the codecs of `cm_train.codecs` take consecutive slices of [0, 1) by their
probability `p`, and u past their sum leaves the file unchanged. The chosen codec's bitrate is then drawn from its
`bitrate: [low, high]` range (uniform; a codec with a table of legal rates draws among those in
the range) or its `bitrates` list. The codecs run through PyAV's bundled FFmpeg (no system ffmpeg).

Sample rates: the file is resampled (scipy resample_poly, zero-phase) to the rate the codec codes
at (AMR-NB, G.711 mu-law / A-law: 8 kHz; AC-3: 48 kHz; MP2: 16 kHz; the others keep the input rate
when they accept it) and the decoded audio back to the input rate. 16-bit codecs see the waveform
clipped to [-1, 1).

Priming delay: an encoder emits its first packet with a negative timestamp (its delay), and
decoders that know the delay (MP3, Opus) drop it themselves. The decoded stream is placed by the
timestamp of its last frame (the first frame's timestamp can predate the samples a decoder
dropped): decoded sample 0 lies at that time minus the samples before that frame. Samples before
input time 0 are dropped and the result is cut (or zero-padded) to the input length. The input is
followed by silence up to a few whole codec frames, so that the codec's look-ahead flushes every
input sample.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import gcd
from typing import Any

import numpy as np

from data.rawboost import item_stream
from runtime.schema import ConfigSection, Field, Invalid

CODEC_STREAM = 13  # the item's generator stream [seed, epoch, index, 13]: crop (3) and RawBoost (12) unchanged
_FLUSH_FRAMES = 4  # whole frames of silence after the input: covers every encoder's look-ahead here


@dataclass(frozen=True)
class CodecSpec:
    encoder: str  # FFmpeg encoder name
    decoder: str
    rates: tuple[int, ...] = ()  # coding sample rates it accepts (empty: coding_rate is forced)
    coding_rate: int | None = None  # the rate it always codes at (telephone codecs, AC-3, MP2)
    bitrate_range: tuple[int, int] | None = None  # any bitrate in it, bits/s
    bitrate_table: tuple[int, ...] = ()  # the only legal bitrates (the encoder refuses or rounds others)
    # coding-rate samples by which the timestamps overstate the real delay (measured by cross-correlation on
    # speech, tests/test_codec_augment.py checks it for every codec)
    timestamp_excess: int = 0

    @property
    def fixed_bitrate(self) -> bool:
        return self.bitrate_range is None and not self.bitrate_table


_KBPS = 1000
CODECS: dict[str, CodecSpec] = {
    # LAME rounds a bitrate to the nearest legal MPEG one (8-160 kb/s at 16 kHz).
    "mp3": CodecSpec("libmp3lame", "mp3", rates=(8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
                     bitrate_range=(8 * _KBPS, 320 * _KBPS)),
    "opus": CodecSpec("libopus", "libopus", rates=(8000, 12000, 16000, 24000, 48000),
                      bitrate_range=(6 * _KBPS, 510 * _KBPS)),
    "aac": CodecSpec("aac", "aac", rates=(7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000,
                                          88200, 96000), bitrate_range=(8 * _KBPS, 320 * _KBPS)),
    # FFmpeg's libopencore_amrnb wrapper declares 50 samples of priming; the encoder and FFmpeg's AMR-NB decoder
    # together delay by 39 (every mode).
    "amr_nb": CodecSpec("libopencore_amrnb", "amr_nb", coding_rate=8000,
                        bitrate_table=(4750, 5150, 5900, 6700, 7400, 7950, 10200, 12200), timestamp_excess=11),
    "mp2": CodecSpec("mp2", "mp2", coding_rate=16000,  # MPEG-2 low-sampling-rate table
                     bitrate_table=tuple(k * _KBPS for k in (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144,
                                                             160))),
    "ac3": CodecSpec("ac3", "ac3", coding_rate=48000,
                     bitrate_table=tuple(k * _KBPS for k in (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224,
                                                             256, 320, 384, 448, 512, 576, 640))),
    "mulaw": CodecSpec("pcm_mulaw", "pcm_mulaw", coding_rate=8000),  # G.711, 64 kb/s
    "alaw": CodecSpec("pcm_alaw", "pcm_alaw", coding_rate=8000),
    "g722": CodecSpec("g722", "g722", coding_rate=16000),  # 64 kb/s wideband telephone
}
_ENTRY_KEYS = ("codec", "p", "bitrate", "bitrates")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _legal(spec: CodecSpec, bitrate: int) -> bool:
    if spec.bitrate_table:
        return bitrate in spec.bitrate_table
    low, high = spec.bitrate_range or (0, 0)
    return low <= bitrate <= high


def _legal_text(spec: CodecSpec) -> str:
    if spec.bitrate_table:
        return "one of " + ", ".join(str(rate) for rate in spec.bitrate_table)
    low, high = spec.bitrate_range or (0, 0)
    return f"in [{low}, {high}] bits/s"


def missing_codec(spec: CodecSpec) -> str | None:
    """What this PyAV build lacks to run `spec` ("no PyAV", "no encoder X", ...), or None."""
    try:
        import av
    except ImportError:
        return "PyAV (pip package av) is not installed"
    for name, mode, what in ((spec.encoder, "w", "encoder"), (spec.decoder, "r", "decoder")):
        try:
            av.Codec(name, mode)
        except Exception:  # PyAV raises UnknownCodecError (a ValueError) or FFmpegError
            return f"this PyAV/FFmpeg build has no {what} {name}"
    return None


def _check_entry(index: int, entry: Any) -> float:
    where = f"codecs[{index}]"
    if not isinstance(entry, Mapping):
        raise Invalid(where, f"must be a mapping with codec, p and bitrate or bitrates, got {entry!r}")
    for key in entry:
        if key not in _ENTRY_KEYS:
            raise Invalid(f"{where}.{key}", f"is not a codec key; valid keys: {', '.join(_ENTRY_KEYS)}")
    name = entry.get("codec")
    if name not in CODECS:
        raise Invalid(f"{where}.codec", f"is {name!r}; valid codecs: {', '.join(CODECS)}")
    spec = CODECS[name]
    p = entry.get("p")
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 < p <= 1:
        raise Invalid(f"{where}.p", f"must be a probability in (0, 1], got {p!r}")
    given = [key for key in ("bitrate", "bitrates") if key in entry]
    if spec.fixed_bitrate:
        if given:
            raise Invalid(f"{where}.{given[0]}", f"is not valid for {name}, which has a fixed bitrate")
    elif len(given) != 1:
        raise Invalid(where, f"needs exactly one of bitrate ([low, high] bits/s) or bitrates (a list) for {name}")
    elif given[0] == "bitrate":
        bounds = entry["bitrate"]
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_int(b) for b in bounds)
                and bounds[0] <= bounds[1]):
            raise Invalid(f"{where}.bitrate", f"must be [low, high], two integers in bits/s, low <= high, got "
                          f"{bounds!r}")
        if spec.bitrate_table and not _table_within(spec, bounds):
            raise Invalid(f"{where}.bitrate", f"{bounds} holds no legal {name} bitrate ({_legal_text(spec)})")
        if not spec.bitrate_table and not all(_legal(spec, b) for b in bounds):
            raise Invalid(f"{where}.bitrate", f"{bounds} must lie {_legal_text(spec)} for {name}")
    else:
        rates = entry["bitrates"]
        if not isinstance(rates, list) or not rates:
            raise Invalid(f"{where}.bitrates", f"must be a non-empty list of bitrates, got {rates!r}")
        for position, rate in enumerate(rates):
            if not _is_int(rate) or not _legal(spec, rate):
                raise Invalid(f"{where}.bitrates[{position}]", f"is {rate!r}; {name} bitrates must be "
                              f"{_legal_text(spec)}")
    problem = missing_codec(spec)
    if problem is not None:
        raise Invalid(f"{where}.codec", f"{name}: {problem}")
    return float(p)


def _table_within(spec: CodecSpec, bounds: Sequence[int]) -> tuple[int, ...]:
    return tuple(rate for rate in spec.bitrate_table if bounds[0] <= rate <= bounds[1])


def _check_codecs(values: Mapping[str, Any]) -> None:
    entries = values.get("codecs") or []
    total = sum(_check_entry(index, entry) for index, entry in enumerate(entries))
    if total > 1 + 1e-9:
        raise Invalid("codecs", f"probabilities p sum to {total:g}; at most one codec is applied per file, so "
                      f"they must not exceed 1")


# Its key in cm_train (system cm).
CONFIG = ConfigSection(
    name="codec augmentation",
    fields=dict(
        codecs=Field(list, [], "codec augmentation of each CM training file (after RawBoost, before the crop): a "
                     "list of {codec, p, bitrate: [low, high] | bitrates: [...]}; codec one of "
                     + ", ".join(CODECS) + "; at most one codec per file, codec i with probability p (the p sum "
                     "to at most 1); bitrates in bits/s (none for mulaw, alaw, g722); docs/stages.md"),
    ),
    checks=(_check_codecs,),
)


@dataclass(frozen=True)
class CodecChoice:
    codec: str
    p: float
    bitrate: tuple[int, int] | None = None
    bitrates: tuple[int, ...] = ()

    def draw_bitrate(self, rng: np.random.Generator) -> int | None:
        spec = CODECS[self.codec]
        if spec.fixed_bitrate:
            return None
        if self.bitrates:
            return int(self.bitrates[int(rng.integers(len(self.bitrates)))])
        assert self.bitrate is not None
        if spec.bitrate_table:
            table = _table_within(spec, self.bitrate)
            return int(table[int(rng.integers(len(table)))])
        return int(rng.integers(self.bitrate[0], self.bitrate[1] + 1))


def _resample(x: np.ndarray, source: int, target: int) -> np.ndarray:
    if source == target:
        return x
    from scipy.signal import resample_poly  # here: scipy.signal takes a second or more to import

    common = gcd(source, target)
    return resample_poly(x, target // common, source // common)


def _coding_rate(spec: CodecSpec, rate: int) -> int:
    if spec.coding_rate is not None:
        return spec.coding_rate
    if rate in spec.rates:
        return rate
    higher = [r for r in spec.rates if r > rate]
    return min(higher) if higher else max(spec.rates)


def _sample_format(encoder: Any) -> str:
    names = [f.name for f in encoder.codec.audio_formats or ()]
    for name in ("flt", "fltp", "s16", "s16p"):
        if name in names:
            return name
    raise RuntimeError(f"codec {encoder.codec.name}: no float or 16-bit sample format among {names}")


def encode_decode(waveform: np.ndarray, codec: str, bitrate: int | None, sample_rate: int) -> np.ndarray:
    """`waveform` (1-D, `sample_rate` Hz) through `codec` at `bitrate` bits/s and back: float64, same rate and
    length, aligned with the input (priming delay removed; see the module docstring)."""
    import av

    spec = CODECS[codec]
    rate = _coding_rate(spec, sample_rate)
    signal = np.asarray(_resample(np.asarray(waveform, dtype=np.float64), sample_rate, rate), dtype=np.float32)
    encoder = av.CodecContext.create(spec.encoder, "w")
    encoder.sample_rate = rate
    encoder.layout = "mono"
    encoder.format = _sample_format(encoder)
    encoder.time_base = Fraction(1, rate)
    encoder.thread_count = 1  # the same packets whatever the machine
    if bitrate is not None:
        encoder.bit_rate = bitrate
    encoder.open()
    frame_size = encoder.frame_size or 1024  # PCM codecs take any frame size
    total = -(-len(signal) // frame_size) * frame_size + _FLUSH_FRAMES * frame_size
    padded = np.zeros(total, dtype=np.float32)
    padded[:len(signal)] = signal
    if encoder.format.name.startswith("s16"):
        padded = np.clip(np.round(padded * 32768.0), -32768, 32767).astype(np.int16)
    packets = []
    for start in range(0, total, frame_size):
        frame = av.AudioFrame.from_ndarray(padded[None, start:start + frame_size], format=encoder.format.name,
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    decoder = av.CodecContext.create(spec.decoder, "r")
    decoder.sample_rate = rate
    decoder.layout = "mono"
    decoder.thread_count = 1
    if encoder.extradata:
        decoder.extradata = encoder.extradata  # AAC and Opus headers
    chunks, anchor, decoded_rate = [], None, None
    for packet in [*packets, None]:
        for frame in decoder.decode(packet):
            samples = frame.to_ndarray().astype(np.float64).reshape(-1)  # mono: planar or packed alike
            if frame.format.name.startswith("s16"):
                samples = samples / 32768.0
            if decoded_rate is None:
                decoded_rate = frame.sample_rate
            if frame.pts is not None:
                anchor = (Fraction(frame.pts) * frame.time_base, sum(len(c) for c in chunks))
            chunks.append(samples)
    if not chunks or anchor is None or decoded_rate is None:
        raise RuntimeError(f"codec {codec}: the decoder returned no timed audio")
    decoded = np.concatenate(chunks)
    # the time of decoded sample 0, in input samples (negative: priming to drop)
    first = (anchor[0] - Fraction(anchor[1], decoded_rate) + Fraction(spec.timestamp_excess, rate)) * sample_rate
    decoded = _resample(decoded, decoded_rate, sample_rate)
    shift = int(round(first))
    out = np.zeros(len(waveform), dtype=np.float64)
    if shift <= 0:
        kept = decoded[-shift:][:len(waveform)]
        out[:len(kept)] = kept
    else:  # the decoder started late: leading silence
        kept = decoded[:max(len(waveform) - shift, 0)]
        out[shift:shift + len(kept)] = kept
    return out


class CodecAugment:
    """augment(waveform, key) -> waveform: at most one codec round trip, drawn from the item's own stream
    (item_stream, CODEC_STREAM; `key` is (seed, epoch, index, attempt)); see the module docstring.
    `choices` come from a checked `cm_train.codecs` list."""

    def __init__(self, choices: Sequence[CodecChoice], sample_rate: int) -> None:
        self.choices = list(choices)
        self.sample_rate = sample_rate

    @classmethod
    def from_settings(cls, entries: Sequence[Mapping[str, Any]], sample_rate: int) -> CodecAugment:
        """From a `codecs` list that CONFIG's check has accepted."""
        choices = [CodecChoice(e["codec"], float(e["p"]), tuple(e["bitrate"]) if "bitrate" in e else None,
                               tuple(e.get("bitrates", ()))) for e in entries]
        return cls(choices, sample_rate)

    def draw(self, key: Sequence[int]) -> tuple[str, int | None] | None:
        """(codec, bitrate) for the item `key` (seed, epoch, index, attempt), or None (unchanged)."""
        rng = np.random.default_rng(item_stream(key, CODEC_STREAM))
        u = rng.random()
        edge = 0.0
        for choice in self.choices:
            edge += choice.p
            if u < edge:
                return choice.codec, choice.draw_bitrate(rng)
        return None

    def __call__(self, waveform: np.ndarray, key: Sequence[int]) -> np.ndarray:
        drawn = self.draw(key)
        if drawn is None:
            return waveform
        return encode_decode(waveform, drawn[0], drawn[1], self.sample_rate)
