"""Training and scoring on the ASVspoof 5 release layout (config `dataset: asvspoof5`).

The tiny 2019 synthetic corpus is rewritten as an ASVspoof 5 release: flac_T/, flac_D/, flac_E_eval/
(symlinks to its audio folders), the 10-column utterance lists, the 5-column Track 2 trial lists and
enrollment lists with the several utterances per speaker of asv.{dev,eval}.{female,male}.trn.txt.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import tiny_config
from tiny_run import QUIET_ENV, run_main_here, run_script, tiny_corpus

from data.audio import load_waveform
from data.corpora import corpus_of
from data.protocols import ProtocolError, read_cm_protocol, read_enrollment_utterances, read_sasv_trials
from models.build import build_sasv_model
from models.checkpoint import load_sasv_weights
from runtime.config import build_config, load_config
from scoring.extraction import Extraction
from scoring.inputs import scoring_inputs
from scoring.sasv import SASVScorer

# Every test here needs a trained run or a real model (a module fixture): seconds to minutes.
pytestmark = pytest.mark.slow

LA_FOLDERS = {"flac_T": "ASVspoof2019_LA_train", "flac_D": "ASVspoof2019_LA_dev",
              "flac_E_eval": "ASVspoof2019_LA_eval"}


CODECS = ("-", "C01", "C08")


def build_release(corpus: Path, root: Path) -> Path:
    """The tiny 2019 corpus in the ASVspoof 5 release layout under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    protocols = corpus / "protocols"
    for folder, la in LA_FOLDERS.items():
        (root / folder).symlink_to(corpus / "LA" / la / "flac", target_is_directory=True)
    gender = {}
    for part in ("dev", "eval"):
        lists = {g: protocols / f"ASVspoof2019.LA.asv.{part}.{g}.trn.txt" for g in ("female", "male")}
        for g, path in lists.items():
            gender.update({speaker: g[0].upper() for speaker in read_enrollment_utterances([path])})
        enrolled = read_enrollment_utterances(list(lists.values()))
        (root / f"ASVspoof5.{part}.track_2.enroll.tsv").write_text(
            "".join(f"{speaker} {','.join(utts)}\n" for speaker, utts in enrolled.items()))
        trials = read_sasv_trials(protocols / f"ASVspoof2019.LA.asv.{part}.gi.trl.txt")
        (root / f"ASVspoof5.{part}.track_2.trial.tsv").write_text(
            "".join(f"{t.speaker} {t.utterance} {gender[t.speaker]} {t.attack} {t.key}\n" for t in trials))
    for name, la in (("train", "cm.train.trn"), ("dev.track_1", "cm.dev.trl"), ("eval.track_1", "cm.eval.trl")):
        lines = []
        for index, e in enumerate(read_cm_protocol(protocols / f"ASVspoof2019.LA.{la}.txt")):
            attack, tag = ("bonafide", "-") if e.key == "bonafide" else (e.attack, "AC1")
            codec = "-" if name == "train" else CODECS[index % 3]  # codec conditions in dev and eval
            lines.append(f"{e.speaker} {e.utterance} {gender.get(e.speaker, 'F')} {codec} - - {tag} {attack} {e.key} "
                         f"-\n")
        (root / f"ASVspoof5.{name}.tsv").write_text("".join(lines))
    return root


def release_config(corpus: Path, release: Path, **overrides) -> dict:
    config = tiny_config(corpus, **overrides)
    config["dirs"] = {"database": str(release)}  # every ASVspoof 5 list at its release name in the root
    config["dataset"] = "asvspoof5"
    del config["enrollment_samples"]  # default for asvspoof5: test_samples per enrollment utterance
    return config


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, Path]:
    corpus = tiny_corpus(tmp_path_factory)
    return corpus, build_release(corpus, tmp_path_factory.mktemp("asvspoof5") / "release")


