"""ASVspoof 5 protocol readers on small hand-written files in each confirmed layout, and bad layouts."""
from __future__ import annotations

import pytest

from data.asvspoof5 import Track2Trial, UtteranceEntry, read_enrollment, read_trials, read_utterance_list
from data.protocols import ProtocolError

# The public release (ASVspoof5.train.tsv / *.track_1.tsv): 10 columns; coded copies name their original.
RELEASE_TRACK1 = """\
E_1234 E_0000000001 F - - - - bonafide bonafide -
E_1234 E_0000000002 F C05 3 E_0000000001 - bonafide bonafide -
E_0420 E_0000000003 M - - - AC2 A17 spoof -
E_0420 E_0000000004 M C11 8 E_0000000003 AC2 A17 spoof -
"""
# The challenge's ASVspoof5.train.metadata.txt (SASV2_Baseline, asvspoof5 branch): 6 columns.
CHALLENGE_TRAIN = "T_4850 T_0000000000 F - A05 spoof\nT_4850 T_0000000001 F - - bonafide\n"
RELEASE_TRIALS = """\
D_0755 D_0000000022 F A11 spoof
D_0755 D_0000000023 F bonafide target
D_0755 D_0000000024 F bonafide nontarget
"""
CHALLENGE_TRIALS = "D_0755 D_0000000022 spoof\nD_0755 D_0000000023 target\nD_0761 D_0000000023 nontarget\n"
ENROLLMENT = "D_4660 D_A0000000316,D_A0000000725,D_A0000000343\nD_4661 D_A0000000001,D_A0000000002\n"


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_release_utterance_list_keeps_attack_and_codec(tmp_path):
    entries = read_utterance_list(write(tmp_path, "ASVspoof5.eval.track_1.tsv", RELEASE_TRACK1))
    assert entries == [
        UtteranceEntry("E_1234", "E_0000000001", "F", "-", "bonafide", "bonafide", "-", "-", "-"),
        UtteranceEntry("E_1234", "E_0000000002", "F", "C05", "bonafide", "bonafide", "3", "E_0000000001", "-"),
        UtteranceEntry("E_0420", "E_0000000003", "M", "-", "A17", "spoof", "-", "-", "AC2"),
        UtteranceEntry("E_0420", "E_0000000004", "M", "C11", "A17", "spoof", "8", "E_0000000003", "AC2"),
    ]


def test_tabs_and_crlf_are_whitespace(tmp_path):
    text = RELEASE_TRACK1.replace(" ", "\t").replace("\n", "\r\n")
    assert read_utterance_list(write(tmp_path, "a.tsv", text))[3].codec == "C11"


def test_challenge_utterance_list(tmp_path):
    entries = read_utterance_list(write(tmp_path, "ASVspoof5.train.metadata.txt", CHALLENGE_TRAIN))
    assert entries == [UtteranceEntry("T_4850", "T_0000000000", "F", "-", "A05", "spoof"),
                       UtteranceEntry("T_4850", "T_0000000001", "F", "-", "bonafide", "bonafide")]
    assert entries[0].codec_q is None and entries[0].attack_tag is None


def test_release_trials(tmp_path):
    trials = read_trials(write(tmp_path, "ASVspoof5.dev.track_2.trial.tsv", RELEASE_TRIALS))
    assert trials == [Track2Trial("D_0755", "D_0000000022", "spoof", "A11", "F"),
                      Track2Trial("D_0755", "D_0000000023", "target", "bonafide", "F"),
                      Track2Trial("D_0755", "D_0000000024", "nontarget", "bonafide", "F")]
    assert [t.label for t in trials] == [1, 0, 1]


def test_challenge_trials(tmp_path):
    trials = read_trials(write(tmp_path, "ASVspoof5.dev.trial.txt", CHALLENGE_TRIALS))
    assert trials == [Track2Trial("D_0755", "D_0000000022", "spoof", None, None),
                      Track2Trial("D_0755", "D_0000000023", "target", "bonafide", None),
                      Track2Trial("D_0761", "D_0000000023", "nontarget", "bonafide", None)]


