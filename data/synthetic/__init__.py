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

The same voices and systems can also be written in the ASVspoof 5 public-release
layout, with simulated codec conditions: ``generate_asvspoof5_corpus`` (module
``asvspoof5``, which documents it).

Modules: ``spectral`` (STFT, mel, lifter), ``voices`` (voices, utterance plans,
rendering, sessions), ``attacks`` (recipes, waveform generators, synthesis of one
file), ``corpus`` (spec, layout, protocols, writing, ``generate_corpus``),
``asvspoof5`` (the ASVspoof 5 layout), ``codecs`` (simulated codec conditions),
``demo`` (``ensure_demo_corpus``, either layout).
"""
from .asvspoof5 import Asvspoof5Spec, generate_asvspoof5_corpus
from .attacks import ATTACKS, EVAL_ATTACKS, TRAIN_ATTACKS, AttackRecipe, _top_band_rolloff
from .codecs import CODECS, apply_codec
from .corpus import (
                     COMPLETE_MARKER,
                     FORMAT_VERSION,
                     IN_PROGRESS_MARKER,
                     PARTITIONS,
                     CorpusSpec,
                     corpus_is_complete,
                     generate_corpus,
)
from .demo import ensure_demo_corpus
from .voices import Voice, sample_voice

__all__ = [
    "ATTACKS", "CODECS", "COMPLETE_MARKER", "EVAL_ATTACKS", "FORMAT_VERSION", "IN_PROGRESS_MARKER", "PARTITIONS",
    "TRAIN_ATTACKS", "Asvspoof5Spec", "AttackRecipe", "CorpusSpec", "Voice", "corpus_is_complete", "ensure_demo_corpus",
    "apply_codec", "generate_asvspoof5_corpus", "generate_corpus", "sample_voice",
    "_top_band_rolloff",  # private, but the tests call it as synthetic._top_band_rolloff
]
