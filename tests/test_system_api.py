"""scoring.system.SASVSystem and score_files.py: a trained system used on files outside its experiment folder.

A seeded tiny joint model (test_pipeline.tiny_config's networks, saved as main.py saves one, stored config
included) on the tiny synthetic corpus: its eval trials scored by save_sasv_score.py and by the API agree;
sub-systems, speaker files, calibration and the bad inputs each get their own check.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import tiny_config
from tiny_run import run_script, tiny_corpus

from data.audio import AudioError, load_waveform, read_audio
from data.corpora import recorded_config
from models.b2_backend import B2Backend
from models.build import build_asv_network, build_sasv_model, load_system
from models.checkpoint import (
    CheckpointError,
    load_sasv_weights,
    save_backend_checkpoint,
    save_checkpoint,
    save_subsystem_checkpoint,
)
from runtime.config import build_config
from scoring.extraction import Extraction
from scoring.inputs import scoring_inputs
from scoring.sasv import SASVScorer
from scoring.system import SASVSystem, SpeakerFileError, SystemInputError, TrialScore

SASV_ATOL = 1e-6  # the brief: the API's SASV score of a trial is save_sasv_score.py's within 1e-6


def _seeded_joint(config, path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model, loss = build_sasv_model(config, load_weights=False)
    save_checkpoint(path, model=model, loss=loss, config=recorded_config(config))
    return path


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    """(config, checkpoint, scoring inputs of eval, the ScoredTrials of save_sasv_score.py's scoring)."""
    torch.set_num_threads(1)
    corpus = tiny_corpus(tmp_path_factory)
    work = tmp_path_factory.mktemp("api")
    config = build_config(tiny_config(corpus), source="tiny")
    checkpoint = _seeded_joint(config, work / "exp" / "weights" / "best.ckpt", seed=0)
    # What save_sasv_score.py runs, in this process (the same load_system, SASVScorer and inputs).
    model, loss, _ = load_system(config, torch.device("cpu"), {"model": str(checkpoint)}, need=("asv", "cm", "backend"))
    inputs = scoring_inputs(config, "eval")
    scored = SASVScorer(model, loss, Extraction.from_config(config, torch.device("cpu"), progress=False)
                        ).score_trials(inputs)
    return config, checkpoint, inputs, scored


def _load(checkpoint, **options) -> tuple[SASVSystem, list[str]]:
    warnings: list[str] = []
    return SASVSystem.load(checkpoint, warn=warnings.append, **options), warnings


def _enrolled(joint) -> SASVSystem:
    _, checkpoint, inputs, _ = joint
    system, _ = _load(checkpoint)
    for speaker, paths in inputs.enrollment_paths.items():
        system.enroll(speaker, paths)
    return system


def test_api_scores_equal_save_sasv_score(joint, tmp_path, capsys, monkeypatch):
    config, checkpoint, inputs, scored = joint
    system = _enrolled(joint)
    results = system.score_trials([(t.speaker, inputs.test_path(t.utterance)) for t in inputs.trials])
    assert [r.speaker for r in results] == [t.speaker for t in inputs.trials]
    differences = {part: np.abs(np.array([getattr(r, f"{part}_score") for r in results]) - getattr(scored, part))
                   for part in ("asv", "cm", "sasv")}
    for values in differences.values():
        assert values.max() <= SASV_ATOL
    # save_sasv_score.py itself, its score file read back.
    conf = tmp_path / "tiny.conf"
    conf.write_text(json.dumps(tiny_config(Path(config["dirs"]["database"]).parent)))
    status, _, err = run_script("save_sasv_score.py", ["--config", str(conf), "--model", str(checkpoint),
                                                       "--comment", str(tmp_path / "out"), "--partitions", "eval"],
                                capsys, monkeypatch)
    assert status == 0, err
    lines = [line.split() for line in (tmp_path / "out" / "score_SASV_eval.txt").read_text().splitlines()]
    assert [(row[0], row[1]) for row in lines] == [(t.speaker, t.utterance) for t in inputs.trials]
    script = np.array([float(row[3]) for row in lines])
    assert np.abs(np.array([r.sasv_score for r in results]) - script).max() <= SASV_ATOL
    assert all(r.decision is None and r.sasv_llr is None for r in results)  # no calibration.json beside it


def test_score_files_trials_enroll_list_and_warnings(joint, tmp_path, capsys, monkeypatch):
    _, checkpoint, inputs, scored = joint
    chosen = [0, 1, len(inputs.trials) // 2, len(inputs.trials) - 1]
    enroll_list = tmp_path / "enroll.txt"
    bad_enrollment = tmp_path / "missing_enrollment.flac"
    enroll_list.write_text("".join(f"{speaker} {paths[0]}\n" for speaker, paths in inputs.enrollment_paths.items())
                           + f"ghost {bad_enrollment}\n")
    bad_test = tmp_path / "corrupt.flac"
    bad_test.write_bytes(b"not audio at all")
    trials = tmp_path / "trials.txt"
    lines = [f"{inputs.trials[i].speaker} {inputs.test_path(inputs.trials[i].utterance)}" for i in chosen]
    lines += [f"{inputs.trials[0].speaker} {bad_test}", f"ghost {inputs.test_path(inputs.trials[0].utterance)}"]
    trials.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.tsv"
    status, stdout, err = run_script("score_files.py", ["--model", str(checkpoint), "--trials", str(trials),
                                                        "--enroll_list", str(enroll_list), "--out", str(out), "--llr"],
                                     capsys, monkeypatch)
    assert status == 1, err  # some trials were left out
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert sum(str(bad_test) in line for line in warnings) == 1
    assert sum(str(bad_enrollment) in line for line in warnings) == 1
    assert sum("'ghost'" in line for line in warnings) == 1
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert rows[0] == ["speaker", "file", "asv_score", "cm_score", "sasv_score", "decision", "asv_llr", "cm_llr",
                       "sasv_llr"]
    assert len(rows) == 1 + len(chosen)
    for row, i in zip(rows[1:], chosen):
        assert row[:2] == [inputs.trials[i].speaker, str(inputs.test_path(inputs.trials[i].utterance))]
        for column, part in ((2, "asv"), (3, "cm"), (4, "sasv")):
            assert abs(float(row[column]) - getattr(scored, part)[i]) <= SASV_ATOL
        assert row[5:] == ["-", "-", "-", "-"]  # no calibration: no decision, no LLRs
    # A speaker system with tests but no speakers would write an empty table: refused instead (exit status 2).
    status, stdout, err = run_script("score_files.py", ["--model", str(checkpoint), "--test", str(bad_test)],
                                     capsys, monkeypatch)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and "--enroll" in errors[0] and stdout == "", err


def test_waveforms_score_as_their_files(joint):
    _, checkpoint, inputs, _ = joint
    speaker, enrollment = next(iter(inputs.enrollment_paths.items()))
    test = inputs.test_path(inputs.trials[0].utterance)
    by_path, _ = _load(checkpoint)
    by_wave, _ = _load(checkpoint)
    by_path.enroll(speaker, enrollment[0])
    by_wave.enroll(speaker, torch.from_numpy(read_audio(enrollment[0])))
    assert torch.equal(by_path.speaker_model(speaker), by_wave.speaker_model(speaker))
    from_path = by_path.score(speaker, test)
    from_wave = by_wave.score(speaker, [load_waveform(test, None)])[0]
    assert from_wave.test == "<waveform 0>" and from_path.test == str(test)
    for part in ("asv_score", "cm_score", "sasv_score"):
        assert getattr(from_wave, part) == getattr(from_path, part)


def test_two_enrollment_files_make_the_mean_model(joint):
    _, checkpoint, inputs, _ = joint
    (first, paths_a), (second, paths_b) = list(inputs.enrollment_paths.items())[:2]
    system, _ = _load(checkpoint)
    system.enroll(first, paths_a)
    system.enroll(second, paths_b)
    system.enroll("both", [paths_a[0], paths_b[0]])
    mean = (system.speaker_model(first) + system.speaker_model(second)) / 2
    assert torch.allclose(system.speaker_model("both"), mean, atol=1e-6)
    system.enroll("added", paths_a)
    system.enroll("added", paths_b, add=True)
    assert torch.allclose(system.speaker_model("added"), system.speaker_model("both"), atol=1e-6)
    system.enroll("added", paths_b)  # without add: replaced
    assert torch.equal(system.speaker_model("added"), system.speaker_model(second))


def test_speaker_file_round_trip_and_other_weights_refused(joint, tmp_path):
    config, checkpoint, inputs, _ = joint
    system = _enrolled(joint)
    test = inputs.test_path(inputs.trials[0].utterance)
    path = tmp_path / "speakers.npz"
    system.save_speakers(path)
    again, _ = _load(checkpoint)
    assert sorted(again.load_speakers(path)) == sorted(inputs.enrollment_paths)
    for speaker in inputs.enrollment_paths:
        assert torch.equal(again.speaker_model(speaker), system.speaker_model(speaker))
    assert again.score(inputs.trials[0].speaker, test) == system.score(inputs.trials[0].speaker, test)
    other, _ = _load(_seeded_joint(config, tmp_path / "other" / "best.ckpt", seed=1))
    with pytest.raises(SpeakerFileError) as error:
        other.load_speakers(path)
    assert str(path) in str(error.value)
    assert other.speakers == []
    not_npz = tmp_path / "speakers.txt"
    not_npz.write_text("alice 0.1 0.2\n")
    with pytest.raises(SpeakerFileError) as error:
        other.load_speakers(not_npz)
    assert str(not_npz) in str(error.value)


def test_bad_inputs_are_one_line_errors(joint, tmp_path):
    _, checkpoint, inputs, _ = joint
    system = _enrolled(joint)
    test = inputs.test_path(inputs.trials[0].utterance)
    with pytest.raises(SystemInputError) as error:
        system.score("nobody", test)
    assert "nobody" in str(error.value)
    missing = tmp_path / "missing.flac"
    with pytest.raises(AudioError) as error:
        system.score(inputs.trials[0].speaker, missing)
    assert str(missing) in str(error.value)
    with pytest.raises(AudioError) as error:
        system.score(inputs.trials[0].speaker, torch.zeros(0))
    assert "<waveform 0>" in str(error.value)
    with pytest.raises(AudioError):
        system.enroll("someone", [np.zeros(0, dtype=np.float32)])
    assert "someone" not in system.speakers


def test_wrong_or_incomplete_checkpoints_name_the_file(joint, tmp_path):
    config, checkpoint, inputs, _ = joint
    not_a_checkpoint = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_checkpoint)
    with pytest.raises(CheckpointError) as error:
        SASVSystem.load(not_a_checkpoint)
    assert str(not_a_checkpoint) in str(error.value)
    # A _fixed model's checkpoint keeping the frozen networks out: refused without them, scored with them.
    saved = torch.load(checkpoint, weights_only=True)
    backend_only = tmp_path / "fixed" / "best.ckpt"
    backend_only.parent.mkdir()
    torch.save({**saved, "asv_state": None, "cm_state": None}, backend_only)
    with pytest.raises(CheckpointError) as error:
        SASVSystem.load(backend_only)
    assert str(backend_only) in str(error.value)
    full = _enrolled(joint)
    filled, _ = _load(backend_only, asv_weights=checkpoint, cm_weights=checkpoint)
    speaker = inputs.trials[0].speaker
    filled.enroll(speaker, inputs.enrollment_paths[speaker])
    test = inputs.test_path(inputs.trials[0].utterance)
    assert filled.score(speaker, test) == full.score(speaker, test)
    # A stored config that contradicts the weights.
    mislabelled = tmp_path / "mislabelled.ckpt"
    torch.save({**saved, "config": {**saved["config"], "system": "cm"}}, mislabelled)
    with pytest.raises(CheckpointError) as error:
        SASVSystem.load(mislabelled)
    assert str(mislabelled) in str(error.value)


def _write_calibration(folder: Path, fingerprint: str, scale: float, offset: float, threshold: float) -> None:
    fit = {"scale": scale, "offset": offset, "prior": 0.5, "n_positive": 3, "n_negative": 5, "iterations": 4}
    (folder / "calibration.json").write_text(json.dumps({
        "format": "sasv-toolkit-calibration", "version": 1, "system": "sasv", "weights_sha256": fingerprint,
        "prior": 0.5, "calibrations": {"sasv": fit, "cm": {**fit, "scale": 2 * scale}},
        "decision": {"score": "sasv", "threshold": threshold, "metric": "sasv_eer", "dev_value": 0.1}}))


def test_calibration_beside_the_checkpoint(joint, tmp_path):
    _, checkpoint, inputs, scored = joint
    copy = tmp_path / "weights" / "best.ckpt"
    copy.parent.mkdir()
    copy.write_bytes(checkpoint.read_bytes())
    system, warnings = _load(copy)
    assert system.calibration is None and len(warnings) == 1 and str(copy) in warnings[0]
    threshold = float(np.median(scored.sasv))
    _write_calibration(copy.parent, system.fingerprint(), scale=3.0, offset=-0.5, threshold=threshold)
    calibrated, warnings = _load(copy)
    assert warnings == []
    pairs = [(t.speaker, inputs.test_path(t.utterance)) for t in inputs.trials[:6]]
    for speaker, _ in pairs:
        calibrated.enroll(speaker, inputs.enrollment_paths[speaker])
    for result in calibrated.score_trials(pairs):
        assert result.sasv_llr == pytest.approx(3.0 * result.sasv_score - 0.5, abs=1e-12)
        assert result.cm_llr == pytest.approx(6.0 * result.cm_score - 0.5, abs=1e-12)
        assert result.asv_llr is None  # no asv fit in the file
        assert result.decision == (result.sasv_score > threshold)
    _write_calibration(copy.parent, "0" * 64, scale=3.0, offset=-0.5, threshold=threshold)
    stale, warnings = _load(copy)
    assert stale.calibration is None and len(warnings) == 1
    raw, warnings = _load(copy, calibration=None)
    assert raw.calibration is None and warnings == []


def test_asv_alone(joint, tmp_path):
    config, _, inputs, _ = joint
    asv_config = build_config(tiny_config(Path(config["dirs"]["database"]).parent, system="asv"), source="tiny asv")
    torch.manual_seed(3)
    network = build_asv_network(asv_config).eval()
    path = save_subsystem_checkpoint(tmp_path / "asv.ckpt", asv_model=network, config=recorded_config(asv_config))
    system, _ = _load(path)
    assert system.kind == "asv" and system.parts == ("asv",)
    speaker, enrollment = next(iter(inputs.enrollment_paths.items()))
    system.enroll(speaker, enrollment)
    test = inputs.test_path(inputs.trials[0].utterance)
    result = system.score(speaker, test)
    assert result.cm_score is None and result.sasv_score is None and result.decision is None
    with torch.no_grad():  # the cosine of the two embeddings, computed here directly
        # An ASV system enrolls from utterances cut to test_samples, as its training run scores (asv_train.enrollment)
        enrolled = network(load_waveform(enrollment[0], asv_config["test_samples"])[None])[0].double()
        tested = network(load_waveform(test, asv_config["test_samples"])[None])[0].double()
    expected = float(enrolled @ tested / (enrolled.norm() * tested.norm()))
    assert result.asv_score == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow  # the full-size AASIST on three 64,600-sample inputs: some 10 s on CPU
def test_cm_alone_with_the_published_aasist_weights(fixtures, golden_json, tmp_path, capsys, monkeypatch):
    info = golden_json("aasist_fidelity.json")
    with np.load(fixtures / "golden" / "aasist_fidelity.npz") as archive:
        logits, waves = archive["aasist_logits_64600"], archive["wave_64600"]
    rows = [row for row in info["inputs"]["wave_64600"] if row["offset"] == 0]
    assert rows  # a row that is a file's first 64,600 samples: the scoring crop of the default test_samples
    system, warnings = _load(fixtures / "weights" / "AASIST.pth")
    assert system.kind == "cm" and system.test_samples == 64600 and len(warnings) == 1  # no calibration
    audio = fixtures / rows[0]["file"]
    results = system.score(None, [audio, torch.from_numpy(waves[1])])
    assert results[0].cm_score == pytest.approx(float(logits[rows[0]["row"], 1]), abs=1e-5)
    assert results[1].cm_score == pytest.approx(float(logits[1, 1]), abs=1e-5)
    assert results[0].asv_score is None and results[0].sasv_score is None
    with pytest.raises(SystemInputError):
        system.enroll("anyone", audio)
    status, stdout, err = run_script("score_files.py", ["--model", str(fixtures / "weights" / "AASIST.pth"),
                                                        "--test", str(audio)], capsys, monkeypatch)
    assert status == 0, err
    row = stdout.splitlines()[1].split("\t")
    assert row[:3] == ["-", str(audio), "-"] and row[4:] == ["-", "-"]
    assert float(row[3]) == pytest.approx(results[0].cm_score, abs=1e-6)  # alone there, batched with a waveform here


def test_trial_score_fields():
    assert [name for name in TrialScore.__dataclass_fields__] == [
        "speaker", "test", "asv_score", "cm_score", "sasv_score", "asv_llr", "cm_llr", "sasv_llr", "decision"]


def test_b2_back_end_with_the_networks_of_its_embeddings(joint, tmp_path):
    config, checkpoint, inputs, _ = joint
    b2_config = build_config(tiny_config(Path(config["dirs"]["database"]).parent, system="b2",
                                         b2={"embeddings": str(tmp_path), "hidden_dims": [8]}), source="tiny b2")
    model, _ = build_sasv_model(config, load_weights=False)
    load_sasv_weights(model, None, checkpoint)
    model.eval()
    torch.manual_seed(5)
    backend = B2Backend(32, model.cm_model.embedding_dim, [8]).eval()
    path = save_backend_checkpoint(tmp_path / "b2.ckpt", backend=backend, config=recorded_config(b2_config))
    with pytest.raises(CheckpointError) as error:
        SASVSystem.load(path)  # its ASV and CM networks are not in the file
    assert str(path) in str(error.value)
    system, _ = _load(path, asv_weights=checkpoint, cm_weights=checkpoint)
    assert system.kind == "b2" and system.enrollment_samples == b2_config["test_samples"]
    speaker, enrollment = next(iter(inputs.enrollment_paths.items()))
    system.enroll(speaker, enrollment)
    test = inputs.test_path(inputs.trials[0].utterance)
    result = system.score(speaker, test)
    with torch.no_grad():  # the back-end on the embeddings save_asv_embeddings.py would write, computed here
        enrolled = model.asv_model(load_waveform(enrollment[0], b2_config["test_samples"])[None])
        wave = load_waveform(test, b2_config["test_samples"])[None]
        cm_embedding, cm_logits = model.cm_model(wave)
        logits = backend(enrolled, model.asv_model(wave), cm_embedding)[0]
    assert result.sasv_score == pytest.approx(float(logits[1] - logits[0]), abs=1e-5)
    assert result.cm_score == pytest.approx(float(cm_logits[0, 1]), abs=1e-5)
    # export.py of the same b2 checkpoint: its back-end file gives the same score on the same embeddings.
    from models.export import export_system
    from runtime.files import staged_outputs

    with staged_outputs() as outputs:
        written = export_system(b2_config, path, "torchscript", tmp_path / "exported", outputs)
    assert sorted(p.name for p in written) == ["backend.pt", "conventions.json"]  # no asv_weight / aasist_weight set
    exported = torch.jit.load(str(tmp_path / "exported" / "backend.pt"))
    with torch.no_grad():
        exported_score = exported(enrolled, model.asv_model(wave), cm_embedding)
    assert float(exported_score[0]) == pytest.approx(float(logits[1] - logits[0]), abs=1e-5)
