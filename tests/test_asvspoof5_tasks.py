"""The asv, cm and b2 systems, the embedding export, the fusion baselines and evaluate.py on the ASVspoof 5
release layout (the tiny corpus rewritten as the release by test_asvspoof5_training.build_release).

The configs name only `dirs.database` and `dataset: asvspoof5`: a step that still read an ASVspoof 2019 list
would stop with 'protocol file not found', since the release folder holds none.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from test_asvspoof5_training import build_release, release_config
from tiny_run import REPO, run_here, run_main_here, run_script, tiny_corpus

from data.audio import load_waveform
from data.protocols import ProtocolError
from metrics.eer import roc_eer
from models.build import build_sasv_model
from models.checkpoint import load_checkpoint, load_sasv_weights
from runtime.config import build_config, load_config
from scoring.inputs import scoring_inputs
from training.tasks.sasv import training_sampler

# Every test here needs a trained run or a real model (a module fixture): seconds to minutes.
pytestmark = pytest.mark.slow


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, Path]:
    """The release with one training speaker's lines removed, so that its speaker count differs from the
    2019 training protocol's."""
    corpus = tiny_corpus(tmp_path_factory)
    root = build_release(corpus, tmp_path_factory.mktemp("asvspoof5_tasks") / "release")
    train = root / "ASVspoof5.train.tsv"
    dropped = lines(train)[0][0]
    train.write_text("".join(" ".join(f) + "\n" for f in lines(train) if f[0] != dropped))
    return corpus, root


