"""The synthetic corpus: ASVspoof 2019 LA layout, protocol consistency, determinism, learnability."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from data import synthetic
from data.audio import MIN_AUDIO_MS, check_duration
from data.synthetic import ATTACKS, CorpusSpec, corpus_is_complete, generate_corpus
from data.synthetic import corpus as corpus_writer

SPEC = CorpusSpec.tiny()
CM_SUFFIX = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}
LETTER = {"train": "T", "dev": "D", "eval": "E"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The session's tiny corpus (SPEC, one worker, as generate_corpus does for a corpus this small), shared
    with the modules that train on it; the tests here only read it."""
    from tiny_run import tiny_corpus

    return tiny_corpus(tmp_path_factory)


def protocol(root: Path, name: str) -> list[list[str]]:
    return [line.split() for line in (root / "protocols" / name).read_text().splitlines()]


def cm_rows(root: Path, partition: str) -> list[list[str]]:
    return protocol(root, f"ASVspoof2019.LA.cm.{CM_SUFFIX[partition]}.txt")


def enrolment(root: Path, partition: str) -> dict[str, tuple[str, list[str]]]:
    """speaker -> (gender, enrolment utterances)."""
    return {spk: (gender, utts.split(","))
            for gender in ("female", "male")
            for spk, utts in protocol(root, f"ASVspoof2019.LA.asv.{partition}.{gender}.trn.txt")}


def flac(root: Path, partition: str, utterance: str) -> Path:
    return root / "LA" / f"ASVspoof2019_LA_{partition}" / "flac" / f"{utterance}.flac"


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def equal_error_rate(is_target: np.ndarray, scores: np.ndarray) -> float:
    false_accept, true_accept, _ = roc_curve(is_target, scores)
    false_reject = 1 - true_accept
    index = np.argmin(np.abs(false_reject - false_accept))
    return float((false_accept[index] + false_reject[index]) / 2)


# --------------------------------------------------------------------------- layout and protocols

def test_protocol_lines_have_the_database_formats(corpus):
    for partition in ("train", "dev", "eval"):
        letter = LETTER[partition]
        for spk, utt, dash, attack, key in cm_rows(corpus, partition):
            assert re.fullmatch(r"LA_\d{4}", spk) and re.fullmatch(rf"LA_{letter}_\d{{7}}", utt) and dash == "-"
            assert (attack, key) == ("-", "bonafide") or (re.fullmatch(r"A\d\d", attack) and key == "spoof")
        if partition == "train":
            continue
        for gender in ("female", "male"):
            for spk, utts in protocol(corpus, f"ASVspoof2019.LA.asv.{partition}.{gender}.trn.txt"):
                assert re.fullmatch(rf"LA_{letter}_\d{{7}}(,LA_{letter}_\d{{7}})*", utts)
        for spk, model in protocol(corpus, f"ASVspoof2019.LA.asv.{partition}.gi.trn.txt"):
            assert re.fullmatch(rf"{spk}_LA_{letter}_\d{{7}}", model)
        for line in protocol(corpus, f"ASVspoof2019.LA.asv.{partition}.gi.trl.txt"):
            assert re.fullmatch(rf"LA_\d{{4}} LA_{letter}_\d{{7}} (bonafide (target|nontarget)|A\d\d spoof)",
                                " ".join(line))


def line_shapes(path: Path) -> set[str]:
    """Lines with digits masked and enrolment lists collapsed: the format, not the content."""
    shapes = set()
    for line in path.read_text().splitlines():
        shape = re.sub(r"\d", "9", line)
        shapes.add(re.sub(r"(,LA_[TDE]_9{7})+", ",...", shape))
    return shapes


def test_protocol_files_match_the_real_ones(corpus, fixtures):
    real = sorted((fixtures / "protocols").glob("ASVspoof2019.LA.*.txt"))
    assert real, "no real protocols among the fixtures"
    written = sorted(path.name for path in (corpus / "protocols").iterdir())
    assert written == [path.name for path in real]
    for path in real:
        assert line_shapes(corpus / "protocols" / path.name) == line_shapes(path), path.name


def test_every_referenced_file_exists_as_16k_mono_pcm16_flac(corpus):
    for partition in ("train", "dev", "eval"):
        referenced = {row[1] for row in cm_rows(corpus, partition)}
        if partition != "train":
            referenced |= {u for _, utts in enrolment(corpus, partition).values() for u in utts}
        folder = flac(corpus, partition, "x").parent
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{u}.flac" for u in referenced)
        for utterance in referenced:
            info = sf.info(str(flac(corpus, partition, utterance)))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            assert SPEC.min_seconds - 0.01 <= info.duration <= SPEC.max_seconds + 0.01
    # A sample of files: audible, not clipped.
    for row in cm_rows(corpus, "eval")[::7]:
        audio, _ = sf.read(flac(corpus, "eval", row[1]))
        assert np.max(np.abs(audio)) < 1.0
        assert -40 < 10 * np.log10(np.mean(audio ** 2)) < -10, row


