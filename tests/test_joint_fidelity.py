"""Joint SASV model (ResNetSE34V2 + AASIST + back-end + OC-softmax) against the seed's reference scores.

Each unique 60 s enrollment goes through the ResNet once (that is the slow part on CPU);
trials then use the cached embeddings, and one batch runs the full joint forward to show
that the cached path and the joint path agree.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losses import OCSoftmax, build_loss
from models.aasist import AASIST
from models.checkpoint import load_checkpoint, load_sasv_weights, save_checkpoint
from models.resnet_se34v2 import ResNetSE34V2
from models.sasv import SASVBackend, SASVModel

# Every test here needs a trained run or a real model (a module fixture): seconds to minutes.
pytestmark = pytest.mark.slow

SCORE_ATOL = 1e-5  # README section 7: scores
EMB_TOL = 1e-4  # README section 7: embeddings and feats (atol and rtol)


def build_joint(fixtures) -> tuple[SASVModel, OCSoftmax]:
    config = json.loads((fixtures / "weights" / "AASIST.conf").read_text())["model_config"]
    model = SASVModel(ResNetSE34V2(), AASIST(config), SASVBackend())
    return model, OCSoftmax(feat_dim=256, r_real=0.8, r_fake=0.2, alpha=10.0)


@pytest.fixture(scope="module")
def info(golden_json) -> dict:
    return golden_json("joint_fidelity.json")


@pytest.fixture(scope="module")
def golden(fixtures) -> dict[str, torch.Tensor]:
    with np.load(fixtures / "golden" / "joint_fidelity.npz") as archive:
        return {key: torch.from_numpy(archive[key]) for key in archive.files}


@pytest.fixture(scope="module")
def batches(info, golden) -> list[slice]:
    size = int(re.search(r"batches of (\d+)", info["batching"]).group(1))
    n_trials = len(golden["labels"])
    return [slice(start, min(start + size, n_trials)) for start in range(0, n_trials, size)]


@pytest.fixture(scope="module")
def joint(fixtures, info):
    torch.set_num_threads(2)
    model, loss = build_joint(fixtures)
    checkpoint = load_sasv_weights(model, loss, fixtures / info["checkpoint"]["file"])
    return model.eval(), loss.eval(), checkpoint


@pytest.fixture(scope="module")
def cached(joint, golden, batches) -> dict[str, torch.Tensor]:
    """Embeddings and scores through the cached path, batched like the reference."""
    model, loss, _ = joint
    with torch.no_grad():
        unique_enrollment = torch.cat([model.asv_embedding(wave[None]) for wave in golden["enr_wave"]])
        enrollment = unique_enrollment[golden["trial_enr_index"].long()]
        parts = {"asv_tst_emb": [], "cm_emb": [], "cm_logits": [], "feats": [], "score": []}
        for batch in batches:
            test_wave = golden["test_wave"][batch]
            asv_test = model.asv_embedding(test_wave)
            cm_embedding, cm_logits = model.cm_embedding(test_wave)
            feats = model.score_embeddings(enrollment[batch], asv_test, cm_embedding)
            _, score = loss(feats, golden["labels"][batch].long())
            for key, value in zip(parts, (asv_test, cm_embedding, cm_logits, feats, score)):
                parts[key].append(value)
    result = {key: torch.cat(values) for key, values in parts.items()}
    result["asv_enr_emb"] = enrollment
    return result


def test_checkpoint_parts_and_plain_config(joint):
    _, _, checkpoint = joint
    assert checkpoint.format == "lightning"
    assert all(part is not None for part in (checkpoint.asv_state, checkpoint.cm_state, checkpoint.backend_state,
                                             checkpoint.oc_center))
    config = checkpoint.config
    assert type(config) is dict and config["batch_size"] == 20
    assert type(config["dirs"]) is dict and config["dirs"]["sasv_eval_trial"].endswith(".txt")
    assert config["optim"]["oc_dim"] == 256 and config["loss_weight"] == [0.1, 0.9]
    assert checkpoint.meta["epoch"] == 7 and checkpoint.meta["global_step"] == 16800

    def assert_plain(value):
        assert type(value) in (dict, list, str, int, float, bool, type(None)), type(value)
        for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
            assert_plain(item)

    assert_plain(config)


@pytest.mark.parametrize("key", ["asv_enr_emb", "asv_tst_emb", "cm_emb", "cm_logits", "feats"])
def test_embeddings_match_reference(cached, golden, key):
    torch.testing.assert_close(cached[key], golden[key], atol=EMB_TOL, rtol=EMB_TOL)


def test_scores_match_reference(cached, golden):
    torch.testing.assert_close(cached["score"], golden["score"], atol=SCORE_ATOL, rtol=0)


def test_scores_one_trial_at_a_time(joint, cached, golden):
    model, loss, _ = joint
    scores = []
    with torch.no_grad():
        for trial in range(len(golden["labels"])):
            test_wave = golden["test_wave"][trial:trial + 1]
            cm_embedding, _ = model.cm_embedding(test_wave)
            feats = model.score_embeddings(cached["asv_enr_emb"][trial:trial + 1], model.asv_embedding(test_wave),
                                           cm_embedding)
            scores.append(loss.score(feats))
    torch.testing.assert_close(torch.cat(scores), golden["score_batch1"], atol=SCORE_ATOL, rtol=0)


def test_joint_forward_equals_cached_path(joint, cached, golden, batches):
    model, loss, _ = joint
    batch = batches[0]
    enrollment_wave = golden["enr_wave"][golden["trial_enr_index"][batch].long()]
    with torch.no_grad():
        feats = model(enrollment_wave, golden["test_wave"][batch])
    torch.testing.assert_close(feats, cached["feats"][batch], atol=EMB_TOL, rtol=EMB_TOL)
    torch.testing.assert_close(loss.score(feats), cached["score"][batch], atol=SCORE_ATOL, rtol=0)
    torch.testing.assert_close(loss.score(feats), golden["score"][batch], atol=SCORE_ATOL, rtol=0)


@pytest.mark.parametrize("branch", ["asv_enr_emb", "asv_tst_emb", "cm_emb"])
def test_wrong_branch_is_detected(joint, cached, golden, branch):
    model, loss, _ = joint
    inputs = {key: cached[key] for key in ("asv_enr_emb", "asv_tst_emb", "cm_emb")}
    inputs[branch] = inputs[branch].roll(1, dims=0)  # each trial gets its neighbour's embedding
    with torch.no_grad():
        scores = loss.score(model.score_embeddings(*inputs.values()))
    # The reference moves by 4.6e-3 .. 2.4e-2 here: a broken branch cannot hide inside the tolerance.
    assert (scores - golden["score"]).abs().max() > 100 * SCORE_ATOL


def test_save_and_reload_gives_identical_scores(fixtures, joint, cached, golden, batches, tmp_path):
    model, loss, checkpoint = joint
    path = tmp_path / "joint.ckpt"
    save_checkpoint(path, model=model, loss=loss, config=checkpoint.config, extra=dict(checkpoint.meta))

    reloaded, reloaded_loss = build_joint(fixtures)
    assert load_sasv_weights(reloaded, reloaded_loss, path).format == "sasv"
    reloaded.eval()
    for original, copy in ((model, reloaded), (loss, reloaded_loss)):
        original_state, copy_state = original.state_dict(), copy.state_dict()
        assert set(original_state) == set(copy_state)
        assert all(torch.equal(original_state[key], copy_state[key]) for key in original_state)
    assert load_checkpoint(path).config == checkpoint.config

    # Same batch shape and threads as the cached path, so the scores must agree bit for bit.
    batch = batches[-1]
    with torch.no_grad():
        test_wave = golden["test_wave"][batch]
        cm_embedding, _ = reloaded.cm_embedding(test_wave)
        feats = reloaded.score_embeddings(cached["asv_enr_emb"][batch], reloaded.asv_embedding(test_wave),
                                          cm_embedding)
    torch.testing.assert_close(reloaded_loss.score(feats), cached["score"][batch], atol=0, rtol=0)


def test_oc_softmax_loss_value_and_gradient(cached, golden):
    torch.manual_seed(0)
    loss_fn = build_loss("ocsoftmax", feat_dim=256, r_real=0.8, r_fake=0.2, alpha=10.0)
    feats = cached["feats"].clone().requires_grad_(True)
    labels = golden["labels"].long()
    loss, scores = loss_fn(feats, labels)
    expected_scores = F.normalize(cached["feats"], dim=1) @ F.normalize(loss_fn.center.detach(), dim=1)[0]
    torch.testing.assert_close(scores.detach(), expected_scores)
    margins = torch.where(labels == 0, 0.8 - expected_scores, expected_scores - 0.2)
    torch.testing.assert_close(loss.detach(), F.softplus(10.0 * margins).mean())
    loss.backward()
    assert feats.grad is not None and loss_fn.center.grad is not None
    assert feats.grad.abs().sum() > 0 and loss_fn.center.grad.abs().sum() > 0


def test_build_loss_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown loss 'amsoftmax'.*ocsoftmax"):
        build_loss("amsoftmax")


def test_python_api_scores_the_seed_checkpoint_as_the_reference(fixtures, info, golden):
    """The published seed (Lightning) checkpoint through scoring.system.SASVSystem: enrollments and tests given
    as waveforms (already at the reference's lengths, so the crop rule leaves them as they are), scores as the
    original save_sasv_score.py's."""
    from scoring.system import SASVSystem

    enrollment_samples = golden["enr_wave"].shape[1]
    warnings: list[str] = []
    # Its stored config names the seed's ./aasist/config/AASIST.conf, which is not here: config= replaces it.
    system = SASVSystem.load(fixtures / info["checkpoint"]["file"], warn=warnings.append,
                             config={"aasist_config": str(fixtures / "weights" / "AASIST.conf")},
                             enrollment_samples=enrollment_samples)
    assert system.kind == "sasv" and system.test_samples == golden["test_wave"].shape[1]
    assert len(warnings) == 1 and "raw scores" in warnings[0]  # no calibration.json beside a published file
    # The trials of the first enrollment only: each 60 s enrollment costs seconds of ResNet on a CPU.
    trials = (golden["trial_enr_index"] == 0).nonzero().flatten()
    system.enroll("speaker0", golden["enr_wave"][0].numpy())
    results = system.score_trials([("speaker0", golden["test_wave"][int(i)].numpy()) for i in trials])
    scores = torch.tensor([result.sasv_score for result in results], dtype=golden["score"].dtype)
    assert len(scores) >= 2
    torch.testing.assert_close(scores, golden["score"][trials], atol=SCORE_ATOL, rtol=0)