@pytest.fixture(scope="module")
def trained(release, tmp_path_factory):
    corpus, root = release
    work = tmp_path_factory.mktemp("asvspoof5_run")
    config_path = work / "tiny5.conf"
    config_path.write_text(json.dumps(release_config(corpus, root)))
    result = run_main_here(config_path, work / "exp")
    assert result.returncode == 0, result.stdout + result.stderr
    (work / "exp" / "tiny5" / "stdout.txt").write_text(result.stdout)
    return config_path, work / "exp" / "tiny5"


def test_config_locates_the_release_lists(release):
    corpus, root = release
    config = build_config(release_config(corpus, root))
    assert corpus_of(config).protocol("asvspoof5_dev_enroll") == root / "ASVspoof5.dev.track_2.enroll.tsv"
    assert corpus_of(config).protocol("asvspoof5_train_list") == root / "ASVspoof5.train.tsv"
    assert config["enrollment_samples"] == {"dev": 8000, "eval": 8000}  # test_samples: single utterances
    assert build_config({})["dataset"] == "asvspoof2019_la"


def test_joint_training_writes_the_standard_outputs(trained, release):
    _, root = release
    _, experiment = trained
    with open(experiment / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert all(np.isfinite(float(row["train_loss"])) and 0 <= float(row["dev_sasv_eer"]) <= 1 for row in rows)
    summary = json.loads((experiment / "metrics_eval.json").read_text())
    for name in ("sasv_eer", "sv_eer", "spf_eer", "min_a_dcf"):
        assert np.isfinite(summary[name])
    lines = (root / "ASVspoof5.eval.track_2.trial.tsv").read_text().splitlines()
    rows = [line.split() for line in (experiment / "scores" / "eval.txt").read_text().splitlines()]
    assert [row[:3] for row in rows] == [[f[0], f[1], f[4]] for f in (line.split() for line in lines)]
    assert summary["n_trials"] == len(lines)


def test_the_report_puts_a_dcf_first_and_has_a_row_per_codec(trained, release):
    _, root = release
    _, experiment = trained
    report = json.loads((experiment / "report" / "report.json").read_text())
    assert report["metrics"][0] == "a_dcf"  # ASVspoof 5's primary metric
    a_dcf = json.loads((experiment / "metrics_eval.json").read_text())["a_dcf"]
    assert a_dcf == report["pooled"]["a_dcf"]
    done = (experiment / "stdout.txt").read_text().splitlines()[-1]
    assert done.startswith("done: ") and f"| eval a-DCF (ASVspoof 5) {a_dcf:.4f}  SASV-EER " in done, done
    codec_of = {line.split()[1]: line.split()[3] for line in
                (root / "ASVspoof5.eval.track_1.tsv").read_text().splitlines()}
    trials = [line.split() for line in (root / "ASVspoof5.eval.track_2.trial.tsv").read_text().splitlines()]
    assert sorted(report["per_codec"]) == sorted({codec_of[t[1]] for t in trials})
    for codec, cell in report["per_codec"].items():
        wanted = [t[4] for t in trials if codec_of[t[1]] == codec]
        assert (cell["n_target"], cell["n_nontarget"], cell["n_spoof"]) == \
            tuple(wanted.count(key) for key in ("target", "nontarget", "spoof"))
    keys = (experiment / "report" / "track2_keys.tsv").read_text().splitlines()
    assert keys[0].split("\t") == ["spk", "filename", "cm-label", "asv-label", "attack", "codec"]
    assert [line.split("\t")[5] for line in keys[1:]] == [codec_of[t[1]] for t in trials]


def test_enrollment_is_the_mean_of_the_utterance_embeddings(trained, release):
    corpus, root = release
    config_path, experiment = trained
    config = load_config(config_path)
    model, loss = build_sasv_model(config, load_weights=False)
    load_sasv_weights(model, loss, experiment / "weights" / "last.ckpt")
    model.eval()
    torch.set_num_threads(2)
    scorer = SASVScorer(model, loss, Extraction(torch.device("cpu"), batch_size=8, progress=False))
    inputs = scoring_inputs(config, "dev")
    speakers, enrollment, utterances, test_asv, test_cm, _ = scorer.embeddings(inputs)
    listed = read_enrollment_utterances([root / "ASVspoof5.dev.track_2.enroll.tsv"])
    assert all(len(utts) >= 2 for utts in listed.values())
    with torch.no_grad():
        for speaker, row in speakers.items():  # each utterance alone through the network, averaged here
            rows = [model.asv_embedding(load_waveform(root / "flac_D" / f"{utt}.flac", 8000)[None])[0].numpy()
                    for utt in listed[speaker]]
            expected = np.sum(rows, axis=0) / len(rows)
            np.testing.assert_allclose(enrollment[row].numpy(), expected, atol=1e-5, rtol=0)
        # the back-end's enrollment input is that mean too
        trial = inputs.trials[0]
        hand = torch.tensor(np.mean([model.asv_embedding(load_waveform(root / "flac_D" / f"{u}.flac", 8000)[None])[0]
                                     .numpy() for u in listed[trial.speaker]], axis=0))[None]
        test = [utterances[trial.utterance]]
        feats = model.score_embeddings(hand, test_asv[test], test_cm[test])
        assert scorer.score(inputs)[0] == pytest.approx(float(loss.score(feats)[0]), abs=1e-5)


def _rewrite(path: Path, edit) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(lines)))