def test_enr_audio_is_the_concatenated_enrolment(corpus):
    for partition in ("dev", "eval"):
        enrolled = enrolment(corpus, partition)
        models = dict(protocol(corpus, f"ASVspoof2019.LA.asv.{partition}.gi.trn.txt"))
        assert sorted(models) == sorted(enrolled)
        for spk, (_, utts) in enrolled.items():
            assert models[spk] == f"{spk}_{utts[0]}"
            joined, rate = sf.read(corpus / "enr_audio" / partition / f"{models[spk]}.flac", dtype="int16")
            parts = [sf.read(flac(corpus, partition, u), dtype="int16")[0] for u in utts]
            assert rate == 16000 and np.array_equal(joined, np.concatenate(parts))


def test_enrolment_utterances_are_not_in_the_cm_protocol(corpus):
    for partition in ("dev", "eval"):
        cm_utterances = {row[1] for row in cm_rows(corpus, partition)}
        for spk, (_, utts) in enrolment(corpus, partition).items():
            assert len(utts) == SPEC.enrollment_per_speaker
            assert not set(utts) & cm_utterances, spk


def test_trial_keys_agree_with_the_cm_protocol(corpus):
    for partition in ("dev", "eval"):
        cm = {row[1]: row for row in cm_rows(corpus, partition)}
        enrolled = enrolment(corpus, partition)
        trials = protocol(corpus, f"ASVspoof2019.LA.asv.{partition}.gi.trl.txt")
        kinds: dict[tuple[str, str], int] = {}
        for claimed, utterance, attack, kind in trials:
            assert claimed in enrolled and utterance in cm
            speaker, _, _, cm_attack, key = cm[utterance]
            kinds[claimed, kind] = kinds.get((claimed, kind), 0) + 1
            if kind == "target":
                assert (speaker, key, attack) == (claimed, "bonafide", "bonafide")
            elif kind == "nontarget":
                assert speaker != claimed and (key, attack) == ("bonafide", "bonafide")
                if speaker in enrolled:
                    assert enrolled[speaker][0] == enrolled[claimed][0], "non-target of another gender"
            else:
                assert kind == "spoof" and (speaker, key, cm_attack) == (claimed, "spoof", attack)
        for spk in enrolled:
            bonafide = [row for row in cm.values() if row[0] == spk and row[4] == "bonafide"]
            assert kinds[spk, "target"] == len(bonafide) == SPEC.bonafide_per_speaker
            assert kinds[spk, "nontarget"] > 0
            attacks = SPEC.eval_attacks if partition == "eval" else SPEC.train_attacks
            assert kinds[spk, "spoof"] == len(attacks) * SPEC.spoof_per_speaker_per_attack


def test_speakers_attacks_and_partitions(corpus):
    speakers = {p: {row[0] for row in cm_rows(corpus, p)} for p in ("train", "dev", "eval")}
    assert not (speakers["train"] & speakers["dev"] or speakers["train"] & speakers["eval"]
                or speakers["dev"] & speakers["eval"])
    assert len(speakers["train"]) == SPEC.n_train_speakers
    assert len(speakers["dev"]) == SPEC.n_dev_speakers + SPEC.n_dev_nontarget_speakers
    attacks = {p: {row[3] for row in cm_rows(corpus, p) if row[4] == "spoof"} for p in speakers}
    assert attacks["train"] == attacks["dev"] == {"A01", "A02", "A03", "A04", "A05", "A06"}
    assert attacks["eval"] == {f"A{i:02d}" for i in range(7, 20)}
    # As in ASVspoof 2019 LA, two eval attacks repeat training ones; the others are new.
    assert ATTACKS["A16"] == ATTACKS["A04"] and ATTACKS["A19"] == ATTACKS["A06"]
    train_recipes = [ATTACKS[a] for a in attacks["train"]]
    unseen = [a for a in attacks["eval"] if ATTACKS[a] not in train_recipes]
    assert len(unseen) == 11
    for partition in ("dev", "eval"):
        enrolled = enrolment(corpus, partition)
        assert {gender for gender, _ in enrolled.values()} == {"female", "male"}
        for row in cm_rows(corpus, partition):
            assert row[4] == "bonafide" or row[0] in enrolled, "spoof of a non-enrolled speaker"
        per_attack = {}
        for row in cm_rows(corpus, partition):
            per_attack[row[0], row[3]] = per_attack.get((row[0], row[3]), 0) + 1
        assert {count for (spk, attack), count in per_attack.items() if attack != "-"} == {
            SPEC.spoof_per_speaker_per_attack}


