"""Hostile input on the ASVspoof 5 paths that already stops cleanly: one `error: ...` line naming the
file and line, exit status 2, nothing in the output folder.

The readers are given small hand-written lists; evaluate.py is run as from the shell (in-process)
on hand-written Track 1 / Track 2 files. A probe of the same cases through main.py and the scripts on
the tiny release found the same messages."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from tiny_run import run_script

from data.asvspoof5 import read_enrollment, read_trials, read_utterance_list
from data.corpora import corpus_of
from data.protocols import ProtocolError

UTT = ["S1 U1 F - - - - bonafide bonafide -", "S1 U2 F C01 - U1 AC1 A01 spoof -", "S2 U3 M - - - - bonafide bonafide -"]
TRIAL = ["S1 U1 F bonafide target", "S2 U1 M bonafide nontarget", "S1 U2 F A01 spoof"]
HEADER = "SPEAKER_ID FLAC_FILE_NAME SPEAKER_GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG ATTACK_LABEL KEY TMP"


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@pytest.mark.parametrize("lines, line, message", [
    ([*UTT[:2], "S2 U3 M - - - - bonafide bonafide"], 3, "got 9 fields"),
    ([*UTT[:2], UTT[2] + " x"], 3, "got 11 fields"),
    ([*UTT[:2], "S2 U3 M - bonafide bonafide"], 3, "(the layout of line 1), got 6 fields"),
    (["S1 U1 X - - - - bonafide bonafide -"], 1, "unknown gender 'X'"),
    (["S1 U1 F - - - - A01 bonafide -"], 1, "key 'bonafide' with attack 'A01'"),
    (["S1 U2 F - - - AC1 bonafide spoof -"], 1, "key 'spoof' without an attack"),
    (["S1 U1 F - - - - bonafide genuine -"], 1, "unknown CM key 'genuine'"),
    ([*UTT, UTT[0]], 4, "duplicate utterance id 'U1' (first on line 1)"),
    ([HEADER, *UTT], 1, "unknown gender 'SPEAKER_GENDER'"),
    # codec ids: "-" or the release's C01-C11, in both layouts
    ([*UTT[:2], "S2 U3 M C12 1 U1 - bonafide bonafide -"], 3, "unknown codec 'C12'; expected one of -, C01,"),
    (["S1 U1 F C00 1 U0 - bonafide bonafide -"], 1, "unknown codec 'C00'"),
    (["S1 U1 F c05 1 U0 - bonafide bonafide -"], 1, "unknown codec 'c05'"),
    (["S1 U1 F C5 1 U0 - bonafide bonafide -"], 1, "unknown codec 'C5'"),
    (["S1 U1 F mp3 1 U0 - bonafide bonafide -"], 1, "unknown codec 'mp3'"),
    (["T_4850 T_0000000000 F none A05 spoof"], 1, "unknown codec 'none'"),
])
def test_bad_utterance_list_line(tmp_path, lines, line, message):
    path = _write(tmp_path, "ASVspoof5.dev.track_1.tsv", lines)
    with pytest.raises(ProtocolError, match=rf"^{path}:{line}: .*{re.escape(message)}"):
        read_utterance_list(path)


def test_every_codec_id_of_the_release_reads(tmp_path):
    ids = ["-", *(f"C{number:02d}" for number in range(1, 12))]
    lines = [f"S1 U{index} F {codec} 1 U0 - bonafide bonafide -" for index, codec in enumerate(ids)]
    assert [e.codec for e in read_utterance_list(_write(tmp_path, "u.tsv", lines))] == ids


def _track2_config(tmp_path: Path, trials: list[str], enrollment: list[str] | None) -> dict:
    dirs = {"database": str(tmp_path), "asvspoof5_dev_trial": str(_write(tmp_path, "t.tsv", trials)),
            "asvspoof5_dev_enroll": str(tmp_path / "e.tsv")}
    if enrollment is not None:
        _write(tmp_path, "e.tsv", enrollment)
    return {"dataset": "asvspoof5", "dirs": dirs}


ENROLL = ["S1 E1,E2,U9", "S2 E3"]


def test_a_trial_on_the_speaker_s_own_enrollment_utterance_is_refused(tmp_path):
    trials = [*TRIAL, "S1 U9 F bonafide target"]  # U9 is one of S1's enrollment utterances
    config = _track2_config(tmp_path, trials, ENROLL)
    with pytest.raises(ProtocolError) as caught:
        corpus_of(config).sasv_trials("dev")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 't.tsv'}:4: ") and f"({tmp_path / 'e.tsv'}:1)" in message
    assert "U9" in message and "S1" in message and "\n" not in message


def test_trials_apart_from_the_enrollment_read_as_before(tmp_path):
    # Another speaker's enrollment utterance as a test (S2 tested on S1's E1) is not the same recording twice.
    trials = [*TRIAL, "S2 E1 M bonafide nontarget"]
    assert len(corpus_of(_track2_config(tmp_path, trials, ENROLL)).sasv_trials("dev")) == 4
    # Without the enrollment list (a script that needs none) the trials read; the scorers name a missing list.
    (tmp_path / "without").mkdir()
    assert len(corpus_of(_track2_config(tmp_path / "without", trials, None)).sasv_trials("dev")) == 4


def test_empty_lists_are_refused(tmp_path):
    for reader, name in ((read_utterance_list, "u.tsv"), (read_trials, "t.tsv"), (read_enrollment, "e.tsv")):
        path = _write(tmp_path, name, ["", "  "])
        with pytest.raises(ProtocolError, match=rf"^{path}: .*empty"):
            reader(path)


def test_bom_crlf_and_tabs_read_as_plain(tmp_path):
    plain = read_utterance_list(_write(tmp_path, "a.tsv", UTT))
    odd = tmp_path / "b.tsv"
    odd.write_bytes(("\ufeff" + "".join("\t".join(line.split()) + "\r\n" for line in UTT)).encode())
    assert read_utterance_list(odd) == plain and plain[0].speaker == "S1"


@pytest.mark.parametrize("lines, line, message", [
    (["S1 U1 F bonafide"], 1, "got 4 fields"),
    (["S1 U1 F A07 target"], 1, "key 'target' does not match attack 'A07'"),
    (["S1 U2 F bonafide spoof"], 1, "key 'spoof' does not match attack 'bonafide'"),
    ([*TRIAL, TRIAL[1]], 4, "duplicate trial of speaker 'S2' with test utterance 'U1' (first on line 2)"),
    (["S1 U1 U bonafide target"], 1, "unknown gender 'U'"),
])
def test_bad_trial_line(tmp_path, lines, line, message):
    path = _write(tmp_path, "ASVspoof5.dev.track_2.trial.tsv", lines)
    with pytest.raises(ProtocolError, match=rf"^{path}:{line}: .*{re.escape(message)}"):
        read_trials(path)


@pytest.mark.parametrize("lines, line, message", [
    (["S1 E1,E2", "S1 E3"], 2, "speaker 'S1' is listed twice"),
    (["S1 E1,E2", "S2 E3,E1"], 2, "duplicate utterance id 'E1'"),
    (["S1 ,"], 1, "speaker 'S1' has no enrollment utterances"),
    (["S1 E1, E2"], 1, "got 3 fields"),
])
def test_bad_enrollment_line(tmp_path, lines, line, message):
    path = _write(tmp_path, "ASVspoof5.dev.track_2.enroll.tsv", lines)
    with pytest.raises(ProtocolError, match=rf"^{path}:{line}: .*{re.escape(message)}"):
        read_enrollment(path)


SCORES = ["spk\tfilename\tcm-score\tasv-score\tsasv-score", "S1\tU1\t-\t-\t2.0", "S2\tU1\t-\t-\t0.5",
          "S1\tU2\t-\t-\t0.1", "S1\tU3\t-\t-\t1.5", "S2\tU4\t-\t-\t0.2", "S1\tU5\t-\t-\t-0.3"]
KEYS = ["spk\tfilename\tcm-label\tasv-label\tattack\tcodec", "S1\tU1\tbonafide\ttarget\tbonafide\t-",
        "S2\tU1\tbonafide\tnontarget\tbonafide\t-", "S1\tU2\tspoof\tspoof\tA01\tC01",
        "S1\tU3\tbonafide\ttarget\tbonafide\tC01", "S2\tU4\tbonafide\tnontarget\tbonafide\tC01",
        "S1\tU5\tspoof\tspoof\tA02\t-"]
T1_SCORES = ["filename\tcm-score", "U1\t1.0", "U2\t-1.0", "U3\t0.5"]
T1_KEYS = ["filename\tcm-label\tattack\tcodec", "U1\tbonafide\tbonafide\t-", "U2\tspoof\tA01\t-",
           "U3\tbonafide\tbonafide\tC01"]


def _set(lines: list[str], row: int, column: int, value: str) -> list[str]:
    fields = lines[row].split("\t")
    fields[column] = value
    return [*lines[:row], "\t".join(fields), *lines[row + 1:]]


@pytest.mark.parametrize("track, scores, keys, where, message", [
    (2, SCORES[1:], KEYS, "s.tsv:1", "header must be"),
    (2, SCORES, KEYS[1:], "k.tsv:1", "header needs the columns"),
    (2, ["speaker\tutt\tcm\tasv\tsasv", *SCORES[1:]], KEYS, "s.tsv:1", "header must be"),
    (2, SCORES[:-1], KEYS, "s.tsv", "no score for trial S1 U5 (k.tsv:7)"),
    (2, [*SCORES, "S9\tU9\t-\t-\t0.0"], KEYS, "s.tsv:8", "trial S9 U9 is not in k.tsv"),
    (2, _set(SCORES, 2, 4, "nan"), KEYS, "s.tsv:3", "sasv-score 'nan' is not finite"),
    (2, _set(SCORES, 2, 4, "inf"), KEYS, "s.tsv:3", "sasv-score 'inf' is not finite"),
    (2, [*SCORES, SCORES[3]], KEYS, "s.tsv:8", "duplicate trial S1 U2 (first on line 4)"),
    (2, SCORES, [*KEYS, KEYS[3]], "k.tsv:8", "duplicate trial S1 U2 (first on line 4)"),
    (2, SCORES, _set(KEYS, 4, 5, ""), "k.tsv:5", "expected 6 tab-separated fields"),
    (2, SCORES, _set(KEYS, 3, 4, "bonafide"), "k.tsv:4", "a spoof trial with attack 'bonafide'"),
    (2, SCORES, _set(KEYS, 6, 4, "-"), "k.tsv:7", "a spoof trial with attack '-'"),
    (1, T1_SCORES[1:], T1_KEYS, "s.tsv:1", "header must be"),
    (1, T1_SCORES[:-1], T1_KEYS, "s.tsv", "no score for trial U3 (k.tsv:4)"),
    (1, _set(T1_SCORES, 2, 1, "inf"), T1_KEYS, "s.tsv:3", "cm-score 'inf' is not finite"),
    (1, [*T1_SCORES, T1_SCORES[1]], T1_KEYS, "s.tsv:5", "duplicate trial U1 (first on line 2)"),
    (1, T1_SCORES, _set(T1_KEYS, 3, 3, ""), "k.tsv:4", "expected 4 tab-separated fields"),
    (1, T1_SCORES, _set(T1_KEYS, 2, 1, "bonafide"), "s.tsv (keys k.tsv)", "no bona fide or no spoof CM trials"),
])
def test_evaluate_refuses_bad_official_files(tmp_path, monkeypatch, capsys, track, scores, keys, where, message):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "s.tsv", scores)
    _write(tmp_path, "k.tsv", keys)
    flags = ["--sasv", "s.tsv", "--sasv_keys", "k.tsv"] if track == 2 else ["--cm", "s.tsv", "--cm_keys", "k.tsv"]
    status, _, err = run_script("evaluate.py", [*flags, "--out", "report"], capsys, monkeypatch)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {where}") and message in lines[0], err
    assert not (tmp_path / "report").exists() or not any((tmp_path / "report").iterdir())