def test_missing_enrollment_utterance_is_one_line_naming_the_list_line(release, tmp_path):
    corpus, root = release
    copy = build_release(corpus, tmp_path / "release")
    enroll = copy / "ASVspoof5.eval.track_2.enroll.tsv"
    _rewrite(enroll, lambda lines: [lines[0], lines[1].rstrip("\n") + ",E_missing\n", *lines[2:]])
    config_path = tmp_path / "bad.conf"
    config_path.write_text(json.dumps(release_config(corpus, copy)))
    result = run_main_here(config_path, tmp_path / "exp")
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and f"{enroll}:2:" in message[0] and "E_missing" in message[0], result.stderr
    assert not (tmp_path / "exp" / "bad").exists() or not any((tmp_path / "exp" / "bad").rglob("*.txt"))
    assert QUIET_ENV  # the run used the quiet environment of tiny_run


def test_trial_of_an_unenrolled_speaker_names_the_trial_line(release, tmp_path):
    corpus, root = release
    copy = build_release(corpus, tmp_path / "release")
    trials = copy / "ASVspoof5.dev.track_2.trial.tsv"
    _rewrite(trials, lambda lines: [*lines[:3], "LA_9999 " + lines[3].split(" ", 1)[1], *lines[4:]])
    with pytest.raises(ProtocolError, match=rf"^{trials}:4: speaker 'LA_9999' has no enrollment in .*enroll\.tsv$"):
        scoring_inputs(build_config(release_config(corpus, copy)), "dev")


def test_scripts_score_the_release_layout(trained, release, tmp_path, capsys, monkeypatch):
    _, root = release
    config_path, experiment = trained
    common = ["--config", str(config_path), "--model", str(experiment / "weights" / "last.ckpt"),
              "--comment", str(tmp_path / "out"), "--partitions", "dev"]
    status, _, err = run_script("save_sasv_score.py", common, capsys, monkeypatch)
    assert status == 0, err
    rows = [line.split() for line in (tmp_path / "out" / "score_SASV_dev.txt").read_text().splitlines()]
    listed = [line.split() for line in (root / "ASVspoof5.dev.track_2.trial.tsv").read_text().splitlines()]
    assert [row[:3] for row in rows] == [[f[0], f[1], f[4]] for f in listed]
    status, _, err = run_script("save_cm_score.py", common, capsys, monkeypatch)
    assert status == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics_CM_dev.json").read_text())
    assert np.isfinite(metrics["cm_eer"]) and metrics["min_tdcf"] is None
    assert metrics["n_utterances"] == len((root / "ASVspoof5.dev.track_1.tsv").read_text().splitlines())
