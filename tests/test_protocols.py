"""Protocol parsers on the real ASVspoof 2019 LA files, and their error messages."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from data.protocols import (
    ProtocolError,
    check_tests_not_enrolled,
    read_cm_protocol,
    read_enrollment_files,
    read_enrollment_listing,
    read_enrollment_utterances,
    read_sasv_trials,
    speaker_utterances,
)
from data.trials import (
    NONTARGET_BONAFIDE,
    NONTARGET_SPOOF,
    TARGET_BONAFIDE,
    TARGET_SPOOF,
    ZERO_EFFORT,
    TrialSampler,
    trial_rng,
)


def protocol(fixtures: Path, name: str) -> Path:
    return fixtures / "protocols" / f"ASVspoof2019.LA.{name}.txt"


def test_real_cm_protocols(fixtures):
    train = read_cm_protocol(protocol(fixtures, "cm.train.trn"))
    keys = Counter(entry.key for entry in train)
    assert keys["bonafide"] > 0 and keys["spoof"] > 0 and len(train) == sum(keys.values())
    attacks = {entry.attack for entry in train if entry.key == "spoof"}
    assert attacks and all(a.startswith("A") for a in attacks)
    assert all(entry.attack == "-" for entry in train if entry.key == "bonafide")
    eval_attacks = {e.attack for e in read_cm_protocol(protocol(fixtures, "cm.eval.trl")) if e.key == "spoof"}
    assert eval_attacks - attacks, "eval holds attacks unseen in training"


def test_real_sasv_trials_and_enrollment(fixtures):
    trials = read_sasv_trials(protocol(fixtures, "asv.dev.gi.trl"))
    assert {t.key for t in trials} == {"target", "nontarget", "spoof"}
    assert all((t.label == 0) == (t.key == "target") for t in trials)
    files = read_enrollment_files(protocol(fixtures, "asv.dev.gi.trn"))
    assert {t.speaker for t in trials} <= set(files)
    lists = read_enrollment_utterances([protocol(fixtures, "asv.dev.female.trn"),
                                        protocol(fixtures, "asv.dev.male.trn")])
    assert set(lists) == set(files)
    # the concatenated enrollment file is named after the speaker's first enrollment utterance
    assert all(files[s] == f"{s}_{utts[0]}" for s, utts in lists.items())
    cm_dev = {e.utterance for e in read_cm_protocol(protocol(fixtures, "cm.dev.trl"))}
    assert {t.utterance for t in trials} <= cm_dev
    assert not any(u in cm_dev for utts in lists.values() for u in utts), "enrollment utterances are not CM trials"


def test_real_trials_never_test_a_speaker_on_their_own_enrollment(fixtures, tmp_path):
    """The real dev lists pass; the same trial list with one test utterance swapped for one of its speaker's
    enrollment utterances (asv.dev.{female,male}.trn.txt) is refused, naming both lines."""
    lists = [protocol(fixtures, "asv.dev.female.trn"), protocol(fixtures, "asv.dev.male.trn")]
    enrollment, listed_at = read_enrollment_listing(lists)
    trial_path = protocol(fixtures, "asv.dev.gi.trl")
    check_tests_not_enrolled(read_sasv_trials(trial_path), enrollment, listed_at, trial_path)

    lines = trial_path.read_text().splitlines()[:40]
    speaker, _, attack, key = lines[29].split()
    enrolled = enrollment[speaker][1]
    lines[29] = f"{speaker} {enrolled} {attack} {key}"
    edited = tmp_path / "trials.txt"
    edited.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProtocolError) as caught:
        check_tests_not_enrolled(read_sasv_trials(edited), enrollment, listed_at, edited)
    message = str(caught.value)
    where = next(f"{path}:{number}" for path in lists
                 for number, line in enumerate(path.read_text().splitlines(), start=1)
                 if line.split()[0] == speaker)
    assert message.startswith(f"{edited}:30: ") and f"({where})" in message and enrolled in message


@pytest.mark.parametrize("text, pattern", [
    ("LA_0001 LA_T_1 - - bonafide\nLA_0001 LA_T_2 - bonafide\n", r"bad.txt:2: expected 5 fields, got 4"),
    ("LA_0001 LA_T_1 - - genuine\n", r"bad.txt:1: unknown CM key 'genuine'"),
    ("LA_0001 LA_T_1 - - bonafide\n\nLA_0002 LA_T_1 - A01 spoof\n",
     r"bad.txt:3: duplicate utterance id 'LA_T_1' \(first on line 1\)"),
    ("", r"bad.txt: protocol file is empty"),
])
def test_cm_protocol_errors(tmp_path, text, pattern):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ProtocolError, match=pattern):
        read_cm_protocol(path)


@pytest.mark.parametrize("text, pattern", [
    ("LA_0001 LA_D_1 bonafide target extra\n", r"bad.txt:1: expected 4 fields, got 5"),
    ("LA_0001 LA_D_1 bonafide impostor\n", r"bad.txt:1: unknown trial key 'impostor'"),
    ("LA_0001 LA_D_1 A01 target\n", r"bad.txt:1: key 'target' does not match source 'A01'"),
])
def test_trial_errors(tmp_path, text, pattern):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ProtocolError, match=pattern):
        read_sasv_trials(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ProtocolError, match=r"nothing.txt: protocol file not found"):
        read_sasv_trials(tmp_path / "nothing.txt")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 10)
    with pytest.raises(ProtocolError, match="binary.txt: not a text protocol file"):
        read_cm_protocol(binary)


def test_enrollment_list_errors(tmp_path):
    first, second = tmp_path / "female.txt", tmp_path / "male.txt"
    first.write_text("LA_0001 LA_D_1,LA_D_2\n")
    second.write_text("LA_0002 LA_D_2\n")
    with pytest.raises(ProtocolError, match=r"male.txt:1: duplicate utterance id 'LA_D_2'"):
        read_enrollment_utterances([first, second])
    second.write_text("LA_0001 LA_D_3\n")
    with pytest.raises(ProtocolError, match=r"male.txt:1: speaker 'LA_0001' is listed twice"):
        read_enrollment_utterances([first, second])


def toy_speakers() -> dict:
    return speaker_utterances(read_cm_protocol_lines([
        f"S{s} U{s}_{i} - - bonafide" for s in range(4) for i in range(3)] + [
        f"S{s} V{s}_{i} - A0{i + 1} spoof" for s in range(4) for i in range(2)]))


def read_cm_protocol_lines(lines: list[str]):
    from data.protocols import CMEntry
    return [CMEntry(*(line.split()[i] for i in (0, 1, 3, 4))) for line in lines]


def owner(utterance: str) -> str:
    return "S" + utterance[1:].split("_")[0]


def test_four_class_sampler_draws_each_kind_correctly():
    sampler = TrialSampler(toy_speakers(), "four_class")
    kinds = Counter()
    for index in range(4000):
        trial = sampler.draw(trial_rng(7, 0, index))
        kinds[trial.kind] += 1
        enrolled, tested = trial.enrollment, trial.test
        assert enrolled.startswith("U"), "enrollment is always bona fide"
        if trial.kind == TARGET_BONAFIDE:
            assert (tested.startswith("U") and owner(tested) == owner(enrolled) and tested != enrolled
                    and trial.label == 0)
        elif trial.kind == NONTARGET_BONAFIDE:
            assert tested.startswith("U") and owner(tested) != owner(enrolled) and trial.label == 1
        elif trial.kind == TARGET_SPOOF:
            assert tested.startswith("V") and owner(tested) == owner(enrolled) and trial.label == 1
        else:
            assert trial.kind == NONTARGET_SPOOF
            assert tested.startswith("V") and owner(tested) != owner(enrolled) and trial.label == 1
    assert set(kinds) == {TARGET_BONAFIDE, NONTARGET_BONAFIDE, TARGET_SPOOF, NONTARGET_SPOOF}
    assert all(abs(count / 4000 - 0.25) < 0.03 for count in kinds.values())


def test_two_class_sampler_proportions():
    sampler = TrialSampler(toy_speakers(), "two_class")
    kinds = Counter(sampler.draw(trial_rng(1, 2, i)).kind for i in range(4000))
    assert set(kinds) == {TARGET_BONAFIDE, ZERO_EFFORT, TARGET_SPOOF}
    assert abs(kinds[TARGET_BONAFIDE] / 4000 - 0.5) < 0.03
    assert abs(kinds[ZERO_EFFORT] / 4000 - 0.25) < 0.03


def test_trials_are_a_pure_function_of_seed_epoch_index():
    sampler = TrialSampler(toy_speakers(), "four_class")
    first = [sampler.draw(trial_rng(3, 1, i)) for i in range(50)]
    again = [sampler.draw(trial_rng(3, 1, i)) for i in reversed(range(50))][::-1]
    other_epoch = [sampler.draw(trial_rng(3, 2, i)) for i in range(50)]
    assert first == again and first != other_epoch


def test_extra_bonafide_speakers_only_in_bonafide_trials():
    extra = {"F0": {"bonafide": ["F0_a", "F0_b"], "spoof": ["F0_fake"]}}
    sampler = TrialSampler(toy_speakers(), "four_class", bonafide_speakers=extra)
    seen_extra_bona = False
    for index in range(3000):
        trial = sampler.draw(trial_rng(0, 0, index))
        assert trial.test != "F0_fake"
        if trial.kind in (TARGET_SPOOF, NONTARGET_SPOOF):
            assert not trial.test.startswith("F0")
        seen_extra_bona |= trial.enrollment.startswith("F0") or trial.test.startswith("F0")
    assert seen_extra_bona


def test_sampler_rejects_unusable_protocols():
    with pytest.raises(ProtocolError, match="both bona fide and spoofed"):
        TrialSampler({"A": {"bonafide": ["a1", "a2"], "spoof": []}, "B": {"bonafide": ["b1"], "spoof": []}},
                     "four_class")
    with pytest.raises(ValueError, match="unknown trial sampling"):
        TrialSampler(toy_speakers(), "three_class")
