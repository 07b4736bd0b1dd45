"""The synthetic corpus in the ASVspoof 5 release layout: read back by data/asvspoof5.py, audio, codecs,
attack splits, enrollment, determinism, regeneration; and the 2019 layout left as it was."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_run import QUIET_ENV, REPO, tiny_corpus

from data.asvspoof5 import CODECS, read_enrollment, read_trials, read_utterance_list
from data.audio import MIN_AUDIO_MS, check_duration
from data.synthetic import Asvspoof5Spec, CorpusSpec, corpus_is_complete, generate_asvspoof5_corpus
from data.synthetic.codecs import CODECS as CODECS_OF_THE_GENERATOR

SPEC = Asvspoof5Spec.tiny()
LISTS = {"train": "ASVspoof5.train.tsv", "dev": "ASVspoof5.dev.track_1.tsv", "eval": "ASVspoof5.eval.track_1.tsv"}
FOLDERS = {"train": "flac_T", "dev": "flac_D", "eval": "flac_E_eval"}
LETTER = {"train": "T", "dev": "D", "eval": "E"}
NARROWBAND = ("C08", "C09", "C10", "C11")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return generate_asvspoof5_corpus(tmp_path_factory.mktemp("asv5") / "corpus", SPEC, progress=False, workers=1)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def energy_above(path: Path, hz: float) -> float:
    """Share of the file's energy above `hz` (plain FFT, independent of the generator's STFT)."""
    signal, rate = sf.read(path)
    power = np.abs(np.fft.rfft(signal)) ** 2
    return float(power[np.fft.rfftfreq(len(signal), 1 / rate) > hz].sum() / power.sum())


def test_protocols_read_back_with_the_sizes_of_the_spec(corpus):
    lists = {p: read_utterance_list(corpus / name) for p, name in LISTS.items()}
    # tiny: 4 train speakers x (4 bona fide + 8 attacks); dev: 2 enrolled x (4 + 8 attacks) + 2 x 4 bona fide,
    # eval: 2 x (4 + 16 attacks) + 2 x 4; half of the dev / eval bona fide and of their spoofs get a coded copy.
    assert len(lists["train"]) == 48
    assert len(lists["dev"]) == 32 + 8 + 8
    assert len(lists["eval"]) == 48 + 8 + 16
    for partition, entries in lists.items():
        letter = LETTER[partition]
        for e in entries:
            assert re.fullmatch(rf"{letter}_\d{{4}}", e.speaker) and re.fullmatch(rf"{letter}_\d{{10}}", e.utterance)
            assert e.gender in ("F", "M")
            assert e.attack_tag == "-" if e.key == "bonafide" else re.fullmatch(r"AC[123]", e.attack_tag)
    for partition in ("dev", "eval"):
        trials = read_trials(corpus / f"ASVspoof5.{partition}.track_2.trial.tsv")
        enrollment = read_enrollment(corpus / f"ASVspoof5.{partition}.track_2.enroll.tsv")
        assert {t.speaker for t in trials} == set(enrollment) and len(enrollment) == 2
        assert {t.key for t in trials} == {"target", "nontarget", "spoof"}


def test_every_listed_file_exists_decodes_at_16k_and_nothing_else_is_there(corpus):
    for partition, name in LISTS.items():
        listed = {e.utterance for e in read_utterance_list(corpus / name)}
        if partition != "train":
            enrolled = read_enrollment(corpus / f"ASVspoof5.{partition}.track_2.enroll.tsv")
            listed |= {u for utts in enrolled.values() for u in utts}
        folder = corpus / FOLDERS[partition]
        assert {p.stem for p in folder.glob("*.flac")} == listed
        for utterance in listed:
            info = sf.info(folder / f"{utterance}.flac")
            assert info.samplerate == 16000 and info.channels == 1
            assert SPEC.min_seconds - 0.01 <= info.duration <= SPEC.max_seconds + 0.01


def test_codec_conditions_are_coded_copies_that_change_the_signal(corpus):
    assert {e.codec for e in read_utterance_list(corpus / LISTS["train"])} == {"-"}
    seen = set()
    for partition in ("dev", "eval"):
        entries = {e.utterance: e for e in read_utterance_list(corpus / LISTS[partition])}
        coded = [e for e in entries.values() if e.codec != "-"]
        assert {e.key for e in coded} == {"bonafide", "spoof"}  # both kinds are coded
        for e in entries.values():
            if e.codec == "-":
                assert (e.codec_q, e.codec_seed) == ("-", "-")
                continue
            seen.add(e.codec)
            assert re.fullmatch(r"C\d\d", e.codec) and e.codec_q in ("1", "2", "3")
            original = entries[e.codec_seed]  # the uncoded original is listed, same speaker and attack
            assert (original.codec, original.speaker, original.attack, original.key) == ("-", e.speaker, e.attack,
                                                                                      e.key)
            folder = corpus / FOLDERS[partition]
            copy, _ = sf.read(folder / f"{e.utterance}.flac")
            source, _ = sf.read(folder / f"{original.utterance}.flac")
            assert len(copy) == len(source)
            assert np.sqrt(np.mean((copy - source) ** 2)) > 0.01 * np.sqrt(np.mean(source ** 2)), e.codec
            if e.codec in NARROWBAND:  # nothing left above the 4 kHz band edge
                above = energy_above(folder / f"{e.utterance}.flac", 4500)
                assert above < 3e-6 and above < energy_above(folder / f"{original.utterance}.flac", 4500) / 5
    assert len(seen) >= 9  # the codecs are taken in turn


def test_attack_sets_follow_the_release(corpus):
    attacks = {p: {e.attack for e in read_utterance_list(corpus / name) if e.key == "spoof"}
               for p, name in LISTS.items()}
    assert attacks["train"] == {f"A{k:02d}" for k in range(1, 9)}
    assert attacks["dev"] == {f"A{k:02d}" for k in range(9, 17)}
    assert attacks["eval"] == {f"A{k:02d}" for k in range(17, 33)}


def test_enrollment_is_several_bona_fide_uncoded_files_per_speaker_outside_the_track_1_list(corpus):
    for partition in ("dev", "eval"):
        entries = {e.utterance: e for e in read_utterance_list(corpus / LISTS[partition])}
        sources = {e.codec_seed for e in entries.values()}
        enrollment = read_enrollment(corpus / f"ASVspoof5.{partition}.track_2.enroll.tsv")
        for speaker, utterances in enrollment.items():
            assert len(utterances) == SPEC.enrollment_per_speaker == 3
            for utterance in utterances:
                assert utterance not in entries and utterance not in sources  # not a trial, not coded
                # uncoded: a wideband recording, unlike the narrowband codecs
                assert energy_above(corpus / FOLDERS[partition] / f"{utterance}.flac", 4500) > 1e-6
        for trial in read_trials(corpus / f"ASVspoof5.{partition}.track_2.trial.tsv"):
            entry = entries[trial.utterance]
            assert trial.attack == entry.attack
            assert (trial.key == "spoof") == (entry.key == "spoof")
            if trial.key == "target":
                assert entry.speaker == trial.speaker
            if trial.key == "nontarget":
                assert entry.speaker != trial.speaker and entry.gender == trial.gender


@pytest.mark.slow
def test_same_seed_same_bytes_any_worker_count_other_seed_other_audio(corpus, tmp_path):
    again = generate_asvspoof5_corpus(tmp_path / "again", SPEC, progress=False, workers=2)
    assert tree_hashes(again) == tree_hashes(corpus)
    other = tree_hashes(generate_asvspoof5_corpus(tmp_path / "other", Asvspoof5Spec.tiny(seed=1), progress=False))
    audio = lambda hashes: {h for name, h in hashes.items() if name.endswith(".flac")}  # noqa: E731
    assert not audio(other) & audio(tree_hashes(corpus))


@pytest.mark.slow
def test_regenerating_is_a_no_op_when_complete_and_redone_when_interrupted(corpus, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(corpus, root)  # complete for SPEC; changed below, so a copy
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    generate_asvspoof5_corpus(root, SPEC, progress=False)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    # Neither layout's spec is taken for the other's corpus.
    assert corpus_is_complete(root, SPEC) and not corpus_is_complete(root, CorpusSpec.tiny())
    # An interrupted run leaves the in-progress marker (and files missing).
    (root / "synthetic_corpus_complete.json").rename(root / "synthetic_corpus_in_progress.json")
    (root / "flac_T" / "T_0000000000.flac").unlink()
    generate_asvspoof5_corpus(root, SPEC, progress=False)
    assert (root / "flac_T" / "T_0000000000.flac").is_file() and corpus_is_complete(root, SPEC)


def test_foreign_data_is_not_overwritten(tmp_path):
    (tmp_path / "flac_T").mkdir()
    with pytest.raises(FileExistsError, match="refusing"):
        generate_asvspoof5_corpus(tmp_path, SPEC, progress=False)


def test_the_demo_section_picks_the_layout(tmp_path):
    from data.synthetic import ensure_demo_corpus
    from runtime.config import build_config

    config = build_config({"demo_corpus": {"root": str(tmp_path / "d"), "size": "tiny", "seed": 0,
                                           "layout": "asvspoof5"}})
    assert ensure_demo_corpus(config["demo_corpus"], progress=False) is True  # generated now
    assert corpus_is_complete(tmp_path / "d", SPEC) and (tmp_path / "d" / "ASVspoof5.train.tsv").is_file()
    assert ensure_demo_corpus(config["demo_corpus"], progress=False) is False  # already there


@pytest.mark.slow
def test_the_demo_config_trains_on_the_corpus_it_has_just_generated(tmp_path):
    """The release's protocol files are looked for when the config is read, before main.py generates the
    corpus; main.py reads the config again after generating it."""
    result = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--config", str(REPO / "configs" / "demo_asvspoof5.conf"),
         "--output_dir", "exp", "--no_progress", "--set", "dirs.database=d/", "demo_corpus.root=d",
         "demo_corpus.size=tiny", "epoch=1", "trials_per_epoch=16"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **QUIET_ENV}, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("generating the synthetic demo corpus in d ...")
    report = json.loads((tmp_path / "exp" / "demo_asvspoof5" / "report" / "report.json").read_text())
    assert report["metrics"][0] == "a_dcf" and report["per_codec"]


@pytest.mark.slow
def test_the_2019_layout_is_unchanged(tmp_path_factory):
    """Decoded audio and protocols of the tiny 2019 corpus, hashed from the generator before the ASVspoof 5
    layout was added (decoded, so that a different FLAC encoder build does not matter)."""
    root = tiny_corpus(tmp_path_factory)  # CorpusSpec.tiny(), generated once per session
    assert corpus_is_complete(root, CorpusSpec.tiny())
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".flac", ".txt"):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(sf.read(path, dtype="int16")[0].tobytes() if path.suffix == ".flac" else path.read_bytes())
    assert digest.hexdigest() == "a32baa2b88f901c22c1dbd670b7209d6e67f8dbb118b8505043984f616207dde"


def test_no_file_is_under_the_audio_minimum_and_every_codec_id_is_the_release_s(corpus):
    """The readers refuse audio under data.audio.MIN_AUDIO_MS and codec ids outside C01-C11; the generator
    writes neither (spec floor: 0.3 s; its codec table is keyed by the release's ids)."""
    files = sorted(corpus.rglob("*.flac"))
    assert files
    for path in files:
        check_duration(path)
    assert 0.3 * 1000 > MIN_AUDIO_MS
    with pytest.raises(ValueError, match="0.3 <= min_seconds"):
        Asvspoof5Spec(min_seconds=0.29)
    assert set(CODECS_OF_THE_GENERATOR) == set(CODECS) - {"-"}
