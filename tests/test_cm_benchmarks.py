"""ASVspoof 2021 LA / DF eval and In-the-Wild: the keys readers, the goldens of the organisers' 2021 evaluation
package (tests/data/asvspoof2021/README.md), evaluate.py's report on them and the synthetic stand-ins."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.corpora import CorpusLayoutError, corpus_for_keys, corpus_of
from data.corpora.asvspoof2021 import ASVspoof2021DF, ASVspoof2021LA
from data.corpora.in_the_wild import InTheWild
from data.protocols import ProtocolError
from scoring.cm_conditions import BenchmarkInputError, read_cm_benchmark

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "asvspoof2021"
LA_KEYS = GOLDEN / "keys" / "LA" / "CM" / "trial_metadata.txt"
DF_KEYS = GOLDEN / "keys" / "DF" / "CM" / "trial_metadata.txt"

LA_LINE = "LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval"
LA_BONA = "LA_0009 LA_E_1000001 none loc_tx bonafide bonafide notrim progress"
DF_LINE = "LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress traditional_vocoder - - - -"
ITW_TEXT = "file,speaker,label\n0.wav,Alec Guinness,spoof\n1.wav,Alec Guinness,bona-fide\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------ readers


def test_readers_take_the_release_lines(tmp_path: Path) -> None:
    la = ASVspoof2021LA.read_keys(_write(tmp_path / "la.txt", f"{LA_LINE}\n{LA_BONA}\n"))
    assert [(e.speaker, e.utterance, e.attack, e.key) for e in la] == [
        ("LA_0009", "LA_E_9332881", "A07", "spoof"), ("LA_0009", "LA_E_1000001", "-", "bonafide")]
    assert la[0].conditions == {"codec": "alaw", "transmission": "ita_tx", "trim": "notrim", "subset": "eval"}
    df = ASVspoof2021DF.read_keys(_write(tmp_path / "df.txt", DF_LINE + "\n"))
    assert (df[0].attack, df[0].conditions["codec"], df[0].conditions["source"], df[0].conditions["vocoder"],
            df[0].conditions["subset"]) == ("A14", "nocodec", "asvspoof", "traditional_vocoder", "progress")
    itw = InTheWild.read_keys(_write(tmp_path / "meta.csv", ITW_TEXT))
    assert [(e.utterance, e.speaker, e.key) for e in itw] == [("0", "Alec Guinness", "spoof"),
                                                              ("1", "Alec Guinness", "bonafide")]
    assert corpus_for_keys(tmp_path / "la.txt") is ASVspoof2021LA
    assert corpus_for_keys(tmp_path / "df.txt") is ASVspoof2021DF
    assert corpus_for_keys(tmp_path / "meta.csv") is InTheWild


@pytest.mark.parametrize("reader, lines, line, word", [
    (ASVspoof2021LA, [LA_BONA, LA_LINE + " extra"], 2, "fields"),
    (ASVspoof2021LA, [LA_BONA, LA_LINE.replace("alaw", "mp3")], 2, "codec"),
    (ASVspoof2021LA, [LA_LINE.replace("ita_tx", "moon_tx")], 1, "transmission"),
    (ASVspoof2021LA, [LA_LINE.replace("A07", "A01")], 1, "attack"),
    (ASVspoof2021LA, [LA_LINE.replace("eval", "dev")], 1, "subset"),
    (ASVspoof2021LA, [LA_LINE.replace("LA_E_", "DF_E_")], 1, "trial id"),
    (ASVspoof2021LA, [LA_LINE, LA_LINE], 2, "LA_E_9332881"),
    (ASVspoof2021DF, [DF_LINE.replace("traditional_vocoder", "magic_vocoder")], 1, "vocoder"),
    (ASVspoof2021DF, [DF_LINE.replace("asvspoof", "librispeech")], 1, "source"),
    (ASVspoof2021DF, [DF_LINE.replace("spoof notrim", "fake notrim")], 1, "label"),
    (ASVspoof2021DF, [LA_LINE], 1, "fields"),
])
def test_bad_keys_lines_name_file_and_line(tmp_path: Path, reader: type, lines: list[str], line: int, word: str
                                           ) -> None:
    path = _write(tmp_path / "trial_metadata.txt", "\n".join(lines) + "\n")
    with pytest.raises(ProtocolError, match=rf"trial_metadata.txt:{line}: .*{word}"):
        reader.read_keys(path)


@pytest.mark.parametrize("text, line, word", [
    ("file;speaker;label\n0.wav;A;spoof\n", 1, "header"),
    (ITW_TEXT + "2.wav,Alec Guinness,bonafide\n", 4, "label"),
    (ITW_TEXT + "2.wav,Alec Guinness\n", 4, "fields"),
    (ITW_TEXT + "2.mp3,Alec Guinness,spoof\n", 4, "file"),
    (ITW_TEXT + "0.wav,Alec Guinness,spoof\n", 4, "0.wav"),
])
def test_bad_meta_csv_names_file_and_line(tmp_path: Path, text: str, line: int, word: str) -> None:
    with pytest.raises(ProtocolError, match=rf"meta.csv:{line}: .*{word}"):
        InTheWild.read_keys(_write(tmp_path / "meta.csv", text))


def test_unknown_keys_layout_names_line_1(tmp_path: Path) -> None:
    path = _write(tmp_path / "keys.txt", "PA_0010 PA_E_1000001 R3 M3 d4 r1 m1 s4 c4 spoof notrim eval\n")
    with pytest.raises(ProtocolError, match=r"keys.txt:1: .*asvspoof2021_la"):
        corpus_for_keys(path)


def test_corpus_folder_layout_and_missing_audio(tmp_path: Path) -> None:
    config = {"dataset": "asvspoof2021_la", "dirs": {"database": str(tmp_path)}}
    corpus = corpus_of(config)
    with pytest.raises(CorpusLayoutError, match=r"ASVspoof2021_LA_eval/flac/.*trial_metadata.txt"):
        corpus.check_layout()
    keys = _write(tmp_path / "keys" / "LA" / "CM" / "trial_metadata.txt", f"{LA_BONA}\n{LA_LINE}\n")
    _write(tmp_path / "ASVspoof2021_LA_eval" / "flac" / "LA_E_1000001.flac", "")
    with pytest.raises(ProtocolError, match=rf"{keys}:2: audio file .*LA_E_9332881.flac"):
        corpus.cm_entries("eval")
    _write(tmp_path / "ASVspoof2021_LA_eval" / "flac" / "LA_E_9332881.flac", "")
    assert [e.utterance for e in corpus.cm_entries("eval")] == ["LA_E_1000001", "LA_E_9332881"]
    assert corpus.audio_path("eval", "LA_E_9332881") == tmp_path / "ASVspoof2021_LA_eval" / "flac" / "LA_E_9332881.flac"
    itw = corpus_of({"dataset": "in_the_wild", "dirs": {"database": str(tmp_path)}})
    with pytest.raises(CorpusLayoutError, match=r"release_in_the_wild/meta.csv"):
        itw.check_layout()
    _write(tmp_path / "release_in_the_wild" / "meta.csv", ITW_TEXT)
    with pytest.raises(ProtocolError, match=r"meta.csv:2: audio file .*0.wav"):
        itw.cm_entries("eval")


def test_scores_against_keys(tmp_path: Path) -> None:
    keys = _write(tmp_path / "la.txt", f"{LA_BONA}\n{LA_LINE}\n")
    with pytest.raises(ProtocolError, match=r"scores.txt: no score for trial LA_E_9332881 .*la.txt:2"):
        read_cm_benchmark(_write(tmp_path / "scores.txt", "LA_E_1000001 1.0\n"), keys)
    with pytest.raises(ProtocolError, match=r"scores.txt:2: trial LA_E_0000000 is not in"):
        read_cm_benchmark(_write(tmp_path / "scores.txt", "LA_E_9332881 1.0\nLA_E_0000000 2\n"), keys)
    with pytest.raises(BenchmarkInputError, match=r"la.txt: unknown subset"):
        read_cm_benchmark(_write(tmp_path / "scores.txt", "LA_E_9332881 1.0\n"), keys, subset="dev")
    itw = _write(tmp_path / "meta.csv", ITW_TEXT)
    with pytest.raises(BenchmarkInputError, match=r"meta.csv: --subset"):
        read_cm_benchmark(_write(tmp_path / "s.txt", "0.wav 1\n1.wav 2\n"), itw, subset="eval")
    trials, tables = read_cm_benchmark(tmp_path / "s.txt", itw)
    assert trials.cm.tolist() == [1.0, 2.0] and tables.conditions["speaker"].tolist() == ["Alec Guinness"] * 2


# ------------------------------------------------------------------ goldens of the organisers' package


def _package_tables(path: Path) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """{"min_tdcf" / "eer": (column tags, {row tag: printed values, "" for nan})} from the LaTeX tables main.py
    prints (its text tables print a nan cell as blanks, which splitting on spaces cannot place)."""
    text = path.read_text()
    tables = {}
    for name, marker in (("min_tdcf", "Table for min tDCFs"), ("eer", "Table for EERs")):
        if marker not in text:
            continue
        latex = text.split(marker, 1)[1].split("\\begin{tabular}", 1)[1].split("\\end{tabular}", 1)[0]
        head, body = latex.split("\\midrule", 1)

        def cells(line: str) -> list[str]:
            return [re.sub(r"\\cellcolor\[rgb\]\{[^}]*\}", "", cell).strip()
                    for cell in line.strip().removesuffix("\\\\").split("&")]
        columns = cells(head.strip().splitlines()[-1])[1:]
        rows = {}
        for line in body.split("\\bottomrule", 1)[0].strip().splitlines():
            row = cells(line)
            rows[row[0]] = row[1:]
        tables[name] = (columns, rows)
    return tables


@pytest.mark.parametrize("track, subset, ours", [(t, s, o) for t in ("LA", "DF") for s, o in
                                                 (("eval", None), ("progress", "progress"),
                                                  ("hidden", "hidden_track"))])
def test_equal_to_the_organisers_package(track: str, subset: str, ours: str | None) -> None:
    expected = _package_tables(GOLDEN / "package_output" / f"{track}_{subset}.txt")
    assert set(expected) == ({"min_tdcf", "eer"} if track == "LA" else {"eer"})
    _, tables = read_cm_benchmark(GOLDEN / f"scores_{track}.txt", LA_KEYS if track == "LA" else DF_KEYS, ours)
    table = tables.package_table()
    for name, form in (("min_tdcf", "1.4f"), ("eer", "1.2f")):
        if name not in expected:
            assert name not in table
            continue
        columns, rows = expected[name]
        assert table["columns"] == columns and table["rows"] == list(rows)
        got = [["" if v is None else format(v, form) for v in values] for values in table[name]]
        assert got == list(rows.values()), name


@pytest.mark.slow
def test_evaluate_report_tables(tmp_path: Path) -> None:
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "evaluate.py", "--cm", str(GOLDEN / "scores_LA.txt"), "--cm_keys",
                          str(LA_KEYS), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    expected = _package_tables(GOLDEN / "package_output" / "LA_eval.txt")
    assert report["metrics"][:2] == ["eer", "min_tdcf"]
    assert f"{report['pooled']['min_tdcf']:1.4f}" == expected["min_tdcf"][1]["Pooled"][-1]
    assert f"{100 * report['pooled']['eer']:1.2f}" == expected["eer"][1]["Pooled"][-1]
    # The per-codec cells are the package's Pooled row (codec C2 = alaw), the per-attack ones its last column.
    assert f"{100 * report['per_codec']['alaw']['eer']:1.2f}" == expected["eer"][1]["Pooled"][1]
    assert f"{report['per_attack']['A19']['min_tdcf']:1.4f}" == expected["min_tdcf"][1]["A19"][-1]
    assert set(report["per_condition"]) == {"transmission"}
    assert set(report["per_condition"]["transmission"]) == {"loc_tx", "ita_tx", "sin_tx", "mad_tx"}
    assert report["benchmark"]["subset"] == "eval" and report["pooled"]["n_bonafide"] + \
        report["pooled"]["n_spoof"] == sum(" eval" in line for line in LA_KEYS.read_text().splitlines())
    markdown = (out / "report.md").read_text()
    assert "## Per transmission" in markdown and "## As the ASVspoof 2021 LA evaluation package prints it" in markdown
    assert {"det_cm.png", "hist_cm.png", "report.csv"} <= {p.name for p in out.iterdir()}


# ------------------------------------------------------------------ synthetic stand-ins


@pytest.mark.slow  # data.synthetic's package import (scipy) alone takes seconds on a shared machine
def test_stand_in_keys_read_back() -> None:
    import tempfile

    from data.synthetic.cm_benchmarks import df_key_lines, itw_meta_text, la_key_lines, plan_df, plan_itw, plan_la
    with tempfile.TemporaryDirectory() as folder:
        la = _write(Path(folder) / "la.txt", "\n".join(la_key_lines(plan_la(200, 6, 0))) + "\n")
        df = _write(Path(folder) / "df.txt", "\n".join(df_key_lines(plan_df(200, 6, 0))) + "\n")
        itw = _write(Path(folder) / "meta.csv", itw_meta_text(plan_itw(60, 6, 0)))
        la_entries, df_entries = ASVspoof2021LA.read_keys(la), ASVspoof2021DF.read_keys(df)
        itw_entries = InTheWild.read_keys(itw)
    assert {e.conditions["codec"] for e in la_entries} == {"none", "alaw", "pstn", "g722", "ulaw", "gsm", "opus"}
    assert {e.conditions["subset"] for e in la_entries} == {"eval", "progress", "hidden_track"}
    assert {e.conditions["vocoder"] for e in df_entries if e.key == "spoof"} == {
        "traditional_vocoder", "waveform_concatenation", "neural_vocoder_autoregressive",
        "neural_vocoder_nonautoregressive", "unknown"}
    assert {e.conditions["source"] for e in df_entries} == {"asvspoof", "vcc2018", "vcc2020"}
    speakers = {e.speaker for e in itw_entries}
    assert len(speakers) == 6 and all({e.key for e in itw_entries if e.speaker == s} == {"bonafide", "spoof"}
                                      for s in speakers)


@pytest.mark.slow
def test_stand_ins_in_release_layout(tmp_path: Path) -> None:
    import soundfile as sf

    from data.synthetic.cm_benchmarks import BenchmarkSpec, generate_cm_benchmarks
    spec = BenchmarkSpec.tiny()
    generate_cm_benchmarks(tmp_path, spec)
    for name, count, suffix in (("asvspoof2021_la", spec.la_files, ".flac"),
                                ("asvspoof2021_df", spec.df_files, ".flac"), ("in_the_wild", spec.itw_files, ".wav")):
        corpus = corpus_of({"dataset": name, "dirs": {"database": str(tmp_path)}})
        corpus.check_layout()
        entries = corpus.cm_entries("eval")  # every keys line has its audio file
        assert len(entries) == count and {e.key for e in entries} == {"bonafide", "spoof"}
        path = corpus.audio_path("eval", entries[0].utterance)
        assert path.suffix == suffix
        audio, rate = sf.read(path)
        assert rate == spec.sample_rate and audio.size == int(spec.file_seconds * rate) and np.abs(audio).max() > 0
        assert corpus_for_keys(corpus.protocol("cm_keys")) is type(corpus)
    la = corpus_of({"dataset": "asvspoof2021_la", "dirs": {"database": str(tmp_path)}})
    assert all(len(e.utterance) == 12 and e.utterance.startswith("LA_E_") for e in la.cm_entries("eval"))
    # The LA ASV keys and scores sit where the keys release puts them, and give the min t-DCF.
    scores = tmp_path / "scores.txt"
    scores.write_text("".join(f"{e.utterance} {np.random.default_rng(k).normal(e.key == 'bonafide', 1):.4f}\n"
                              for k, e in enumerate(la.cm_entries("eval"))))
    trials, tables = read_cm_benchmark(scores, la.protocol("cm_keys"))
    assert tables.asv is not None and tables.cell({})["min_tdcf"] is not None


def test_benchmark_table_has_a_column_per_set() -> None:
    from evaluate_cm_benchmarks import benchmark_table
    markdown, csv = benchmark_table({"asvspoof2019_la": {"eer": 0.0083, "min_tdcf": 0.0275},
                                     "asvspoof2021_df": {"eer": 0.0285, "min_tdcf": None}})
    assert markdown.splitlines()[0] == "| metric | 2019 LA eval | 2021 DF eval |"
    assert markdown.splitlines()[2:] == ["| EER (%) | 0.83 | 2.85 |", "| min t-DCF | 0.0275 | - |"]
    assert csv.splitlines()[2] == "min_tdcf,0.0275,"


# ------------------------------------------------------------------ save_cm_score.py and the recipe


def _layouts(root: Path) -> list[str]:
    """The same six recordings (noise at 16 kHz, PCM 16) in the ASVspoof 2019 LA layout, the 2021 LA and DF
    release layouts and the In-the-Wild layout under `root`; returns the labels in list order (every list in
    the same order). The 2021 LA keys put the 4th recording in subset progress."""
    import soundfile as sf

    keys = ["bonafide", "spoof", "spoof", "bonafide", "spoof", "bonafide"]
    rng = np.random.default_rng(3)
    la19, la21, df, itw = ([] for _ in range(4))
    for index, key in enumerate(keys):
        pcm = (rng.normal(0, 3000 if key == "spoof" else 1000, 9600)).astype(np.int16)
        names = {"la19": f"LA_E_{1000001 + index}", "la21": f"LA_E_{5000001 + index}", "df": f"DF_E_{2000001 + index}"}
        for folder, name in (("LA/ASVspoof2019_LA_eval/flac", names["la19"]),
                             ("ASVspoof2021_LA_eval/flac", names["la21"]), ("ASVspoof2021_DF_eval/flac", names["df"])):
            (root / folder).mkdir(parents=True, exist_ok=True)
            sf.write(root / folder / f"{name}.flac", pcm, 16000, subtype="PCM_16")
        (root / "release_in_the_wild").mkdir(exist_ok=True)
        sf.write(root / "release_in_the_wild" / f"{index}.wav", pcm, 16000, subtype="PCM_16")
        bona = key == "bonafide"
        la19.append(f"LA_0001 {names['la19']} - {'-' if bona else 'A07'} {key}")
        subset = "progress" if index == 3 else "eval"
        la21.append(f"LA_0001 {names['la21']} alaw ita_tx {'bonafide' if bona else 'A07'} {key} notrim {subset}")
        df.append(f"LA_0001 {names['df']} nocodec asvspoof {'bonafide' if bona else 'A07'} {key} notrim eval "
                  f"{'bonafide' if bona else 'traditional_vocoder'} - - - -")
        itw.append(f"{index}.wav,Alec Guinness,{'bona-fide' if bona else 'spoof'}")
    _write(root / "cm.eval.trl.txt", "\n".join(la19) + "\n")
    _write(root / "keys" / "LA" / "CM" / "trial_metadata.txt", "\n".join(la21) + "\n")
    _write(root / "keys" / "DF" / "CM" / "trial_metadata.txt", "\n".join(df) + "\n")
    _write(root / "release_in_the_wild" / "meta.csv", "file,speaker,label\n" + "\n".join(itw) + "\n")
    return keys


def _tiny_cm(root: Path) -> tuple[Path, Path]:
    """(config, checkpoint): the tests' tiny AASIST, randomly initialised, on the 2019 layout of `_layouts`."""
    import torch
    from test_pipeline import tiny_config

    from models.build import build_cm_network
    from runtime.config import build_config

    config = tiny_config(root / "unused")
    config["dirs"].update(database=str(root / "LA"), cm_eval_list=str(root / "cm.eval.trl.txt"))
    path = _write(root / "tiny_cm.conf", json.dumps(config))
    torch.manual_seed(0)
    weights = root / "tiny_cm.pth"
    torch.save(build_cm_network(build_config(config)).state_dict(), weights)
    return path, weights


