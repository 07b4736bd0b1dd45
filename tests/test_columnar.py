"""The fast (pyarrow) reader of ASVspoof 5 score and key files against the line reader it accelerates.

For any file, the fast reader either returns exactly what the line reader returns, or declines (None) so
that the line reader decides: it must never accept a file the line reader refuses, nor read it otherwise.
Files are small, well-formed Track 1 / Track 2 pairs with one or two hostile edits each.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.protocols import ProtocolError
from scoring import asvspoof5_files
from scoring.asvspoof5_files import read_track1, read_track2

SCORE_HEADER = {1: ["filename", "cm-score"], 2: ["spk", "filename", "cm-score", "asv-score", "sasv-score"]}
KEY_HEADER = {1: ["filename", "cm-label", "attack_anon", "codec"],
              2: ["spk", "filename", "cm-label", "asv-label", "attack_anon", "codec", "track_2_tag"]}
N_TRIALS = 8
# Field texts the line reader refuses or reads specially; each must make the fast reader decline or agree.
HOSTILE_FIELDS = ["1_5", "inf", "-Infinity", "nan", "NaN", "\u0661.5", "0x1p3", " 1.0", "1.0 ", "1e400", "1e-400",
                  "", "-", "+.5", "5.", "1.5e+07", "\u00a01", "1,5", "target", "spoof", "bonafide", "A17", "dummy",
                  "\ufeff1.0", "E_0000000001", "C99", "\u200b"]
EDITS = ["field", "drop_line", "repeat_line", "blank_line", "crlf", "bom", "extra_field", "doubled_tab",
         "swap_lines", "header_field"]


def _files(track: int, seed: int) -> tuple[list[list[str]], list[list[str]]]:
    """(score rows, key rows), headers first, keys in another order than the scores."""
    rng = np.random.default_rng(seed)
    keys = (["target", "nontarget"] * N_TRIALS)[:N_TRIALS // 2] + ["spoof"] * (N_TRIALS - N_TRIALS // 2)
    rows_score, rows_key = [SCORE_HEADER[track]], [KEY_HEADER[track]]
    scores = rng.normal(size=(N_TRIALS, 3)).round(int(rng.integers(1, 6)))
    for number, key in enumerate(keys):
        speaker, name = f"E_{number % 3:04d}", f"E_{number:010d}"
        cm_label = "spoof" if key == "spoof" else "bonafide"
        attack = f"A{17 + number % 3}" if key == "spoof" else "bonafide"
        codec = ["-", "C01", "C02"][number % 3]
        texts = [repr(float(value)) for value in scores[number]]
        if track == 1:
            rows_score.append([name, texts[0]])
            rows_key.append([name, cm_label, attack, codec])
        else:
            rows_score.append([speaker, name, *texts])
            rows_key.append([speaker, name, cm_label, key, attack, codec, "trial"])
    order = [0, *(1 + rng.permutation(N_TRIALS))]
    return rows_score, [rows_key[i] for i in order]


def _text(rows: list[list[str]], separator: str, edit: str, field: str, at: int, column: int) -> str:
    rows = [list(row) for row in rows]
    line = 1 + at % (len(rows) - 1)
    newline = "\n"
    if edit == "field":
        rows[line][column % len(rows[line])] = field
    elif edit == "header_field":
        rows[0][column % len(rows[0])] = field or "x"
    elif edit == "drop_line":
        del rows[line]
    elif edit == "repeat_line":
        rows.insert(line, rows[line])
    elif edit == "extra_field":
        rows[line].append(field or "x")
    elif edit == "swap_lines":
        other = 1 + (at + 1) % (len(rows) - 1)
        rows[line], rows[other] = rows[other], rows[line]
    lines = [separator.join(row) for row in rows]
    if edit == "blank_line":
        lines.insert(line, "")
    if edit == "doubled_tab":
        lines[line] = lines[line].replace(separator, separator * 2, 1)
    if edit == "crlf":
        newline = "\r\n"
    text = newline.join(lines) + newline
    return "\ufeff" + text if edit == "bom" else text


def _line_reader(monkeypatch: pytest.MonkeyPatch, track: int, scores: Path, keys: Path):
    """The line reader's result, or the ProtocolError it raises."""
    with monkeypatch.context() as patch:
        patch.setattr(asvspoof5_files, "_read_track1_columnar", lambda *args: None)
        patch.setattr(asvspoof5_files, "_read_track2_columnar", lambda *args: None)
        try:
            return (read_track2 if track == 2 else read_track1)(scores, keys)
        except ProtocolError as error:
            return error


def _fast_reader(track: int, scores: Path, keys: Path):
    if track == 2:
        return asvspoof5_files._read_track2_columnar(scores, keys, "sasv-score", asvspoof5_files._track2_keys(keys))
    return asvspoof5_files._read_track1_columnar(scores, keys)


def _same(fast, slow) -> bool:
    for name in ("cm_keys", "asv_keys", "sasv", "cm", "asv", "attack", "codec"):
        ours, theirs = getattr(fast, name), getattr(slow, name)
        if (ours is None) != (theirs is None):
            return False
        if ours is not None and not (ours.dtype == theirs.dtype and np.array_equal(ours, theirs)):
            return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(track=st.sampled_from([1, 2]), seed=st.integers(0, 50), which=st.sampled_from(["scores", "keys", "both"]),
       edit=st.sampled_from(EDITS), field=st.sampled_from(HOSTILE_FIELDS), at=st.integers(0, 20),
       column=st.integers(0, 6))
@pytest.mark.slow
def test_fast_reader_agrees_with_the_line_reader_or_declines(tmp_path_factory, monkeypatch, track, seed, which,
                                                              edit, field, at, column):
    folder = tmp_path_factory.mktemp("columnar")
    score_rows, key_rows = _files(track, seed)
    scores, keys = folder / "scores.tsv", folder / "keys.txt"
    clean = {"scores": "\t".join, "keys": " ".join}
    scores.write_text(_text(score_rows, "\t", edit, field, at, column) if which in ("scores", "both")
                      else "\n".join(map(clean["scores"], score_rows)) + "\n", encoding="utf-8")
    keys.write_text(_text(key_rows, " ", edit, field, at + 3, column) if which in ("keys", "both")
                    else "\n".join(map(clean["keys"], key_rows)) + "\n", encoding="utf-8")
    fast = _fast_reader(track, scores, keys)
    slow = _line_reader(monkeypatch, track, scores, keys)
    if fast is not None:
        assert not isinstance(slow, ProtocolError), f"the fast reader accepted what the line reader refuses: {slow}"
        assert _same(fast, slow)


@pytest.mark.parametrize("track", [1, 2])
def test_fast_reader_reads_clean_files(tmp_path, track):
    """The property above must not pass by the fast reader always declining."""
    score_rows, key_rows = _files(track, 0)
    scores, keys = tmp_path / "scores.tsv", tmp_path / "keys.txt"
    scores.write_text("\n".join("\t".join(row) for row in score_rows) + "\n")
    keys.write_text("\n".join(" ".join(row) for row in key_rows) + "\n")
    fast = _fast_reader(track, scores, keys)
    assert fast is not None
    assert fast.cm.size == N_TRIALS
    # Key-file order, scores parsed from their text.
    expected = {row[0 if track == 1 else 1]: float(row[1 if track == 1 else 2]) for row in score_rows[1:]}
    names = [row[0 if track == 1 else 1] for row in key_rows[1:]]
    assert fast.cm.tolist() == [expected[name] for name in names]