# --------------------------------------------------------------------------- determinism and markers

@pytest.mark.slow
def test_same_seed_gives_identical_files_with_any_worker_count(corpus, tmp_path):
    # The shared corpus is written with generate_corpus's default: one process per core (up to 4) for a corpus
    # of this size; this one with another count.
    workers = 1 if (os.cpu_count() or 1) > 1 else 2
    again = generate_corpus(tmp_path / "again", SPEC, progress=False, workers=workers)
    assert tree_hashes(again) == tree_hashes(corpus)


def test_seed_changes_the_audio(tmp_path):
    small = dict(n_train_speakers=2, n_dev_speakers=2, n_eval_speakers=2, n_dev_nontarget_speakers=0,
                 n_eval_nontarget_speakers=0, bonafide_per_speaker=1, spoof_per_speaker_per_attack=1,
                 enrollment_per_speaker=1, train_attacks=("A01",), eval_attacks=("A07",))
    first = tree_hashes(generate_corpus(tmp_path / "a", CorpusSpec(seed=0, **small), progress=False))
    second = tree_hashes(generate_corpus(tmp_path / "b", CorpusSpec(seed=1, **small), progress=False))
    audio = lambda hashes: {h for name, h in hashes.items() if name.endswith(".flac")}  # noqa: E731
    assert not audio(first) & audio(second)


def test_completion_marker(corpus, tmp_path):
    assert corpus_is_complete(corpus) and corpus_is_complete(corpus, SPEC)
    assert not corpus_is_complete(corpus, CorpusSpec.tiny(seed=5))
    assert not corpus_is_complete(tmp_path / "missing")
    some_file = next((corpus / "protocols").iterdir())
    before = some_file.stat().st_mtime_ns
    generate_corpus(corpus, SPEC, progress=False)  # complete for this spec: nothing is rewritten
    assert some_file.stat().st_mtime_ns == before


