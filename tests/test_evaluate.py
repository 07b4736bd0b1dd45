"""evaluate.py and scoring/report.py: the official package's golden numbers through the ASVspoof 5 file readers,
per-attack cells against metrics computed directly on the subset, the pooled row against sasv_metrics, bad input
(one line, nothing written), the plots, and the report main.py writes on the tiny corpus."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_run import run_main_here, run_script, tiny_corpus, write_config

from data.audio import load_waveform
from data.protocols import ProtocolError, read_sasv_trials
from metrics import min_adcf, sasv_eers, track1_metrics, track2_metrics
from models.build import load_system
from runtime.config import load_config
from scoring.asvspoof5_files import read_track1, read_track2
from scoring.inputs import scoring_inputs
from scoring.report import build_report
from scoring.sasv import sasv_metrics

PNG = b"\x89PNG\r\n\x1a\n"
TOLERANCE = {"a_dcf": 1e-9, "min_dcf": 1e-9, "eer": 1e-9, "act_dcf": 1e-9, "min_tdcf": 1e-9, "cllr": 1e-6,
             "t_eer": 1e-8}  # README 6b; the package's t-EER (percent, 1e-6) as a fraction


@pytest.fixture(scope="module")
def golden(fixtures):
    with np.load(fixtures / "golden" / "asvspoof5_metrics.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    with open(fixtures / "golden" / "asvspoof5_metrics.json") as handle:
        return arrays, json.load(handle)


def _tsv(path: Path, header: list[str], columns: list) -> Path:
    """A tab-separated file written here, independently of the writer under test."""
    lines = ["\t".join(header)] + ["\t".join(v if isinstance(v, str) else repr(float(v)) for v in row)
                                   for row in zip(*columns)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def track_files(golden, tmp_path_factory):
    """The golden trials as Track 2 and Track 1 score and key files (shuffled key order, scores in file order)."""
    t, _ = golden
    folder = tmp_path_factory.mktemp("asvspoof5")
    order = np.random.default_rng(1).permutation(t["filename"].size)
    files = {
        "sasv": _tsv(folder / "sasv.tsv", ["spk", "filename", "cm-score", "asv-score", "sasv-score"],
                     [t["spk"], t["filename"], t["cm_score"], t["asv_score"], t["sasv_score"]]),
        "sasv_keys": _tsv(folder / "sasv_keys.tsv", ["spk", "filename", "cm-label", "asv-label", "codec", "attack"],
                          [t[name][order] for name in ("spk", "filename", "cm_key", "asv_key", "codec", "attack")]),
        # The organisers' ASV scores in the package's --asv_org format: only asv-score filled (here the
        # system's own ASV scores, as in the golden `track2_pooled_with_asv_org`).
        "asv_org": _tsv(folder / "asv_org.tsv", ["spk", "filename", "cm-score", "asv-score", "sasv-score"],
                        [t["spk"], t["filename"], ["-"] * t["filename"].size, t["asv_score"],
                         ["-"] * t["filename"].size]),
        "cm": _tsv(folder / "cm.tsv", ["filename", "cm-score"], [t["filename"], t["cm_score"]]),
        "cm_keys": _tsv(folder / "cm_keys.tsv", ["filename", "cm-label", "attack", "codec"],
                        [t[name][order] for name in ("filename", "cm_key", "attack", "codec")]),
    }
    return folder, files


def evaluate(capsys, monkeypatch, *argv: str) -> tuple[int, str, str]:
    return run_script("evaluate.py", list(argv), capsys, monkeypatch)


def _golden(values: dict, name: str) -> float | None:
    """A golden value under our name: the package's t-EER is in percent, ours a fraction."""
    return values["t_eer_percent"] / 100 if name == "t_eer" else values[name]


def _check(ours: dict, theirs: dict, names: tuple[str, ...]) -> None:
    for name in names:
        assert ours[name] == pytest.approx(_golden(theirs, name), abs=TOLERANCE[name], rel=0), name


def _cell(table: dict, row: str, column: str) -> dict:
    """One cell of a golden `*_full` table, {metric: value}."""
    i, j = table["attacks"].index(row), table["codecs"].index(column)
    return {name: values[i][j] for name, values in table.items() if name not in ("attacks", "codecs")}