@pytest.mark.slow
def test_recipe_scores_every_layout_as_the_2019_layout(tmp_path: Path) -> None:
    """evaluate_cm_benchmarks.py with a recipe: save_cm_score.py on the four layouts gives the same audio the
    same score, and the table has a column per set."""
    keys = _layouts(tmp_path)
    config, weights = _tiny_cm(tmp_path)
    recipe = _write(tmp_path / "recipe.conf", json.dumps({
        "config": str(config), "cm_model": str(weights), "set": ["device=cpu"], "out": str(tmp_path / "out"),
        "sets": {"asvspoof2019_la": "config", "asvspoof2021_la": str(tmp_path), "asvspoof2021_df": str(tmp_path),
                 "in_the_wild": str(tmp_path)}}))
    run = subprocess.run([sys.executable, str(ROOT / "evaluate_cm_benchmarks.py"), "--recipe", str(recipe)],
                         cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    assert run.returncode == 0, run.stderr
    scores = {}
    for name in ("asvspoof2019_la", "asvspoof2021_la", "asvspoof2021_df", "in_the_wild"):
        lines = [line.split() for line in (tmp_path / "out" / name / "score_CM_eval_no_softmax.txt").read_text()
                 .splitlines()]
        assert len(lines) == len(keys)  # every trial, the 2021 progress one too
        scores[name] = [float(score) for _, score in lines]
    assert len(set(scores["asvspoof2019_la"])) == len(keys)
    for name in ("asvspoof2021_la", "asvspoof2021_df", "in_the_wild"):
        assert scores[name] == scores["asvspoof2019_la"], name
    la = json.loads((tmp_path / "out" / "asvspoof2021_la" / "metrics_CM_eval.json").read_text())
    assert (la["n_utterances"], la["metrics_subset"], la["n_subset_utterances"], la["min_tdcf"]) == (6, "eval", 5, None)
    csv = (tmp_path / "out" / "benchmarks.csv").read_text().splitlines()
    assert csv[0] == "metric,asvspoof2019_la,asvspoof2021_la,asvspoof2021_df,in_the_wild"
    eers = [float(value) for value in csv[1].split(",")[1:]]
    # The same scores and labels: 2019, DF (all subset eval) and In-the-Wild agree; 2021 LA is of 5 of them.
    assert eers[0] == eers[2] == eers[3] and 0 <= eers[1] <= 1
    assert csv[2] == "min_tdcf,,,,"  # no ASV scores for 2019, no ASV keys in this 2021 LA release
    markdown = (tmp_path / "out" / "benchmarks.md").read_text()
    assert markdown.splitlines()[0] == "| metric | 2019 LA eval | 2021 LA eval | 2021 DF eval | In-the-Wild |"
    assert (tmp_path / "out" / "in_the_wild" / "report" / "report.json").is_file()


@pytest.mark.parametrize("text, word", [
    ('{"cm_model": "w.pth", "sets": {"asvspoof2021_la": "d"}, "outt": "x"}', "outt"),
    ('{"sets": {"asvspoof2019_la": "/data/LA"}}', "sets.asvspoof2019_la"),
    ('{"sets": {"asvspoof2017": "/data"}}', "sets.asvspoof2017"),
    ('{"sets": ["asvspoof2021_la"]}', "sets"),
    ('{"sets": {"in_the_wild": "a", "in_the_wild": "b"}}', "sets.in_the_wild"),
])
def test_bad_recipe_names_file_and_key(tmp_path: Path, text: str, word: str) -> None:
    from evaluate_cm_benchmarks import read_recipe
    from runtime.errors import UserError
    path = _write(tmp_path / "recipe.conf", text)
    with pytest.raises(UserError, match=rf"recipe.conf: .*{re.escape(word)}"):
        read_recipe(path)


def test_shipped_recipe_reads() -> None:
    from evaluate_cm_benchmarks import HEADERS, read_recipe
    recipe = read_recipe(ROOT / "configs" / "recipes" / "cm_benchmarks.conf")
    assert list(recipe["sets"]) == list(HEADERS) and (ROOT / recipe["config"]).is_file()


def test_in_the_wild_lines_are_named_by_file_name(tmp_path: Path) -> None:
    meta = _write(tmp_path / "meta.csv", ITW_TEXT)
    assert InTheWild.where_listed(meta, "1") == f"{meta}:3"
    assert ASVspoof2021LA.where_listed(_write(tmp_path / "la.txt", f"{LA_BONA}\n{LA_LINE}\n"),
                                       "LA_E_9332881") == f"{tmp_path / 'la.txt'}:2"


def test_a_cm_training_config_scores_an_evaluation_set_as_it_is() -> None:
    """The 2019 t-DCF keys of a CM training config are refused for a corpus one trains on without the 2019
    t-DCF (ASVspoof 5), but not for a CM evaluation set, which save_cm_score.py scores without them."""
    from runtime.config import ConfigError, build_config
    tdcf = {"system": "cm", "cm_train": {"select_by": "min_tdcf", "asv_model": "asv.model"}}
    for name in ("asvspoof2021_la", "asvspoof2021_df", "in_the_wild"):
        assert build_config({**tdcf, "dataset": name})["dataset"] == name
    with pytest.raises(ConfigError, match="cm_train"):
        build_config({**tdcf, "dataset": "asvspoof5"})
