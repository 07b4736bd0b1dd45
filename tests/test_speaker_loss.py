"""The auxiliary speaker-classification loss of system sasv (speaker_loss.weight > 0)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import tiny_config
from test_resume import checkpoint_tensors
from tiny_run import run_main_here, tiny_corpus, write_config

from data.protocols import read_cm_protocol
from data.trials import TARGET_BONAFIDE, TrainTrial, trial_rng
from losses import build_loss
from models.checkpoint import load_checkpoint
from runtime.config import ConfigError, build_config
from training.tasks.sasv import speaker_classification_loss, training_sampler

RUN = dict(epoch=2, trials_per_epoch=32, batch_size=8, speaker_loss={"weight": 0.5})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory)


def test_config_checks():
    with pytest.raises(ConfigError, match="speaker_loss.weight > 0 needs a trainable ASV"):
        build_config({"model_arch": "ResNetSE34V2_AASIST_OC_fixed", "speaker_loss": {"weight": 1.0}})
    with pytest.raises(ConfigError, match="'speaker_loss.weight' must be zero or more, got -1.0"):
        build_config({"speaker_loss": {"weight": -1.0}})
    assert build_config({})["speaker_loss"]["weight"] == 0.0  # off: the original recipe


def test_trials_name_the_bona_fide_speakers_of_their_utterances(corpus):
    config = build_config(tiny_config(corpus))
    sampler, _ = training_sampler(config)
    owner = {entry.utterance: entry.speaker for entry in read_cm_protocol(config["dirs"]["cm_trn_list"])}
    bona_fide = {entry.utterance for entry in read_cm_protocol(config["dirs"]["cm_trn_list"])
                 if entry.key == "bonafide"}
    kinds = set()
    for index in range(400):
        trial: TrainTrial = sampler.draw(trial_rng(3, 0, index))
        kinds.add(trial.kind)
        assert trial.enrollment in bona_fide and trial.enrollment_speaker == owner[trial.enrollment]
        expected_test = owner[trial.test] if trial.test in bona_fide else ""
        assert trial.test_speaker == expected_test
        assert (trial.kind == TARGET_BONAFIDE) == (trial.label == 0 and trial.test_speaker == trial.enrollment_speaker)
    assert kinds == {0, 1, 2, 3}
    assert sampler.speakers == sorted({owner[u] for u in bona_fide})


def test_spoofed_rows_are_left_out_of_the_speaker_loss():
    torch.manual_seed(0)
    loss = build_loss("aamsoftmax", embedding_dim=4, n_classes=3)
    embeddings = torch.randn(5, 4)
    speakers = torch.tensor([0, -1, 2, -1, 1])
    known = speakers >= 0
    expected, _ = loss(embeddings[known], speakers[known])
    assert torch.equal(speaker_classification_loss(loss, embeddings, speakers), expected)
    none = speaker_classification_loss(loss, embeddings.requires_grad_(), torch.full((5,), -1))
    assert none.item() == 0.0 and none.requires_grad


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict[str, Path]:
    """The runs both slow tests read, made once: 2 epochs straight; the same split 1 + 1 by --resume (its
    last.ckpt after the first epoch kept as `after_one`); and the first epoch again with speaker_loss.weight 0.
    All in this process, under the same thread settings (run_main_here)."""
    work = tmp_path_factory.mktemp("speaker_loss")
    straight = write_config(work / "straight" / "run.conf", corpus, **RUN)
    result = run_main_here(straight, work / "straight" / "exp")
    assert result.returncode == 0, result.stderr
    split = write_config(work / "split" / "run.conf", corpus, **RUN)
    first = run_main_here(split, work / "split" / "exp", "--set", "epoch=1")
    assert first.returncode == 0, first.stderr
    shutil.copy(work / "split" / "exp" / "run" / "weights" / "last.ckpt", work / "after_one.ckpt")
    second = run_main_here(split, work / "split" / "exp", "--resume")
    assert second.returncode == 0, second.stderr
    # As the split run's first part in every setting but the weight (same file form, same --set).
    unweighted = write_config(work / "w0" / "run.conf", corpus, **{**RUN, "speaker_loss": {"weight": 0.0}})
    result = run_main_here(unweighted, work / "w0" / "exp", "--set", "epoch=1")
    assert result.returncode == 0, result.stderr
    return {"straight": work / "straight" / "exp" / "run" / "weights" / "last.ckpt",
            "split": work / "split" / "exp" / "run" / "weights" / "last.ckpt",
            "after_one": work / "after_one.ckpt",
            "unweighted_one": work / "w0" / "exp" / "run" / "weights" / "last.ckpt"}


@pytest.mark.slow
def test_training_updates_the_speaker_classes_and_resumes_exactly(corpus, runs):
    after_one = load_checkpoint(runs["after_one"])
    final = load_checkpoint(runs["straight"])
    classes = final.meta["speaker_loss"]["weight"]
    n_speakers = len(training_sampler(build_config(tiny_config(corpus)))[0].speakers)
    assert classes.shape == (n_speakers, 32)  # one row per training speaker, asv_model.n_out wide
    assert not torch.equal(classes, after_one.meta["speaker_loss"]["weight"])  # it is trained
    assert len(final.meta["optimizer"]["param_groups"]) == 3

    resumed = load_checkpoint(runs["split"])
    assert torch.equal(resumed.meta["speaker_loss"]["weight"], classes)
    reference = checkpoint_tensors(runs["straight"])
    again = checkpoint_tensors(runs["split"])
    assert reference.keys() == again.keys()
    for key, value in reference.items():
        assert torch.equal(value, again[key]), key


@pytest.mark.slow
def test_the_speaker_loss_changes_what_the_asv_network_learns(runs):
    """Same seed and trials, weight 0 vs 0.5 for one epoch: only the added loss differs, so the ASV weights must."""
    unweighted, weighted = load_checkpoint(runs["unweighted_one"]), load_checkpoint(runs["after_one"])
    assert "speaker_loss" not in unweighted.meta and "speaker_loss" in weighted.meta
    differs = [key for key, value in unweighted.asv_state.items()
               if value.is_floating_point() and not np.allclose(value, weighted.asv_state[key])]
    assert differs