@pytest.mark.parametrize("track", ["track2", "track1"])
def test_golden_through_evaluate(track_files, golden, track, capsys, monkeypatch, tmp_path):
    _, expected = golden
    _, files = track_files
    args = ["--sasv", str(files["sasv"]), "--sasv_keys", str(files["sasv_keys"])] if track == "track2" else \
        ["--cm", str(files["cm"]), "--cm_keys", str(files["cm_keys"])]
    status, out, err = evaluate(capsys, monkeypatch, *args, "--out", str(tmp_path / "out"))
    assert status == 0, err
    assert out.startswith("pooled: ") and out.count("\n") == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    names = ("a_dcf", "min_tdcf", "t_eer") if track == "track2" else ()
    cm_names = ("min_dcf", "eer", "cllr", "act_dcf")
    _check(report["pooled"], expected["track2_pooled"], names)
    _check(report["pooled"], expected["track1_pooled"], cm_names)  # Track 2 files carry the CM scores too
    for full, metric_names in (("track2_full", names), ("track1_full", cm_names)):
        table = expected[full]
        for attack in table["attacks"][1:]:
            _check(report["per_attack"][attack], _cell(table, attack, "pooled"), metric_names)
        for codec in table["codecs"][1:]:
            _check(report["per_codec"][codec], _cell(table, "pooled", codec), metric_names)
        # The package's whole attack x codec table, cell by cell (an empty cell: null there, None here).
        full_table = report["per_attack_codec"]
        assert list(full_table) == table["attacks"]
        for attack in table["attacks"]:
            assert list(full_table[attack]) == table["codecs"]
            for codec in table["codecs"]:
                theirs = _cell(table, attack, codec)
                if any(value is None for value in theirs.values()):
                    assert all(full_table[attack][codec][name] is None for name in metric_names)
                else:
                    _check(full_table[attack][codec], theirs, metric_names)
    table = expected["track1_full"]
    assert sorted(report["per_attack"]) == sorted(table["attacks"][1:])
    assert sorted(report["per_codec"]) == sorted(table["codecs"][1:])


def _direct_metrics(trials, keep: np.ndarray) -> dict:
    """Every report metric computed directly, by the public metric functions, on the trials in `keep`."""
    sasv, cm, asv, keys, cm_keys = (trials.sasv[keep], trials.cm[keep], trials.asv[keep], trials.asv_keys[keep],
                                    trials.cm_keys[keep])
    return {**sasv_eers(sasv, keys), "min_a_dcf": min_adcf(sasv, keys)[0],
            **track2_metrics(cm, asv, sasv, cm_keys, keys), **track1_metrics(cm, cm_keys),
            "n_target": int(np.sum(keys == "target")), "n_nontarget": int(np.sum(keys == "nontarget")),
            "n_spoof": int(np.sum(keys == "spoof"))}


