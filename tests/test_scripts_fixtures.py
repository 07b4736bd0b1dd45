"""The four save_*.py scripts on real fixture audio with the published / reference-format weights.

A miniature ASVspoof-layout database is built from the joint-model golden trials:
test segments become dev utterances, the real enrollment FLAC files (which need the
libFLAC 1.3 fallback) become enr_audio/dev, and every script's output is compared
with the goldens produced by the original implementation.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_run import run_script as run_in_process

from metrics import MetricError
from metrics.eer import compute_eer, sasv_eers
from metrics.tdcf import min_tdcf


@pytest.fixture
def script(capsys, monkeypatch):
    """Run a save_*.py script in this process (a python start and its imports saved per call), in `cwd`, as
    `python name args... --device cpu`; returns (status, stdout, stderr)."""
    def run(name: str, *args: str, cwd: Path) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        return run_in_process(name, [*args, "--device", "cpu"], capsys, monkeypatch)

    return run


@pytest.fixture
def run_script(script):
    """As `script`, for a call that must succeed; returns its stdout."""
    def run(name: str, *args: str, cwd: Path) -> str:
        status, out, err = script(name, *args, cwd=cwd)
        assert status == 0, f"{name} failed:\n{out}\n{err}"
        return out

    return run


@pytest.fixture(scope="module")
def golden(fixtures):
    arrays = np.load(fixtures / "golden" / "joint_fidelity.npz")
    with open(fixtures / "golden" / "joint_fidelity.json") as handle:
        meta = json.load(handle)
    return arrays, meta


def enrollment_copy(utterance: str) -> str:
    return utterance.replace("LA_D_9", "LA_D_8", 1)


def speaker_of(file_name: str) -> str:
    return "_".join(Path(file_name).stem.split("_")[:2])


@pytest.fixture(scope="module")
def mini(fixtures, golden, tmp_path_factory):
    """(work dir, config path, utterance ids, claimed speakers)."""
    arrays, meta = golden
    work = tmp_path_factory.mktemp("mini_la")
    flac = work / "LA" / "ASVspoof2019_LA_dev" / "flac"
    enrollment = work / "enr_audio" / "dev"
    protocols = work / "protocols"
    for folder in (flac, enrollment, protocols):
        folder.mkdir(parents=True)
    trials, cm_lines, gi_trl, claimed = meta["trials"], [], [], []
    utterances = [f"LA_D_{9000001 + t['trial']}" for t in trials]
    stems = {}
    for trial, utt in zip(trials, utterances):
        index = trial["trial"]
        # float WAV keeps the stored test segments bit-exact
        sf.write(flac / f"{utt}.wav", arrays["test_wave"][index], 16000, subtype="FLOAT")
        enrolled = meta["enrollment"][trial["enrollment_index"]]["file"]
        speaker = speaker_of(enrolled)
        stems[speaker] = Path(enrolled).stem
        claimed.append(speaker)
        source = "A17" if trial["key"] == "spoof" else "bonafide"
        gi_trl.append(f"{speaker} {utt} {source} {trial['key']}")
        owner = speaker if trial["key"] != "nontarget" else speaker_of(trial["test_file"])
        cm_lines.append(f"{owner} {utt} - {'A17 spoof' if trial['key'] == 'spoof' else '- bonafide'}")
    for speaker, stem in stems.items():
        shutil.copy(fixtures / "audio" / f"{stem}.flac", enrollment / f"{stem}.flac")
    bona_utts = {s: [u for u, t, c in zip(utterances, trials, claimed) if c == s and t["key"] == "target"]
                 for s in stems}
    (protocols / "dev.gi.trl.txt").write_text("\n".join(gi_trl) + "\n")
    (protocols / "dev.gi.trn.txt").write_text("".join(f"{s} {stem}\n" for s, stem in stems.items()))
    (protocols / "cm.dev.txt").write_text("\n".join(cm_lines) + "\n")
    # The ASV enrollment utterances: copies of the speaker's target test segments under ids of their own (a
    # trial on one of its speaker's own enrollment utterances is refused), so a speaker model is the mean of
    # those segments' embeddings.
    for utts in bona_utts.values():
        for utt in utts:
            shutil.copy(flac / f"{utt}.wav", flac / f"{enrollment_copy(utt)}.wav")
    (protocols / "dev.enroll.txt").write_text("".join(f"{s} {','.join(map(enrollment_copy, u))}\n"
                                                      for s, u in bona_utts.items()))
    config = work / "mini.conf"
    config.write_text(json.dumps({
        "audio_ext": "wav", "eval_batch_size": 2, "loader": {"n_workers": 0},
        "dirs": {"database": str(work / "LA"), "enrollment_dir": str(work / "enr_audio"),
                 "sasv_dev_trial": str(protocols / "dev.gi.trl.txt"),
                 "sasv_dev_trn_trial": str(protocols / "dev.gi.trn.txt"),
                 "cm_dev_list": str(protocols / "cm.dev.txt"),
                 "asv_dev_enrollment_lists": [str(protocols / "dev.enroll.txt")]},
    }))
    return work, config, utterances, claimed, bona_utts


def read_score_file(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_save_sasv_score_matches_golden(fixtures, golden, mini, run_script):
    arrays, meta = golden
    work, config, utterances, claimed, _ = mini
    stdout = run_script("save_sasv_score.py", "--config", str(config), "--model",
                        str(fixtures / "golden" / "joint_seed_format.ckpt"), "--comment", "sasv", "--partitions", "dev",
                        cwd=work)
    rows = read_score_file(work / "sasv" / "score_SASV_dev.txt")
    assert [r[:3] for r in rows] == [[s, u, t["key"]] for s, u, t in zip(claimed, utterances, meta["trials"])]
    scores = np.array([float(r[3]) for r in rows])
    np.testing.assert_allclose(scores, arrays["score"], atol=1e-5, rtol=0)
    saved = json.loads((work / "sasv" / "metrics_dev.json").read_text())
    expected = sasv_eers(scores, [r[2] for r in rows])
    for name, value in expected.items():
        assert saved[name] == pytest.approx(value, abs=1e-12)
    assert "SASV-EER" in stdout and "score_SASV_dev.txt" in stdout


@pytest.mark.slow
def test_embeddings_asv_and_cm_scores_match_golden(fixtures, golden, mini, run_script):
    arrays, meta = golden
    work, config, utterances, claimed, bona_utts = mini
    run_script("save_asv_embeddings.py", "--config", str(config), "--comment", "sub",
               "--asv_model", str(fixtures / "golden" / "resnetse34v2_vox_format.model"),
               "--cm_model", str(fixtures / "weights" / "AASIST.pth"), "--partitions", "dev", cwd=work)
    with open(work / "sub" / "asv_embd_dev.pk", "rb") as handle:
        asv = pickle.load(handle)
    with open(work / "sub" / "cm_embd_dev.pk", "rb") as handle:
        cm = pickle.load(handle)
    with open(work / "sub" / "spk_model_dev.pk", "rb") as handle:
        speaker_models = pickle.load(handle)
    np.testing.assert_allclose(np.stack([asv[u] for u in utterances]), arrays["asv_tst_emb"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.stack([cm[u] for u in utterances]), arrays["cm_emb"], atol=1e-4, rtol=1e-4)
    # One sub-system alone: only its embeddings are written (the other part has no weights).
    run_script("save_asv_embeddings.py", "--config", str(config), "--comment", "asv_only",
               "--asv_model", str(fixtures / "golden" / "resnetse34v2_vox_format.model"), "--partitions", "dev",
               cwd=work)
    assert (work / "asv_only" / "asv_embd_dev.pk").is_file() and not (work / "asv_only" / "cm_embd_dev.pk").exists()
    row = {u: i for i, u in enumerate(utterances)}
    for speaker, utts in bona_utts.items():
        expected = arrays["asv_tst_emb"][[row[u] for u in utts]].mean(axis=0)
        np.testing.assert_allclose(speaker_models[speaker], expected, atol=1e-4, rtol=1e-4)

    run_script("save_asv_score.py", "--config", str(config), "--comment", "sub", "--partitions", "dev", cwd=work)
    rows = read_score_file(work / "sub" / "score_ASV_dev.txt")
    assert [r[0] for r in rows] == utterances
    enrolled = np.stack([speaker_models[s] for s in claimed])
    tests = arrays["asv_tst_emb"]
    cosine = (enrolled * tests).sum(1) / np.linalg.norm(enrolled, axis=1) / np.linalg.norm(tests, axis=1)
    np.testing.assert_allclose([float(r[1]) for r in rows], cosine, atol=1e-5)

    run_script("save_cm_score.py", "--config", str(config), "--comment", "sub", "--partitions", "dev",
               "--cm_model", str(fixtures / "weights" / "AASIST.pth"), cwd=work)
    logits = arrays["cm_logits"]
    no_softmax = read_score_file(work / "sub" / "score_CM_dev_no_softmax.txt")
    probability = read_score_file(work / "sub" / "score_CM_dev.txt")
    assert [r[0] for r in no_softmax] == utterances == [r[0] for r in probability]
    np.testing.assert_allclose([float(r[1]) for r in no_softmax], logits[:, 1], atol=1e-4, rtol=1e-4)
    softmax = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    np.testing.assert_allclose([float(r[1]) for r in probability], softmax, atol=1e-5)
    saved = json.loads((work / "sub" / "metrics_CM_dev.json").read_text())
    cm_scores = np.array([float(r[1]) for r in no_softmax])
    is_spoof = np.array([t["key"] == "spoof" for t in meta["trials"]])
    assert saved["cm_eer"] == pytest.approx(compute_eer(cm_scores[~is_spoof], cm_scores[is_spoof])[0], abs=1e-12)
    asv_scores = np.array([float(r[1]) for r in rows])
    keys = np.array([t["key"] for t in meta["trials"]])
    try:
        expected_tdcf = min_tdcf(asv_scores[keys == "target"], asv_scores[keys == "nontarget"],
                                 asv_scores[keys == "spoof"], cm_scores[~is_spoof], cm_scores[is_spoof])
    except MetricError as error:  # six trials can make the t-DCF undefined; the script must say why
        assert saved["min_tdcf"] is None and saved["min_tdcf_note"] == str(error)
    else:
        assert saved["min_tdcf"] == pytest.approx(expected_tdcf, rel=1e-9)


@pytest.mark.slow
def test_scripts_refuse_bad_input_with_one_line(fixtures, mini, tmp_path, script):
    work, config, *_ = mini
    status, _, err = script("save_sasv_score.py", "--config", str(config), "--model",
                            str(fixtures / "weights" / "AASIST.pth"), "--partitions", "dev",
                            "--comment", str(tmp_path / "out"), cwd=work)
    assert status == 2
    assert err.strip().count("\n") == 0 and "error:" in err
    assert not (tmp_path / "out" / "score_SASV_dev.txt").exists()


def _fixed_format_checkpoint(fixtures, path: Path) -> Path:
    """The joint golden checkpoint as the original's _fixed model saves it: its ASV and CM networks are
    module-level objects, not submodules, so the Lightning state dict holds the back-end (and OC centre) only."""
    import torch

    from models.checkpoint import _safe_torch_load

    raw = _safe_torch_load(fixtures / "golden" / "joint_seed_format.ckpt")
    raw["state_dict"] = {key: value for key, value in raw["state_dict"].items()
                         if not key.startswith(("model.asv_emb.", "model.cm_emb."))}
    raw["hyper_parameters"] = {"config": {"model_arch": "ResNetSE34V2_AASIST_OC_fixed"}}  # plain data here
    torch.save(raw, path)
    return path


@pytest.mark.slow
def test_fixed_model_checkpoint_takes_its_frozen_networks_from_the_weight_files(fixtures, golden, mini, tmp_path,
                                                                                 run_script, script):
    arrays, _ = golden
    work, config, *_ = mini
    fixed = _fixed_format_checkpoint(fixtures, tmp_path / "fixed.ckpt")
    asv, cm = fixtures / "golden" / "resnetse34v2_vox_format.model", fixtures / "weights" / "AASIST.pth"
    common = ["--config", str(config), "--model", str(fixed), "--partitions", "dev"]
    run_script("save_sasv_score.py", *common, "--comment", "by_args", "--asv_model", str(asv), "--cm_model", str(cm),
               cwd=work)
    scores = np.array([float(r[3]) for r in read_score_file(work / "by_args" / "score_SASV_dev.txt")])
    np.testing.assert_allclose(scores, arrays["score"], atol=1e-5, rtol=0)
    # The config's asv_weight / aasist_weight (what --set gives the script) load the very same weights.
    import torch

    from models.build import load_system
    from runtime.config import load_config

    parts = ("asv", "cm", "backend")
    by_args = load_system(load_config(config), torch.device("cpu"),
                          {"model": str(fixed), "asv_model": str(asv), "cm_model": str(cm)}, need=parts)
    by_config = load_system(load_config(config, [f"asv_weight={asv}", f"aasist_weight={cm}"]), torch.device("cpu"),
                            {"model": str(fixed), "asv_model": None, "cm_model": None}, need=parts)
    for one, other in zip(by_args[:2], by_config[:2]):
        assert one.state_dict().keys() == other.state_dict().keys()
        assert all(torch.equal(value, other.state_dict()[key]) for key, value in one.state_dict().items())
    # Without them the frozen networks would be random: refused, naming what is missing.
    status, _, err = script("save_sasv_score.py", *common, "--comment", str(tmp_path / "none"), cwd=work)
    assert status == 2 and "no weights for the asv and cm part(s)" in err


@pytest.mark.slow
def test_init_checkpoint_parts_are_not_replaced_by_the_subsystem_weight_files(fixtures, tmp_path):
    import torch

    from models.build import build_sasv_model
    from models.checkpoint import load_checkpoint
    from runtime.config import build_config

    joint = fixtures / "golden" / "joint_seed_format.ckpt"
    other = tmp_path / "other_asv.model"  # a different ResNetSE34V2 in voxceleb_trainer's format
    torch.manual_seed(5)
    network = build_sasv_model(build_config({}), load_weights=False)[0].asv_model
    torch.save({f"__S__.{key}": value for key, value in network.state_dict().items()}, other)
    model, _ = build_sasv_model(build_config({"init_checkpoint": str(joint), "asv_weight": str(other),
                                              "aasist_weight": str(fixtures / "weights" / "AASIST-L.pth"),
                                              "aasist_config": str(fixtures / "weights" / "AASIST.conf")}))
    held = load_checkpoint(joint)
    for key, value in held.asv_state.items():
        assert torch.equal(model.asv_model.state_dict()[key], value), key
    for key, value in held.cm_state.items():
        assert torch.equal(model.cm_model.state_dict()[key], value), key
    fixed = _fixed_format_checkpoint(fixtures, tmp_path / "fixed.ckpt")  # back-end only: the files fill in
    model, _ = build_sasv_model(build_config({"init_checkpoint": str(fixed), "asv_weight": str(other),
                                              "aasist_config": str(fixtures / "weights" / "AASIST.conf")}))
    for key, value in network.state_dict().items():
        assert torch.equal(model.asv_model.state_dict()[key], value), key