@pytest.mark.parametrize("name", ["ASVspoof5.dev.track_2.enroll.tsv", "ASVspoof5.dev.enroll.txt"])
def test_enrollment_lists_several_utterances(tmp_path, name):
    assert read_enrollment(write(tmp_path, name, ENROLLMENT)) == {
        "D_4660": ["D_A0000000316", "D_A0000000725", "D_A0000000343"],
        "D_4661": ["D_A0000000001", "D_A0000000002"]}


@pytest.mark.parametrize("reader, text, message", [
    # a 2019 LA CM line is no ASVspoof 5 layout
    (read_utterance_list, "LA_0079 LA_T_1138215 - - bonafide\n",
     r"a.txt:1: expected the columns \(SPEAKER_ID .* TMP\) or \(speaker utterance gender codec attack key\), "
     r"got 5 fields"),
    # layouts mixed within one file
    (read_utterance_list, RELEASE_TRACK1 + CHALLENGE_TRAIN,
     r"a.txt:5: expected the columns SPEAKER_ID .* TMP \(the layout of line 1\), got 6 fields"),
    (read_utterance_list, "T_1 T_2 X - A05 spoof\n", r"a.txt:1: unknown gender 'X'"),
    (read_utterance_list, "T_1 T_2 F - A05 fake\n", r"a.txt:1: unknown CM key 'fake'"),
    (read_utterance_list, "T_1 T_2 F - - spoof\n", r"a.txt:1: key 'spoof' without an attack"),
    (read_utterance_list, "T_1 T_2 F - A05 bonafide\n", r"a.txt:1: key 'bonafide' with attack 'A05'"),
    (read_utterance_list, CHALLENGE_TRAIN + "T_9 T_0000000000 M - A05 spoof\n",
     r"a.txt:3: duplicate utterance id 'T_0000000000' \(first on line 1\)"),
    (read_utterance_list, "\n\n", r"a.txt: protocol file is empty"),
    (read_trials, "D_1 D_2 F A11\n", r"a.txt:1: expected the columns \(TARGET_SPEAKER_ID FLAC_FILE_NAME "
     r"TARGET_GENDER ATTACK_LABEL ASV_KEY\) or \(TARGET_SPEAKER_ID FLAC_FILE_NAME ASV_KEY\), got 4 fields"),
    (read_trials, RELEASE_TRIALS + CHALLENGE_TRIALS, r"a.txt:4: expected the columns TARGET_SPEAKER_ID "
     r"FLAC_FILE_NAME TARGET_GENDER ATTACK_LABEL ASV_KEY \(the layout of line 1\), got 3 fields"),
    (read_trials, "D_1 D_2 F bonafide spoof\n", r"a.txt:1: key 'spoof' does not match attack 'bonafide'"),
    (read_trials, "D_1 D_2 F A11 target\n", r"a.txt:1: key 'target' does not match attack 'A11'"),
    (read_trials, "D_1 D_2 accept\n", r"a.txt:1: unknown trial key 'accept'"),
    (read_trials, "D_1 D_2 target\nD_1 D_2 target\n", r"a.txt:2: duplicate trial of speaker 'D_1'"),
    (read_enrollment, "D_4660 D_A1 D_A2\n",
     r"a.txt:1: expected the columns TARGET_SPEAKER_ID FLAC_FILE_NAMES \(comma-separated\), got 3 fields"),
    (read_enrollment, "D_4660 ,\n", r"a.txt:1: speaker 'D_4660' has no enrollment utterances"),
    (read_enrollment, "", r"a.txt: enrollment list is empty"),
])
def test_bad_layouts_one_line_errors(tmp_path, reader, text, message):
    with pytest.raises(ProtocolError, match=message) as error:
        reader(write(tmp_path, "a.txt", text))
    assert "\n" not in str(error.value)