def test_attack_and_codec_cells_equal_metrics_on_the_subset(track_files):
    """Cells computed from the report's shared sorts equal the metric functions called on the cell's trials."""
    _, files = track_files
    trials = read_track2(files["sasv"], files["sasv_keys"])
    report = build_report(trials)
    spoof = trials.cm_keys == "spoof"
    attacks, codecs = sorted(set(trials.attack[spoof])), sorted(set(trials.codec))
    attack, codec = attacks[len(attacks) // 2], codecs[-1]
    bona_fide_or_attack = ~spoof | (trials.attack == attack)  # all bona fide + the attack's spoofs
    cases = {("per_attack", attack): bona_fide_or_attack, ("per_codec", codec): trials.codec == codec,
             ("pooled", None): np.ones(len(trials), dtype=bool)}
    for (group, name), keep in cases.items():
        cell = report[group] if name is None else report[group][name]
        expected = _direct_metrics(trials, keep)
        assert {key: cell[key] for key in expected} == expected, (group, name)
    cell = report["per_attack_codec"][attack][codec]
    expected = _direct_metrics(trials, bona_fide_or_attack & (trials.codec == codec))
    assert {key: cell[key] for key in expected} == expected


@pytest.mark.slow
def test_organisers_asv_scores_give_each_cell_its_tdcf_rates(track_files, golden, capsys, monkeypatch, tmp_path):
    """--asv_org: the pooled min t-DCF is the package's with asv_scores_org, and each cell's uses the organisers'
    ASV scores of that cell (threshold from its codec's bona fide trials, spoof rate from its spoofs)."""
    _, expected = golden
    _, files = track_files
    status, _, err = evaluate(capsys, monkeypatch, "--sasv", str(files["sasv"]), "--sasv_keys",
                              str(files["sasv_keys"]), "--asv_org", str(files["asv_org"]), "--out", str(tmp_path))
    assert status == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    _check(report["pooled"], expected["track2_pooled_with_asv_org"], ("a_dcf", "min_tdcf", "t_eer"))
    assert report["tdcf_asv_rates"] == "organisers' ASV scores per cell"
    trials = read_track2(files["sasv"], files["sasv_keys"])
    spoof = trials.cm_keys == "spoof"
    attack, codec = sorted(set(trials.attack[spoof]))[0], sorted(set(trials.codec))[-1]
    keep = (~spoof | (trials.attack == attack)) & (trials.codec == codec)
    direct = track2_metrics(trials.cm[keep], trials.asv[keep], trials.sasv[keep], trials.cm_keys[keep],
                            trials.asv_keys[keep], asv_scores_org=trials.asv[keep])
    assert report["per_attack_codec"][attack][codec]["min_tdcf"] == direct["min_tdcf"]
    # Without them, the package's built-in pooled rates: another number.
    assert report["pooled"]["min_tdcf"] != pytest.approx(expected["track2_pooled"]["min_tdcf"], abs=1e-6)


def test_organisers_asv_scores_are_refused_without_the_cm_and_asv_parts(track_files, golden, capsys, monkeypatch,
                                                                       tmp_path):
    t, _ = golden
    _, files = track_files
    sasv_only = _tsv(tmp_path / "sasv_only.tsv", ["spk", "filename", "cm-score", "asv-score", "sasv-score"],
                     [t["spk"], t["filename"], ["-"] * t["filename"].size, ["-"] * t["filename"].size,
                      t["sasv_score"]])
    status, _, err = evaluate(capsys, monkeypatch, "--sasv", str(sasv_only), "--sasv_keys", str(files["sasv_keys"]),
                              "--asv_org", str(files["asv_org"]), "--out", str(tmp_path / "out"))
    assert status == 2 and err.startswith(f"error: {sasv_only}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    # An organisers' file without ASV scores names itself.
    status, _, err = evaluate(capsys, monkeypatch, "--sasv", str(files["sasv"]), "--sasv_keys",
                              str(files["sasv_keys"]), "--asv_org", str(sasv_only), "--out", str(tmp_path / "out"))
    assert status == 2 and err.startswith(f"error: {sasv_only}:2") and "asv-score" in err, err


@pytest.mark.slow
def test_plots_drawn_in_a_child_process_are_the_same_files(track_files, capsys, monkeypatch, tmp_path):
    """evaluate.py draws the plots of a large report in a forked process beside the tables (PLOTS_BESIDE_FROM,
    lowered here): the same PNG bytes as drawn in-process, and the child's errors stop the run the same way."""
    import scoring.report

    _, files = track_files
    argv = ["--sasv", str(files["sasv"]), "--sasv_keys", str(files["sasv_keys"])]
    status, _, err = evaluate(capsys, monkeypatch, *argv, "--out", str(tmp_path / "here"))
    assert status == 0, err
    monkeypatch.setattr(scoring.report, "PLOTS_BESIDE_FROM", 0)
    children = []
    start = scoring.report.forked.start
    monkeypatch.setattr(scoring.report.forked, "start", lambda function: children.append(start(function)) or
                        children[-1])
    status, _, err = evaluate(capsys, monkeypatch, *argv, "--out", str(tmp_path / "child"))
    assert status == 0 and len(children) == 1 and children[0] is not None, err
    plots = sorted(path.name for path in (tmp_path / "here").glob("*.png"))
    assert plots and plots == sorted(path.name for path in (tmp_path / "child").glob("*.png"))
    for name in plots:
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "child" / name).read_bytes(), name
    bad_csv = tmp_path / "metrics.csv"
    bad_csv.write_text("epoch,step,lr,train_loss\n1,3,0.001,lots\n")
    status, _, err = evaluate(capsys, monkeypatch, *argv, "--metrics_csv", str(bad_csv), "--out",
                              str(tmp_path / "child"))
    assert status == 2 and err.startswith(f"error: {bad_csv}:2") and err.count("\n") == 1, err
    assert sorted(path.name for path in (tmp_path / "child").glob("*.png")) == plots  # the earlier report stays


@pytest.mark.slow
def test_a_report_without_plots_holds_the_tables_alone(track_files, tmp_path):
    """report_plots: false: the same tables, no PNG (an earlier report's plots deleted), and a bad metrics.csv
    still refused."""
    from scoring.report import write_report

    _, files = track_files
    trials = read_track2(files["sasv"], files["sasv_keys"])
    drawn = write_report(tmp_path / "out", trials)
    assert list((tmp_path / "out").glob("*.png"))
    tables = write_report(tmp_path / "out", trials, plots=False)
    assert tables == drawn
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["report.csv", "report.json", "report.md"]
    bad_csv = tmp_path / "metrics.csv"
    bad_csv.write_text("epoch,step,lr,train_loss\n1,3,0.001,lots\n")
    with pytest.raises(ProtocolError, match="metrics.csv:2"):
        write_report(tmp_path / "out", trials, metrics_csv=bad_csv, plots=False)


def _toolkit_files(folder: Path, skipped: int | None = None) -> tuple[Path, Path, np.ndarray, list[str]]:
    """A trial list `SPK UTT ATTACK KEY` and scores `SPK UTT KEY score` of 60 trials (in trial order, as the
    toolkit writes them)."""
    rng = np.random.default_rng(5)
    keys = ["target"] * 20 + ["nontarget"] * 20 + ["spoof"] * 20
    attacks = ["bonafide"] * 40 + ["A07", "A08"] * 10
    scores = rng.normal(size=60) + np.array([2.0 if k == "target" else 0.0 for k in keys])
    rows = [(f"LA_{i % 4:04d}", f"LA_E_{i:07d}", attack, key) for i, (attack, key) in enumerate(zip(attacks, keys))]
    trial_path = folder / "trials.txt"
    trial_path.write_text("".join(" ".join(row) + "\n" for row in rows))
    texts = ["nan" if i == skipped else repr(float(s)) for i, s in enumerate(scores)]
    score_path = folder / "eval.txt"
    score_path.write_text("".join(f"{r[0]} {r[1]} {r[3]} {t}\n" for r, t in zip(rows, texts)))
    return trial_path, score_path, scores, keys


def test_pooled_equals_sasv_metrics_and_skipped_trials_are_left_out(tmp_path, capsys, monkeypatch):
    trial_path, score_path, scores, keys = _toolkit_files(tmp_path, skipped=3)
    status, out, err = evaluate(capsys, monkeypatch, "--sasv_scores", str(score_path), "--trials", str(trial_path),
                                "--out", str(tmp_path / "out"))
    assert status == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    skipped = np.arange(60) == 3
    expected = sasv_metrics(np.where(skipped, np.nan, scores), keys, skipped)
    assert {name: report["pooled"][name] for name in expected} == expected
    assert report["n_skipped_trials"] == 1 and report["pooled"]["n_target"] == 19
    assert set(report["metrics"]) == {"sasv_eer", "sv_eer", "spf_eer", "min_a_dcf", "a_dcf"}
    assert sorted(report["per_attack"]) == ["A07", "A08"] and report["per_codec"] == {}
    assert f"SASV-EER {100 * expected['sasv_eer']:.2f}%" in out
    # The markdown table: the attacks as rows, then the pooled row.
    table = [line for line in (tmp_path / "out" / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table] == ["attack", "---", "A07", "A08", "**pooled**"]
    with open(tmp_path / "out" / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["group"], row["condition"]) for row in rows] == [("pooled", "pooled"), ("attack", "A07"),
                                                                  ("attack", "A08")]
    assert float(rows[0]["sasv_eer"]) == expected["sasv_eer"]


def test_cm_protocol_attack_labels_must_agree_with_the_trial_list(tmp_path, capsys, monkeypatch):
    trial_path, score_path, _, _ = _toolkit_files(tmp_path)
    trials = read_sasv_trials(trial_path)
    protocol = tmp_path / "cm.txt"

    def run(attack_of) -> tuple[int, str]:
        protocol.write_text("".join(f"{t.speaker} {t.utterance} - {'-' if t.key != 'spoof' else attack_of(t)} "
                                    f"{'spoof' if t.key == 'spoof' else 'bonafide'}\n" for t in trials))
        status, _, err = evaluate(capsys, monkeypatch, "--sasv_scores", str(score_path), "--trials", str(trial_path),
                                  "--cm_protocol", str(protocol), "--out", str(tmp_path / "out"))
        return status, err

    status, err = run(lambda t: t.attack)
    assert status == 0, err
    assert sorted(json.loads((tmp_path / "out" / "report.json").read_text())["per_attack"]) == ["A07", "A08"]
    (tmp_path / "out" / "report.json").unlink()
    status, err = run(lambda t: "A1" + t.attack[-1])  # a relabelled protocol would silently rename the rows
    first = next(number for number, t in enumerate(trials, start=1) if t.key == "spoof")
    assert status == 2 and err.strip() == (f"error: {trial_path}:{first}: attack {trials[first - 1].attack!r}, but "
                                           f"{trials[first - 1].utterance} is attack "
                                           f"'A1{trials[first - 1].attack[-1]}' in {protocol}")
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.slow
def test_plots_are_pngs(track_files, tmp_path, capsys, monkeypatch):
    _, files = track_files
    metrics_csv = tmp_path / "metrics.csv"
    metrics_csv.write_text("epoch,step,lr,train_loss,dev_sasv_eer,dev_sv_eer,dev_spf_eer\n"
                           "1,3,0.001,2.5,0.4,0.3,0.5\n2,6,0.0005,1.5,,,\n3,9,0.00025,1.0,0.2,0.1,0.3\n")
    status, _, err = evaluate(capsys, monkeypatch, "--sasv", str(files["sasv"]), "--sasv_keys", str(files["sasv_keys"]),
                              "--metrics_csv", str(metrics_csv), "--out", str(tmp_path / "out"))
    assert status == 0, err
    images = sorted(path.name for path in (tmp_path / "out").glob("*.png"))
    assert images == ["adcf.png", "det_cm.png", "det_sasv.png", "hist_cm.png", "hist_sasv.png", "training.png"]
    for name in images:
        content = (tmp_path / "out" / name).read_bytes()
        assert content.startswith(PNG) and len(content) > 5000, name
    assert not [path for path in (tmp_path / "out").iterdir() if path.name.startswith(".")]


def _edit(path: Path, folder: Path, change) -> Path:
    lines = path.read_text().splitlines()
    changed = folder / path.name
    changed.write_text("\n".join(change(lines)) + "\n")
    return changed


def _set_field(lines: list[str], number: int, column: int, value: str) -> list[str]:
    fields = lines[number - 1].split("\t")
    fields[column] = value
    return lines[:number - 1] + ["\t".join(fields)] + lines[number:]


BAD_TRACK2 = {
    "missing trial": ("sasv", lambda lines: lines[:5] + lines[6:], "no score for trial E_"),
    "duplicated trial": ("sasv", lambda lines: lines + [lines[7]],
                         lambda lines: f".tsv:{len(lines) + 1}: duplicate trial {' '.join(lines[7].split()[:2])} "
                                       f"(first on line 8)"),
    "unknown trial": ("sasv", lambda lines: lines[:1] + ["X_1\tE_9\t1.0\t1.0\t2.0"] + lines[1:],
                      "sasv.tsv:2: trial X_1 E_9 is not in"),
    "non-numeric score": ("sasv", lambda lines: _set_field(lines, 4, 4, "high"), "sasv.tsv:4: sasv-score 'high'"),
    "non-finite score": ("sasv", lambda lines: _set_field(lines, 9, 2, "inf"), "sasv.tsv:9: cm-score 'inf' is not"),
    "header mismatch": ("sasv", lambda lines: ["spk\tfilename\tcm\tasv\tsasv"] + lines[1:], "sasv.tsv:1: "),
    "absent part on one line": ("sasv", lambda lines: _set_field(lines, 6, 3, "-"), "sasv.tsv:6: asv-score is '-'"),
    "short line": ("sasv", lambda lines: lines[:2] + [lines[2].rsplit("\t", 1)[0]] + lines[3:], "sasv.tsv:3: "),
    "unknown key label": ("sasv_keys", lambda lines: _set_field(lines, 2, 3, "impostor"),
                          "sasv_keys.tsv:2: unknown asv-label 'impostor'"),
    "empty score file": ("sasv", lambda lines: [], "sasv.tsv: Track 2 score file is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRACK2))
def test_bad_track2_input_one_line_and_nothing_written(track_files, case, tmp_path, capsys, monkeypatch):
    _, files = track_files
    which, change, needle = BAD_TRACK2[case]
    if callable(needle):  # derived from the fixture's own lines
        needle = needle(files[which].read_text().splitlines())
    paths = dict(files, **{which: _edit(files[which], tmp_path, change)})
    status, out, err = evaluate(capsys, monkeypatch, "--sasv", str(paths["sasv"]), "--sasv_keys",
                                str(paths["sasv_keys"]), "--out", str(tmp_path / "out"))
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and out == ""


def test_bad_toolkit_and_metrics_csv_input(tmp_path, capsys, monkeypatch):
    trial_path, score_path, _, _ = _toolkit_files(tmp_path)
    wrong_key = _edit(score_path, tmp_path / "edited" if (tmp_path / "edited").mkdir() is None else tmp_path,
                      lambda lines: [lines[0].replace(" target ", " nontarget ")] + lines[1:])
    bad_csv = tmp_path / "metrics.csv"
    bad_csv.write_text("epoch,step,lr,train_loss\n1,3,0.001,lots\n")
    cases = [(["--sasv_scores", str(wrong_key), "--trials", str(trial_path)],
              "eval.txt:1: expected 'LA_0000 LA_E_0000000 target <score>'"),
             (["--sasv_scores", str(score_path), "--trials", str(trial_path), "--metrics_csv", str(bad_csv)],
              "metrics.csv:2: train_loss 'lots' is not a number"),
             (["--sasv_scores", str(tmp_path / "none.txt"), "--trials", str(trial_path)], "none.txt: SASV score file")]
    for argv, needle in cases:
        status, _, err = evaluate(capsys, monkeypatch, *argv, "--out", str(tmp_path / "out"))
        assert status == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["1_5", "\u0661.5", "0x1p3", "1.5.0", "infinity"])
def test_numbers_in_plain_notation_only(tmp_path, capsys, monkeypatch, track_files, text):
    """float() reads '1_5' as 15 and Arabic-Indic digits as digits: every reader takes plain decimal or
    scientific notation only, and names the file, line and field otherwise."""
    trial_path, score_path, _, _ = _toolkit_files(tmp_path)
    lines = score_path.read_text().splitlines()
    toolkit = tmp_path / "toolkit.txt"
    toolkit.write_text("\n".join([*lines[:4], " ".join([*lines[4].split()[:3], text]), *lines[5:]]) + "\n")
    metrics_csv = tmp_path / "metrics.csv"
    metrics_csv.write_text(f"epoch,step,lr,train_loss\n1,3,0.001,0.5\n2,6,{text},0.4\n")
    _, files = track_files
    track2 = tmp_path / "track2.tsv"
    rows = files["sasv"].read_text().splitlines()
    fields = rows[7].split("\t")
    track2.write_text("\n".join([*rows[:7], "\t".join([*fields[:4], text]), *rows[8:]]) + "\n")
    cases = [(["--sasv_scores", str(toolkit), "--trials", str(trial_path)], "toolkit.txt:5:"),
             (["--sasv_scores", str(score_path), "--trials", str(trial_path), "--metrics_csv", str(metrics_csv)],
              "metrics.csv:3:"),
             (["--sasv", str(track2), "--sasv_keys", str(files["sasv_keys"])], "track2.tsv:8:")]
    for argv, place in cases:
        status, _, err = evaluate(capsys, monkeypatch, *argv, "--out", str(tmp_path / "out"))
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and place in lines[0] and repr(text) in lines[0], err
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_main_writes_the_report_and_the_track2_files(tmp_path_factory, tmp_path, capsys, monkeypatch):
    corpus = tiny_corpus(tmp_path_factory)
    config = write_config(tmp_path / "tiny.conf", corpus, epoch=1, report_plots=True)
    result = run_main_here(config, tmp_path / "exp")
    assert result.returncode == 0, result.stderr
    lines = [line.split(":")[0].split(" (")[0] for line in result.stdout.splitlines()]
    assert lines == ["epoch 1", "eval", "calibration", "done"]
    experiment = tmp_path / "exp" / "tiny"
    summary = json.loads((experiment / "metrics_eval.json").read_text())
    report = json.loads((experiment / "report" / "report.json").read_text())
    assert {name: report["pooled"][name] for name in ("sasv_eer", "sv_eer", "spf_eer", "min_a_dcf")} == \
        {name: summary[name] for name in ("sasv_eer", "sv_eer", "spf_eer", "min_a_dcf")}
    assert sorted(path.name for path in (experiment / "report").iterdir()) == [
        "adcf.png", "det_cm.png", "det_sasv.png", "hist_cm.png", "hist_sasv.png", "report.csv", "report.json",
        "report.md", "track2_keys.tsv", "track2_scores.tsv", "training.png"]
    assert all(np.isfinite(report["pooled"][name]) for name in ("min_tdcf", "t_eer", "eer", "min_dcf"))
    assert sorted(path.name for path in (experiment / "scores").iterdir()) == ["dev_epoch_001.txt", "eval.txt"]
    # The official Track 2 files read back through evaluate.py give the same pooled numbers.
    report_dir = experiment / "report"
    status, _, err = evaluate(capsys, monkeypatch, "--sasv", str(report_dir / "track2_scores.tsv"),
                              "--sasv_keys", str(report_dir / "track2_keys.tsv"), "--out", str(tmp_path / "again"))
    assert status == 0, err
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["pooled"] == report["pooled"] and again["per_attack"] == report["per_attack"]
    _check_track2_parts(experiment, report_dir / "track2_scores.tsv")


def _check_track2_parts(experiment: Path, track2: Path) -> None:
    """cm-score and asv-score of the joint model, recomputed here from the networks of the best checkpoint:
    the CM's bona fide logit of the test utterance and the cosine of the two ASV embeddings."""
    config = load_config(experiment / "config.conf")
    model, _, _ = load_system(config, torch.device("cpu"), {"model": str(next(experiment.glob("weights/epoch=*")))},
                              need=("asv", "cm", "backend"))
    inputs = scoring_inputs(config, "eval")
    rows = [line.split("\t") for line in track2.read_text().splitlines()[1:]]
    for trial, row in list(zip(inputs.trials, rows))[:3]:
        assert row[:2] == [trial.speaker, trial.utterance]
        test = load_waveform(inputs.test_path(trial.utterance), inputs.test_samples)[None]
        enrollment = load_waveform(inputs.enrollment_paths[trial.speaker][0], inputs.enrollment_samples)[None]
        with torch.no_grad():
            logits = model.cm_model(test)[1]
            a, b = model.asv_embedding(enrollment)[0].double(), model.asv_embedding(test)[0].double()
        assert float(row[2]) == pytest.approx(float(logits[0, 1]), abs=1e-5)
        assert float(row[3]) == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-5)


FIELDS = st.sampled_from(["spk", "filename", "cm-score", "asv-score", "sasv-score", "cm-label", "asv-label", "attack",
                          "codec", "E_1", "E_2", "F_1", "-", "1.5", "-2", "nan", "inf", "x", "bonafide", "spoof",
                          "target", "nontarget", "A17", "C01", "track_2_tag", "dummy"])
LINES = st.lists(st.lists(FIELDS, min_size=0, max_size=6).map("\t".join), max_size=6).map("\n".join)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scores=LINES, keys=LINES)
def test_fuzzed_track_files_give_trials_or_one_line_error(tmp_path, scores, keys):
    score_path, key_path = tmp_path / "scores.tsv", tmp_path / "keys.tsv"
    score_path.write_text("spk\tfilename\tcm-score\tasv-score\tsasv-score\n" + scores)
    key_path.write_text("spk\tfilename\tcm-label\tasv-label\n" + keys)
    for reader in (read_track2, read_track1):
        try:
            trials = reader(score_path, key_path)
        except ProtocolError as error:
            assert "\n" not in str(error) and str(error).startswith(str(tmp_path))
        else:
            assert len(trials) and all(np.isfinite(part).all() for part in (trials.sasv, trials.cm, trials.asv)
                                       if part is not None)