def write(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def test_asv_system_trains_on_the_release_training_list(release, tmp_path):
    corpus, root = release
    config = release_config(corpus, root, system="asv", epoch=1, batch_size=3)
    config["asv_train"] = {"loss": "aamsoftmax", "samples": 8000, "max_per_speaker": 2}
    result = run_main_here(write(tmp_path / "asv5.conf", config), tmp_path / "exp")
    assert result.returncode == 0, result.stdout + result.stderr
    experiment = tmp_path / "exp" / "asv5"
    bona_fide_speakers = {f[0] for f in lines(root / "ASVspoof5.train.tsv") if f[8] == "bonafide"}
    loss_state = load_checkpoint(experiment / "weights" / "best.ckpt").asv_loss_state
    assert loss_state["weight"].shape[0] == len(bona_fide_speakers)  # one AAM-softmax class per speaker
    for part, name in (("dev", "dev_epoch_001.txt"), ("eval", "eval.txt")):
        listed = [f for f in lines(root / f"ASVspoof5.{part}.track_2.trial.tsv") if f[4] != "spoof"]
        rows = lines(experiment / "scores" / name)
        assert [r[:3] for r in rows] == [[f[0], f[1], f[4]] for f in listed]
    scores = np.array([float(r[3]) for r in rows])
    target = np.array([r[2] == "target" for r in rows])
    summary = json.loads((experiment / "metrics_eval.json").read_text())
    assert summary["eer"] == pytest.approx(roc_eer(scores[target], scores[~target]), abs=1e-12)


def test_cm_system_trains_on_the_release_and_scores_the_track_1_list(release, tmp_path):
    corpus, root = release
    config = release_config(corpus, root, system="cm", epoch=1, batch_size=8)
    config["cm_train"] = {"samples": 8000}
    result = run_main_here(write(tmp_path / "cm5.conf", config), tmp_path / "exp")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = lines(tmp_path / "exp" / "cm5" / "scores" / "eval.txt")
    assert [r[0] for r in rows] == [f[1] for f in lines(root / "ASVspoof5.eval.track_1.tsv")]
    assert [r[2] for r in rows] == [f[8] for f in lines(root / "ASVspoof5.eval.track_1.tsv")]


@pytest.fixture(scope="module")
def joint(release, tmp_path_factory) -> tuple[Path, Path]:
    """One epoch of the joint system on the release: a config and its checkpoint for the scripts."""
    corpus, root = release
    work = tmp_path_factory.mktemp("asvspoof5_joint")
    config = write(work / "joint5.conf", release_config(corpus, root, epoch=1))
    result = run_main_here(config, work / "exp")
    assert result.returncode == 0, result.stdout + result.stderr
    return config, work / "exp" / "joint5" / "weights" / "last.ckpt"


@pytest.fixture(scope="module")
def embeddings(joint, tmp_path_factory) -> Path:
    config, checkpoint = joint
    out = tmp_path_factory.mktemp("asvspoof5_embeddings")
    result = run_here([REPO / "save_asv_embeddings.py", "--config", config, "--model", checkpoint, "--comment", out],
                      cwd=out.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_embedding_export_follows_the_release_lists(release, joint, embeddings):
    _, root = release
    tables = {path.stem: pickle.loads(path.read_bytes()) for path in embeddings.glob("*.pk")}
    for part, name in (("trn", "train"), ("dev", "dev.track_1"), ("eval", "eval.track_1")):
        utterances = [f[1] for f in lines(root / f"ASVspoof5.{name}.tsv")]
        assert list(tables[f"asv_embd_{part}"]) == utterances
        assert list(tables[f"cm_embd_{part}"]) == utterances
    config_path, checkpoint = joint
    model, loss = build_sasv_model(load_config(config_path), load_weights=False)
    load_sasv_weights(model, loss, checkpoint)
    model.eval()
    for part, folder in (("dev", "flac_D"), ("eval", "flac_E_eval")):
        enrolled = {f[0]: f[1].split(",") for f in lines(root / f"ASVspoof5.{part}.track_2.enroll.tsv")}
        assert sorted(tables[f"spk_model_{part}"]) == sorted(enrolled)
        speaker, utterances = next((s, u) for s, u in enrolled.items() if len(u) > 1)
        with torch.no_grad():  # each utterance alone through the network (test_samples 8000), averaged here
            rows = [model.asv_embedding(load_waveform(root / folder / f"{u}.flac", 8000)[None])[0].numpy()
                    for u in utterances]
        np.testing.assert_allclose(tables[f"spk_model_{part}"][speaker], np.mean(rows, axis=0), atol=1e-5, rtol=0)


def test_b2_trains_on_the_exported_release_embeddings(release, embeddings, tmp_path):
    corpus, root = release
    config = release_config(corpus, root, system="b2", epoch=1, trials_per_epoch=64, batch_size=16, amp="off")
    config["b2"] = {"embeddings": str(embeddings), "hidden_dims": [16]}
    for key in ("asv_model", "cm_model", "aasist_config"):
        config.pop(key, None)
    result = run_main_here(write(tmp_path / "b25.conf", config), tmp_path / "exp")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = lines(tmp_path / "exp" / "b25" / "scores" / "eval.txt")
    listed = lines(root / "ASVspoof5.eval.track_2.trial.tsv")
    assert [r[:3] for r in rows] == [[f[0], f[1], f[4]] for f in listed]
    assert all(np.isfinite(float(r[3])) for r in rows)


def test_fusion_baselines_read_the_release_lists(release, joint, embeddings, tmp_path, capsys, monkeypatch):
    _, root = release
    config, checkpoint = joint
    for path in embeddings.glob("*.pk"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    common = ["--config", str(config), "--comment", str(tmp_path)]
    for script, extra in (("save_asv_score.py", []), ("save_cm_score.py", ["--model", str(checkpoint)])):
        status, _, err = run_script(script, common + extra, capsys, monkeypatch)
        assert status == 0, err
    status, out, err = run_script("fuse_scores.py", ["--config", str(config), "--comment", str(tmp_path),
                                                     "--fusion", "sum"], capsys, monkeypatch)
    assert status == 0, err
    listed = lines(root / "ASVspoof5.eval.track_2.trial.tsv")
    asv_rows = lines(tmp_path / "score_ASV_eval.txt")  # in trial-list order
    assert len(asv_rows) == len(listed)
    asv_scores = [float(r[-1]) for r in asv_rows]
    cm = {r[0]: float(r[-1]) for r in lines(tmp_path / "score_CM_eval_no_softmax.txt")}
    fused = lines(tmp_path / "score_SASV_eval_sum.txt")
    assert [r[:3] for r in fused] == [[f[0], f[1], f[4]] for f in listed]
    np.testing.assert_allclose([float(r[3]) for r in fused], [a + cm[f[1]] for a, f in zip(asv_scores, listed)],
                               rtol=1e-6)


def test_evaluate_reads_toolkit_scores_with_a_release_trial_list(release, joint, tmp_path, capsys, monkeypatch):
    _, root = release
    config, checkpoint = joint
    status, _, err = run_script("save_sasv_score.py", ["--config", str(config), "--model", str(checkpoint),
                                                       "--comment", str(tmp_path), "--partitions", "eval"],
                                capsys, monkeypatch)
    assert status == 0, err
    status, _, err = run_script("evaluate.py", ["--sasv_scores", str(tmp_path / "score_SASV_eval.txt"), "--trials",
                                                str(root / "ASVspoof5.eval.track_2.trial.tsv"),
                                                "--out", str(tmp_path / "report")], capsys, monkeypatch)
    assert status == 0, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    attacks = {f[3] for f in lines(root / "ASVspoof5.eval.track_2.trial.tsv") if f[4] == "spoof"}
    assert set(report["per_attack"]) == attacks


def test_extra_training_lists_are_read_in_either_layout(release, tmp_path):
    corpus, root = release
    extra_2019 = corpus / "protocols" / "ASVspoof2019.LA.cm.dev.trl.txt"
    extra_5 = tmp_path / "extra5.tsv"
    extra_5.write_text("".join(f"X{f[0]} X{f[1]} F - - - - bonafide bonafide -\n" for f in lines(extra_2019)[:4]))
    config = release_config(corpus, root)
    sampler, _ = training_sampler(build_config(config))
    assert not ({f"X{f[0]}" for f in lines(extra_2019)[:4]} | {f[0] for f in lines(extra_2019)}) & \
        set(sampler.speakers)
    config["dirs"]["extra_trn_lists"] = [str(extra_2019), str(extra_5)]
    sampler, _ = training_sampler(build_config(config))
    assert {f"X{f[0]}" for f in lines(extra_2019)[:4]} <= set(sampler.speakers)
    bona_fide = [f for f in lines(extra_2019) if f[4] == "bonafide"]
    assert {f[0] for f in bona_fide} <= set(sampler.speakers)
    assert {f[1] for f in bona_fide} | {f"X{f[1]}" for f in lines(extra_2019)[:4]} <= set(sampler.utterances())
    bad = tmp_path / "extra7.txt"
    bad.write_text("a b c d e f g\n")
    config["dirs"]["extra_trn_lists"] = [str(bad)]
    with pytest.raises(ProtocolError, match=r"extra7.txt:1: not a CM protocol or utterance list of ASVspoof 2019 "
                                            r"LA \(5 columns\) or ASVspoof 5 \(10 or 6 columns\); got 7 fields"):
        training_sampler(build_config(config))



def _copy_release(root: Path, target: Path) -> Path:
    target.mkdir()
    """A copy of the release's lists under `target`, its audio folders linked."""
    for path in root.iterdir():
        if path.is_dir():
            (target / path.name).symlink_to(path.resolve(), target_is_directory=True)
        else:
            (target / path.name).write_bytes(path.read_bytes())
    return target


def test_three_column_trials_take_their_attacks_from_the_track_1_list(release, tmp_path, capsys, monkeypatch):
    corpus, root = release
    copy = _copy_release(root, tmp_path / "release")
    trial_path = copy / "ASVspoof5.dev.track_2.trial.tsv"
    listed = lines(trial_path)
    trial_path.write_text("".join(f"{f[0]} {f[1]} {f[4]}\n" for f in listed))  # the challenge's 3 columns
    inputs = scoring_inputs(build_config(release_config(corpus, copy)), "dev")
    attack = {f[1]: f[7] for f in lines(copy / "ASVspoof5.dev.track_1.tsv")}
    assert [t.attack for t in inputs.trials] == [attack[f[1]] if f[4] == "spoof" else "bonafide" for f in listed]
    codec = {f[1]: f[3] for f in lines(copy / "ASVspoof5.dev.track_1.tsv")}
    assert inputs.codecs == [codec[f[1]] for f in listed]

    scores = tmp_path / "scores.txt"
    scores.write_text("".join(f"{f[0]} {f[1]} {f[4]} {index * 0.1}\n" for index, f in enumerate(listed)))
    common = ["--sasv_scores", str(scores), "--trials", str(trial_path), "--out", str(tmp_path / "report")]
    status, _, err = run_script("evaluate.py", common, capsys, monkeypatch)
    assert status == 2 and "the spoof trials name no attack (a 3-column trial list); give --cm_protocol" in err
    status, _, err = run_script("evaluate.py", [*common, "--cm_protocol", str(copy / "ASVspoof5.dev.track_1.tsv")],
                                capsys, monkeypatch)
    assert status == 0, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert sorted(report["per_attack"]) == sorted({attack[f[1]] for f in listed if f[4] == "spoof"})


def test_a_trial_missing_from_the_track_1_list_stops_before_scoring(release, joint, tmp_path, capsys, monkeypatch):
    corpus, root = release
    copy = _copy_release(root, tmp_path / "release")
    test_utterance = lines(copy / "ASVspoof5.eval.track_2.trial.tsv")[4][1]
    track_1 = copy / "ASVspoof5.eval.track_1.tsv"
    track_1.write_text("".join(" ".join(f) + "\n" for f in lines(track_1) if f[1] != test_utterance))
    config = write(tmp_path / "c.conf", release_config(corpus, copy, epoch=1))
    status, _, err = run_script("save_sasv_score.py", ["--config", str(config), "--model", str(joint[1]),
                                                       "--comment", str(tmp_path / "out")], capsys, monkeypatch)
    assert status == 2 and err.strip() == (
        f"error: {copy / 'ASVspoof5.eval.track_2.trial.tsv'}:5: test utterance {test_utterance} is not in {track_1}, "
        f"which gives the codec condition of every trial"), err
    assert not list((tmp_path / "out").glob("*eval*"))


def test_embedding_export_checks_every_file_before_writing(release, joint, tmp_path, capsys, monkeypatch):
    corpus, root = release
    copy = _copy_release(root, tmp_path / "release")
    (copy / "flac_D").unlink()
    (copy / "flac_D").mkdir()
    enrolled = lines(copy / "ASVspoof5.dev.track_2.enroll.tsv")
    speaker, utterances = enrolled[1][0], enrolled[1][1].split(",")
    for path in (root / "flac_D").iterdir():
        if path.stem != utterances[1]:
            (copy / "flac_D" / path.name).symlink_to(path.resolve())
    config = write(tmp_path / "c.conf", release_config(corpus, copy, epoch=1))
    common = ["--config", str(config), "--model", str(joint[1]), "--comment", str(tmp_path / "out"),
              "--partitions", "dev"]
    status, _, err = run_script("save_asv_embeddings.py", common, capsys, monkeypatch)
    assert status == 2 and err.strip() == (
        f"error: {copy / 'ASVspoof5.dev.track_2.enroll.tsv'}:2: enrollment utterance {utterances[1]} of speaker "
        f"{speaker} is missing ({copy / 'flac_D' / (utterances[1] + '.flac')})"), err
    assert not (tmp_path / "out").exists()  # checked before any output: not even the folder is made
    # with on_bad_audio: skip, that speaker gets no model, so its trials are skipped as SASV scoring skips them
    status, _, err = run_script("save_asv_embeddings.py", [*common, "--set", "on_bad_audio=skip"], capsys, monkeypatch)
    assert status == 0, err
    models = pickle.loads((tmp_path / "out" / "spk_model_dev.pk").read_bytes())
    assert sorted(models) == sorted(f[0] for f in enrolled if f[0] != speaker)
    status, _, err = run_script("save_asv_score.py", ["--config", str(config), "--comment", str(tmp_path / "out"),
                                                      "--partitions", "dev", "--set", "on_bad_audio=skip"],
                                capsys, monkeypatch)
    assert status == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics_ASV_dev.json").read_text())
    assert metrics["n_skipped_trials"] == sum(f[0] == speaker for f in lines(copy / "ASVspoof5.dev.track_2.trial.tsv"))