@pytest.mark.slow
def test_interrupted_generation_is_detected_and_redone(corpus, tmp_path, monkeypatch):
    root = tmp_path / "interrupted"
    real_write = corpus_writer._write_flac
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) > 25:
            raise KeyboardInterrupt
        real_write(*args, **kwargs)

    monkeypatch.setattr(corpus_writer, "_write_flac", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(root, SPEC, progress=False, workers=1)
    assert not corpus_is_complete(root)
    assert (root / synthetic.IN_PROGRESS_MARKER).exists()
    monkeypatch.setattr(corpus_writer, "_write_flac", real_write)
    generate_corpus(root, SPEC, progress=False, workers=1)
    assert corpus_is_complete(root, SPEC)
    assert tree_hashes(root) == tree_hashes(corpus)


def test_refuses_to_overwrite_data_it_did_not_write(tmp_path):
    (tmp_path / "LA" / "ASVspoof2019_LA_train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="refusing"):
        generate_corpus(tmp_path, SPEC, progress=False)


# --------------------------------------------------------------------------- learnability

def _mel_filterbank(n_bands: int = 40, n_fft: int = 512, sample_rate: int = 16000) -> np.ndarray:
    def mel(hz):
        return 2595 * np.log10(1 + hz / 700)
    edges = 700 * (10 ** (np.linspace(0, mel(sample_rate / 2), n_bands + 2) / 2595) - 1)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    rising = (freqs[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    falling = (edges[2:, None] - freqs[None]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0, np.minimum(rising, falling))


class Features:
    """Per-utterance log-mel statistics and an autocorrelation f0 over the louder frames."""

    def __init__(self, root: Path):
        self.root, self.cache, self.filterbank = root, {}, _mel_filterbank()

    def __call__(self, partition: str, utterance: str) -> dict[str, np.ndarray]:
        if utterance not in self.cache:
            audio, _ = sf.read(flac(self.root, partition, utterance))
            frames = np.lib.stride_tricks.sliding_window_view(audio, 512)[::160] * np.hanning(512)
            log_mel = np.log(np.abs(np.fft.rfft(frames, axis=1)) ** 2 @ self.filterbank.T + 1e-8)
            energy = log_mel.sum(1)
            loud = energy >= np.median(energy)
            autocorrelation = np.fft.irfft(np.abs(np.fft.rfft(frames[loud], 1024, axis=1)) ** 2, axis=1)
            lag = 40 + np.argmax(autocorrelation[:, 40:230], axis=1)  # 70-400 Hz
            self.cache[utterance] = {
                "log_f0": np.log(16000 / np.median(lag)),
                "mean": log_mel[loud].mean(0),
                "spectral": np.concatenate([
                    log_mel[loud].mean(0) - log_mel[loud].mean(), log_mel[loud].std(0),
                    np.abs(np.diff(log_mel, axis=0))[loud[1:]].mean(0)]),  # flux: frame-to-frame texture
            }
        return self.cache[utterance]


def test_spoofs_are_separable_from_bonafide_by_simple_spectral_features(corpus):
    features = Features(corpus)

    def design(partition):
        rows = cm_rows(corpus, partition)
        return (np.stack([features(partition, row[1])["spectral"] for row in rows]),
                np.array([row[4] == "spoof" for row in rows]))

    train_x, train_y = design("train")
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    classifier = LogisticRegression(C=0.1, max_iter=2000).fit((train_x - mean) / std, train_y)
    for partition in ("dev", "eval"):  # seen attacks, then mostly unseen ones
        x, y = design(partition)
        auc = roc_auc_score(y, classifier.decision_function((x - mean) / std))
        assert auc > 0.65, f"{partition}: bona fide / spoof AUC {auc:.3f}"  # chance: 0.5


def test_speakers_are_verifiable_by_simple_features(corpus):
    features = Features(corpus)
    is_target, f0_scores, cosine_scores = [], [], []
    for partition in ("dev", "eval"):
        trials = [t for t in protocol(corpus, f"ASVspoof2019.LA.asv.{partition}.gi.trl.txt") if t[3] != "spoof"]
        centre = np.mean([features(partition, t[1])["mean"] for t in trials], axis=0)
        models = {spk: [features(partition, u) for u in utts]
                  for spk, (_, utts) in enrolment(corpus, partition).items()}
        for claimed, utterance, _, kind in trials:
            test, model = features(partition, utterance), models[claimed]
            is_target.append(kind == "target")
            f0_scores.append(-abs(np.mean([m["log_f0"] for m in model]) - test["log_f0"]))
            a, b = np.mean([m["mean"] for m in model], axis=0) - centre, test["mean"] - centre
            cosine_scores.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    is_target = np.array(is_target)
    assert equal_error_rate(is_target, np.array(f0_scores)) < 0.3  # chance: 0.5
    assert equal_error_rate(is_target, np.array(cosine_scores)) < 0.35


def test_every_system_rolls_off_the_top_band_and_repeated_systems_share_it():
    noise = np.random.default_rng(0).standard_normal(32000)

    def band_db(signal, low, high):
        spectrum = np.abs(np.fft.rfft(signal)) ** 2
        freqs = np.fft.rfftfreq(len(signal), 1 / 16000)
        return 10 * np.log10(spectrum[(freqs >= low) & (freqs < high)].mean())

    outputs = {}
    for attack in ATTACKS:
        out = synthetic._top_band_rolloff(noise, 0, attack, 16000)
        outputs[attack] = out
        assert abs(band_db(out, 300, 4000) - band_db(noise, 300, 4000)) < 0.3, attack  # speech band kept
        assert band_db(noise, 7600, 8000) - band_db(out, 7600, 8000) > 10.0, attack  # top band attenuated
    assert np.array_equal(outputs["A16"], outputs["A04"]) and np.array_equal(outputs["A19"], outputs["A06"])
    assert not np.array_equal(outputs["A07"], outputs["A08"])  # cut-off and depth differ between systems


@pytest.mark.slow
def test_the_demo_regenerates_a_corpus_written_for_another_spec(corpus, tmp_path):
    from data.synthetic import ensure_demo_corpus
    from runtime.config import build_config

    root = tmp_path / "demo"
    shutil.copytree(corpus, root)  # a complete corpus of CorpusSpec.tiny(seed=0)
    assert corpus_is_complete(root, CorpusSpec.tiny(seed=0))
    config = build_config({"demo_corpus": {"root": str(root), "size": "tiny", "seed": 1}})
    ensure_demo_corpus(config["demo_corpus"], progress=False)  # an older or other corpus is not silently reused
    assert corpus_is_complete(root, CorpusSpec.tiny(seed=1)) and not corpus_is_complete(root, CorpusSpec.tiny(seed=0))


def test_no_file_is_under_the_audio_minimum(corpus):
    """The readers refuse audio under data.audio.MIN_AUDIO_MS; the corpus never writes any (spec floor: 0.3 s)."""
    files = sorted(corpus.rglob("*.flac"))
    assert files
    for path in files:
        check_duration(path)
    assert 0.3 * 1000 > MIN_AUDIO_MS
    with pytest.raises(ValueError, match="0.3 <= min_seconds"):
        CorpusSpec(min_seconds=0.29)