# ---------------------------------------------------------------------------- all-or-nothing report folders


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.slow
def test_a_rerun_into_the_same_folder_holds_only_its_own_files(track_files, tmp_path, capsys, monkeypatch):
    """A CM-only report written over a Track 2 one: no SASV plot or table of the earlier run stays."""
    _, files = track_files
    out = tmp_path / "out"
    status, _, err = evaluate(capsys, monkeypatch, "--sasv", str(files["sasv"]), "--sasv_keys",
                              str(files["sasv_keys"]), "--out", str(out))
    assert status == 0, err
    assert {"det_sasv.png", "adcf.png", "det_cm.png"} <= set(_folder_state(out))
    status, _, err = evaluate(capsys, monkeypatch, "--cm", str(files["cm"]), "--cm_keys", str(files["cm_keys"]),
                              "--out", str(out))
    assert status == 0, err
    assert sorted(_folder_state(out)) == ["det_cm.png", "hist_cm.png", "report.csv", "report.json", "report.md"]
    assert json.loads((out / "report.json").read_text())["metrics"] == ["min_dcf", "act_dcf", "cllr", "eer"]


@pytest.mark.slow
def test_a_write_that_fails_keeps_the_earlier_report_whole(track_files, tmp_path, capsys, monkeypatch):
    """A full disk at the third file of a rerun: one line naming the file's real path (not a temporary),
    exit 1, the earlier report byte for byte, and no staging folder left behind."""
    import errno
    import os

    from runtime import files as runtime_files

    _, files = track_files
    out = tmp_path / "out"
    assert evaluate(capsys, monkeypatch, "--cm", str(files["cm"]), "--cm_keys", str(files["cm_keys"]),
                    "--out", str(out))[0] == 0
    before = _folder_state(out)
    real_fsync, calls = runtime_files.os.fsync, []

    def fsync_fails_at_the_third_file(descriptor):  # what a full disk does to a buffered write
        calls.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(runtime_files.os, "fsync", fsync_fails_at_the_third_file)
    status, out_text, err = evaluate(capsys, monkeypatch, "--sasv", str(files["sasv"]), "--sasv_keys",
                                     str(files["sasv_keys"]), "--out", str(out))
    monkeypatch.undo()
    lines = err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and out_text == "", err
    assert f"{out / Path(calls[2]).name}: No space left on device" in lines[0] and ".tmp" not in lines[0]
    assert _folder_state(out) == before
    assert not [path for path in tmp_path.rglob(".*")]


@pytest.mark.parametrize("place", ["file", "file_parent", "read_only"])
def test_an_unwritable_out_is_refused_before_any_work(track_files, tmp_path, capsys, monkeypatch, place):
    import os

    _, files = track_files
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder\n")
    out = {"file": blocker, "file_parent": blocker / "report", "read_only": tmp_path / "locked" / "report"}[place]
    if place == "read_only":
        out.parent.mkdir()
        out.parent.chmod(0o500)
        real_access = os.access  # root ignores permission bits: the check asks os.access, answered as for a user
        monkeypatch.setattr("runtime.files.os.access",
                            lambda path, mode: Path(path) != out.parent and real_access(path, mode))
    read = []
    monkeypatch.setattr("scoring.asvspoof5_files.read_track1", lambda *args: read.append(args))
    status, _, err = evaluate(capsys, monkeypatch, "--cm", str(files["cm"]), "--cm_keys", str(files["cm_keys"]),
                              "--out", str(out))
    assert status == 2 and len(err.strip().splitlines()) == 1 and f"--out {out}" in err, err
    assert read == [] and blocker.read_text() == "not a folder\n"
