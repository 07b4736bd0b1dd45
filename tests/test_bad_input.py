"""Bad input: one clear line naming the file, line or key, exit status 2, nothing half-written;
and `on_bad_audio: skip`, which leaves bad audio out without dropping any trial silently."""
from __future__ import annotations

import csv
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from tiny_run import QUIET_ENV, REPO, run_script, temporaries, tiny_corpus, write_config

from data.audio import AudioError
from data.datasets import TrainTrialDataset, partition_audio_dir
from data.protocols import read_enrollment_files, read_sasv_trials
from data.trials import trial_rng
from metrics.eer import sasv_eers
from models.build import build_sasv_model
from models.checkpoint import save_checkpoint
from runtime.config import build_config
from training.tasks.sasv import training_sampler

PROTOCOLS = "protocols"
DEV_TRIALS = f"{PROTOCOLS}/ASVspoof2019.LA.asv.dev.gi.trl.txt"
DEV_ENROLLMENT = f"{PROTOCOLS}/ASVspoof2019.LA.asv.dev.gi.trn.txt"
CM_TRAIN = f"{PROTOCOLS}/ASVspoof2019.LA.cm.train.trn.txt"
RUN = dict(epoch=1, trials_per_epoch=16, batch_size=8, loader={"n_workers": 1})  # errors come from a worker


@pytest.fixture(scope="module")
def shared_corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def model_file(shared_corpus, tmp_path_factory) -> Path:
    """An untrained joint checkpoint of the tiny architecture (scoring needs weights, not a good model)."""
    torch.manual_seed(0)
    model, loss = build_sasv_model(build_config(_tiny(shared_corpus)), load_weights=False)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.ckpt", model=model, loss=loss, config=None)


def _tiny(corpus: Path, **overrides) -> dict:
    from test_pipeline import tiny_config

    return tiny_config(corpus, **{**RUN, **overrides})


class Work:
    """A private copy of the tiny corpus, a config over it and an output folder."""

    def __init__(self, root: Path, folder: Path) -> None:
        self.root, self.folder = root, folder
        self.out = folder / "out"

    def config(self, **overrides) -> Path:
        return write_config(self.folder / "run.conf", self.root, **{**RUN, **overrides})

    def dev_audio(self, utterance: str) -> Path:
        return partition_audio_dir(self.root / "LA", "dev") / f"{utterance}.flac"

    def first_dev_trial(self):
        return read_sasv_trials(self.root / DEV_TRIALS)[0]

    def edit_line(self, relative: str, number: int, edit) -> Path:
        path = self.root / relative
        lines = path.read_text().splitlines()
        lines[number - 1] = edit(lines[number - 1])
        path.write_text("\n".join(line for line in lines if line is not None) + "\n")
        return path


@pytest.fixture()
def work(shared_corpus, tmp_path, monkeypatch) -> Work:
    root = tmp_path / "corpus"
    shutil.copytree(shared_corpus, root)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SASV_AUDIO_CACHE", "")  # no decode cache outside the test folder
    torch.set_num_threads(1)
    return Work(root, tmp_path)


def score(work: Work, model_file: Path, capsys, monkeypatch, *extra: str, config: Path | None = None):
    argv = ["--config", str(config or work.config()), "--model", str(model_file), "--partitions", "dev",
            "--comment", str(work.out), *extra]
    return run_script("save_sasv_score.py", argv, capsys, monkeypatch)


def train(work: Work, capsys, monkeypatch, *extra: str, config: Path | None = None):
    argv = ["--config", str(config or work.config()), "--output_dir", str(work.folder / "exp"), "--no_progress", *extra]
    return run_script("main.py", argv, capsys, monkeypatch)


def assert_one_line_error(result: tuple[int, str, str], *needles: str) -> str:
    status, _, err = result
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def assert_nothing_half_written(*folders: Path) -> None:
    for folder in folders:
        if folder.exists():
            assert not temporaries(folder)
            assert not list(folder.rglob("score_*.txt")) and not list(folder.rglob("metrics*"))


# --------------------------------------------------------------------------- bad audio files
def _noise(samples: int, channels: int = 1) -> np.ndarray:
    shape = (samples, channels) if channels > 1 else (samples,)
    return (np.random.default_rng(0).standard_normal(shape) * 0.1).astype(np.float32)


def _nan_wav(path: Path) -> None:
    samples = _noise(16000)
    samples[500] = np.nan
    soundfile.write(path, samples, 16000, format="WAV", subtype="FLOAT")  # read by content, not by name


DAMAGE = {
    "missing": (lambda path: path.unlink(), "is missing ("),  # found before scoring, naming the list line
    "truncated": (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "truncated"),
    "corrupt": (lambda path: path.write_bytes(path.read_bytes()[:200] + bytes(range(256)) * 4
                                              + path.read_bytes()[1224:]), "cannot decode"),
    "zero_length": (lambda path: path.write_bytes(b""), "empty audio file (0 bytes)"),
    "8_khz": (lambda path: soundfile.write(path, _noise(8000), 8000, format="FLAC"), "is 8000 Hz, expected 16000 Hz"),
    "stereo": (lambda path: soundfile.write(path, _noise(16000, 2), 16000, format="FLAC"), "has 2 channels"),
    "nan_samples": (_nan_wav, "NaN/inf samples"),
    # Under data.audio.MIN_AUDIO_MS (1600 samples at 16 kHz): found before scoring from the header.
    "one_sample": (lambda path: soundfile.write(path, _noise(1), 16000, format="FLAC"), "too short: 1 samples"),
    "just_too_short": (lambda path: soundfile.write(path, _noise(1599), 16000, format="FLAC"),
                       "too short: 1599 samples"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_bad_test_audio_in_scoring(work, model_file, capsys, monkeypatch, damage):
    victim = work.dev_audio(work.first_dev_trial().utterance)
    corrupt, expected = DAMAGE[damage]
    corrupt(victim)
    assert_one_line_error(score(work, model_file, capsys, monkeypatch), str(victim), expected)
    assert_nothing_half_written(work.out)


def test_short_test_audio_is_refused_before_scoring_naming_the_trial_line(work, model_file, capsys, monkeypatch):
    trials = read_sasv_trials(work.root / DEV_TRIALS)
    victim = trials[-1].utterance  # first listed on the line of its first trial
    first_line = 1 + next(index for index, trial in enumerate(trials) if trial.utterance == victim)
    soundfile.write(work.dev_audio(victim), _noise(1599), 16000, format="FLAC")
    line = assert_one_line_error(score(work, model_file, capsys, monkeypatch), str(work.dev_audio(victim)),
                                 "too short")
    assert f"{DEV_TRIALS}:{first_line}: utterance {victim}" in line
    assert_nothing_half_written(work.out)


def test_short_enrollment_file_is_refused_naming_the_enrollment_line(work, model_file, capsys, monkeypatch):
    speakers = list(read_enrollment_files(work.root / DEV_ENROLLMENT).items())
    number, (speaker, stem) = len(speakers), speakers[-1]
    enrollment = work.root / "enr_audio" / "dev" / f"{stem}.flac"
    soundfile.write(enrollment, _noise(1), 16000, format="FLAC")
    line = assert_one_line_error(score(work, model_file, capsys, monkeypatch), str(enrollment), "too short")
    assert f"{DEV_ENROLLMENT}:{number}: enrollment file of speaker {speaker}" in line
    assert_nothing_half_written(work.out)


@pytest.mark.slow
def test_short_audio_under_skip_is_left_out_like_unreadable_audio(work, model_file, capsys, monkeypatch):
    trials = read_sasv_trials(work.root / DEV_TRIALS)
    victim = trials[0].utterance
    soundfile.write(work.dev_audio(victim), _noise(1), 16000, format="FLAC")
    status, _, err = score(work, model_file, capsys, monkeypatch, config=work.config(on_bad_audio="skip"))
    assert status == 0, err
    rows = _score_rows(work.out / "score_SASV_dev.txt")
    assert [row[3] == "nan" for row in rows] == [t.utterance == victim for t in trials]
    saved = json.loads((work.out / "metrics_dev.json").read_text())
    assert saved["n_skipped_trials"] == sum(t.utterance == victim for t in trials) > 0
    assert "too short" in saved["skipped_audio"][str(work.dev_audio(victim))]


@pytest.mark.slow
def test_short_training_audio_stops_training(work, capsys, monkeypatch):
    values = _tiny(work.root)
    trial = training_sampler(build_config(values))[0].draw(trial_rng(values["seed"], 0, 0))
    victim = partition_audio_dir(work.root / "LA", "train") / f"{trial.enrollment}.flac"
    soundfile.write(victim, _noise(1), 16000, format="FLAC")
    result = train(work, capsys, monkeypatch, config=work.config(loader={"n_workers": 0}))
    assert_one_line_error(result, str(victim), "too short")
    assert not list((work.folder / "exp").rglob("*.ckpt"))


@pytest.mark.slow
def test_bad_training_audio_in_a_worker_subprocess(work):
    """The real CLI: an AudioError raised in a DataLoader worker process is one line, exit status 2."""
    config = work.config()
    values = json.loads(config.read_text())
    trial = training_sampler(build_config(values))[0].draw(trial_rng(values["seed"], 0, 0))
    victim = partition_audio_dir(work.root / "LA", "train") / f"{trial.test}.flac"
    victim.write_bytes(victim.read_bytes()[:100])
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "--config", str(config), "--output_dir",
                             str(work.folder / "exp"), "--no_progress"], capture_output=True, text=True, timeout=600,
                            cwd=work.folder, env={**__import__("os").environ, **QUIET_ENV, "SASV_AUDIO_CACHE": ""})
    assert_one_line_error((result.returncode, result.stdout, result.stderr), str(victim), "cannot decode")
    experiment = work.folder / "exp" / "run"
    assert not (experiment / "metrics.csv").exists() and not list(experiment.rglob("*.ckpt"))
    assert not temporaries(experiment)


def test_missing_enrollment_file(work, model_file, capsys, monkeypatch):
    speaker, stem = next(iter(read_enrollment_files(work.root / DEV_ENROLLMENT).items()))
    enrollment = work.root / "enr_audio" / "dev" / f"{stem}.flac"
    enrollment.unlink()
    assert_one_line_error(score(work, model_file, capsys, monkeypatch), str(enrollment), speaker, "missing")
    assert_nothing_half_written(work.out)


# --------------------------------------------------------------------------- protocols
def test_trial_line_with_wrong_field_count(work, model_file, capsys, monkeypatch):
    path = work.edit_line(DEV_TRIALS, 2, lambda line: " ".join(line.split()[:3]))
    assert_one_line_error(score(work, model_file, capsys, monkeypatch), f"{path}:2:", "expected 4 fields")


def test_trial_with_unknown_key(work, model_file, capsys, monkeypatch):
    path = work.edit_line(DEV_TRIALS, 3, lambda line: line.replace("target", "targett"))
    assert_one_line_error(score(work, model_file, capsys, monkeypatch), f"{path}:3:", "unknown trial key 'targett'")


def test_trial_on_the_speaker_s_own_enrollment_utterance(work, model_file, capsys, monkeypatch):
    """ASVspoof 2019 LA: the utterances behind a speaker's concatenated enrollment file are in
    asv.dev.{female,male}.trn.txt; a trial testing the speaker on one of them is refused at read time."""
    trial = read_sasv_trials(work.root / DEV_TRIALS)[2]
    lists = [work.root / f"{PROTOCOLS}/ASVspoof2019.LA.asv.dev.{gender}.trn.txt" for gender in ("female", "male")]
    where, enrolled = next((f"{path}:{number}", line.split()[1].split(",")[0]) for path in lists
                           for number, line in enumerate(path.read_text().splitlines(), start=1)
                           if line.split()[0] == trial.speaker)
    path = work.edit_line(DEV_TRIALS, 3, lambda line: line.replace(trial.utterance, enrolled))
    line = assert_one_line_error(score(work, model_file, capsys, monkeypatch), f"{path}:3:", enrolled,
                                 f"({where})")
    assert trial.speaker in line
    assert_nothing_half_written(work.out)


def test_trial_whose_speaker_has_no_enrollment(work, model_file, capsys, monkeypatch):
    enrollment_list = work.edit_line(DEV_ENROLLMENT, 1, lambda line: None)
    speaker = work.first_dev_trial().speaker
    trials = read_sasv_trials(work.root / DEV_TRIALS)
    line = next(i for i, t in enumerate(trials, start=1) if t.speaker == speaker)
    assert_one_line_error(score(work, model_file, capsys, monkeypatch), f"{work.root / DEV_TRIALS}:{line}:",
                          f"speaker '{speaker}' has no enrollment in {enrollment_list}")


@pytest.mark.parametrize("edit, expected", [
    (lambda line: line + " extra", "expected 5 fields, got 6"),
    (lambda line: line.replace("bonafide", "bonafied"), "unknown CM key 'bonafied'"),
])
def test_training_protocol_line(work, capsys, monkeypatch, edit, expected):
    path = work.edit_line(CM_TRAIN, 4, edit)
    assert_one_line_error(train(work, capsys, monkeypatch), f"{path}:4:", expected)


def test_duplicate_utterance_id(work, capsys, monkeypatch):
    path = work.root / CM_TRAIN
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    utterance = lines[0].split()[1]
    assert_one_line_error(train(work, capsys, monkeypatch), f"{path}:{len(lines) + 1}:",
                          f"duplicate utterance id '{utterance}' (first on line 1)")


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("change, expected", [
    ({"optim": {"lrr": 0.1}}, "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
    ({"batch_size": "eight"}, "key 'batch_size' must be an integer, got 'eight'"),
    ({"optim": 0.1}, "section 'optim' must be a mapping"),
    ({"on_bad_audio": "ignore"}, "key 'on_bad_audio' is 'ignore'; valid values: error, skip"),
])
def test_config_mistakes(work, capsys, monkeypatch, change, expected):
    config = work.config()
    values = json.loads(config.read_text())
    values.update(change)
    config.write_text(json.dumps(values))
    assert_one_line_error(train(work, capsys, monkeypatch, config=config), str(config), expected)
    assert not (work.folder / "exp").exists()


def test_config_without_the_dirs_section(work, capsys, monkeypatch):
    config = work.config()
    values = json.loads(config.read_text())
    del values["dirs"]
    config.write_text(json.dumps(values))
    assert_one_line_error(train(work, capsys, monkeypatch, config=config), str(config), "dirs.database is not set")


def test_config_yaml_syntax_error_names_the_line(work, capsys, monkeypatch):
    config = work.folder / "broken.conf"
    config.write_text('{\n  "seed": 1,\n  "epoch": [2,\n}\n')
    assert_one_line_error(train(work, capsys, monkeypatch, config=config), f"{config}: line 4")


def test_unknown_key_on_the_command_line(work, capsys, monkeypatch):
    assert_one_line_error(train(work, capsys, monkeypatch, "--set", "optim.lrr=1"),
                          "--set optim.lrr=1: unknown key 'optim.lrr'")


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_of_another_architecture(work, capsys, monkeypatch, tmp_path):
    values = _tiny(work.root)
    values["asv_model"] = {**values["asv_model"], "n_out": 24}
    model, loss = build_sasv_model(build_config(values), load_weights=False)
    other = save_checkpoint(tmp_path / "wider.ckpt", model=model, loss=loss, config=None)
    message = assert_one_line_error(score(work, other, capsys, monkeypatch), str(other), "do not fit the model",
                                    "with another shape")
    assert "fc.weight" in message
    assert_one_line_error(train(work, capsys, monkeypatch, "--set", f"init_checkpoint={other}"), str(other),
                          "do not fit the model")


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"PK\x03\x04" + bytes(100)])
def test_file_that_is_not_a_checkpoint(work, capsys, monkeypatch, tmp_path, content):
    fake = tmp_path / "fake.ckpt"
    fake.write_bytes(content)
    assert_one_line_error(score(work, fake, capsys, monkeypatch), str(fake), "not a readable PyTorch checkpoint")


def test_truncated_checkpoint(work, model_file, capsys, monkeypatch, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    assert_one_line_error(score(work, truncated, capsys, monkeypatch), str(truncated), "not a readable")


# --------------------------------------------------------------------------- on_bad_audio: skip
def test_skip_redraws_training_trials_deterministically(work):
    values = _tiny(work.root)
    sampler, _ = training_sampler(build_config(values))
    first = sampler.draw(trial_rng(values["seed"], 0, 0))
    folder = partition_audio_dir(work.root / "LA", "train")
    (folder / f"{first.test}.flac").unlink()
    options = dict(samples=8000, crop="first", seed=values["seed"])
    with pytest.raises(AudioError, match=first.test):
        TrainTrialDataset(sampler, folder, **options)[0, 0]
    skipping = TrainTrialDataset(sampler, folder, on_bad_audio="skip", **options)
    enrollment, test, label, redraws, _ = skipping[0, 0]
    assert redraws >= 1 and enrollment.shape == test.shape == (8000,)
    again = skipping[0, 0]
    assert again[3] == redraws and torch.equal(again[0], enrollment) and torch.equal(again[1], test)
    index = next(i for i in range(1, 50)
                 if first.test not in vars(sampler.draw(trial_rng(values["seed"], 0, i))).values())
    untouched, reference = skipping[0, index], TrainTrialDataset(sampler, folder, **options)[0, index]
    assert untouched[3] == 0 and torch.equal(untouched[0], reference[0]) and torch.equal(untouched[1], reference[1])


def _score_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_skip_in_scoring_marks_counts_and_excludes(work, model_file, capsys, monkeypatch):
    clean = score(work, model_file, capsys, monkeypatch, config=work.config(on_bad_audio="skip"))
    assert clean[0] == 0, clean[2]
    clean_rows = _score_rows(work.out / "score_SASV_dev.txt")
    shutil.rmtree(work.out)

    trials = read_sasv_trials(work.root / DEV_TRIALS)
    bad_utterance = trials[0].utterance
    work.dev_audio(bad_utterance).write_bytes(b"")
    speaker, stem = list(read_enrollment_files(work.root / DEV_ENROLLMENT).items())[-1]
    (work.root / "enr_audio" / "dev" / f"{stem}.flac").unlink()
    status, out, err = score(work, model_file, capsys, monkeypatch, config=work.config(on_bad_audio="skip"))
    assert status == 0, err

    skipped = np.array([t.utterance == bad_utterance or t.speaker == speaker for t in trials])
    rows = _score_rows(work.out / "score_SASV_dev.txt")
    assert [row[:3] for row in rows] == [row[:3] for row in clean_rows]  # no trial dropped
    assert [row[3] == "nan" for row in rows] == skipped.tolist()
    assert [row for row, skip in zip(rows, skipped) if not skip] == \
        [row for row, skip in zip(clean_rows, skipped) if not skip]  # the other scores are unchanged
    saved = json.loads((work.out / "metrics_dev.json").read_text())
    assert saved["n_trials"] == len(trials) and saved["n_skipped_trials"] == int(skipped.sum()) > 0
    assert sorted(saved["skipped_audio"]) == sorted([str(work.dev_audio(bad_utterance)),
                                                     str(work.root / "enr_audio" / "dev" / f"{stem}.flac")])
    kept = [row for row, skip in zip(rows, skipped) if not skip]
    expected = sasv_eers(np.array([float(row[3]) for row in kept]), [row[2] for row in kept])
    assert saved["sasv_eer"] == pytest.approx(expected["sasv_eer"], abs=1e-12)
    assert f"{int(skipped.sum())} of {len(trials)} trials skipped" in err and bad_utterance in err


@pytest.mark.slow
def test_skip_in_training_and_dev_scoring(work, capsys, monkeypatch):
    values = _tiny(work.root)
    first = training_sampler(build_config(values))[0].draw(trial_rng(values["seed"], 0, 0))
    (partition_audio_dir(work.root / "LA", "train") / f"{first.enrollment}.flac").write_bytes(b"broken")
    bad_dev = work.first_dev_trial().utterance
    work.dev_audio(bad_dev).unlink()
    # In this process a worker's warnings would go to its own copy of the captured stderr: no workers.
    config = work.config(on_bad_audio="skip", loader={"n_workers": 0})
    status, out, err = train(work, capsys, monkeypatch, config=config)
    assert status == 0, err
    experiment = work.folder / "exp" / "run"
    with open(experiment / "metrics.csv") as handle:
        row = next(csv.DictReader(handle))
    trials = read_sasv_trials(work.root / DEV_TRIALS)
    assert int(row["redrawn_trials"]) >= 1
    assert int(row["dev_skipped_trials"]) == sum(t.utterance == bad_dev for t in trials)
    assert first.enrollment in err and "skipping training audio" in err
    assert sum(r[3] == "nan" for r in _score_rows(experiment / "scores" / "dev_epoch_001.txt")) == \
        int(row["dev_skipped_trials"])
    assert json.loads((experiment / "metrics_eval.json").read_text())["n_skipped_trials"] == 0


def test_skip_through_the_sub_system_scripts(work, model_file, capsys, monkeypatch):
    config = work.config(on_bad_audio="skip")
    bad = work.first_dev_trial().utterance
    work.dev_audio(bad).write_bytes(b"")
    common = ["--config", str(config), "--comment", str(work.out), "--partitions", "dev"]
    status, _, err = run_script("save_asv_embeddings.py", common + ["--model", str(model_file)], capsys, monkeypatch)
    assert status == 0 and bad in err, err
    with open(work.out / "asv_embd_dev.pk", "rb") as handle:
        embeddings = pickle.load(handle)
    assert bad not in embeddings and len(embeddings) > 0

    status, _, err = run_script("save_asv_score.py", common, capsys, monkeypatch)
    assert status == 0, err
    trials = read_sasv_trials(work.root / DEV_TRIALS)
    rows = _score_rows(work.out / "score_ASV_dev.txt")
    assert [row[0] for row in rows] == [t.utterance for t in trials]
    assert [row[1] == "nan" for row in rows] == [t.utterance == bad for t in trials]
    assert json.loads((work.out / "metrics_ASV_dev.json").read_text())["n_skipped_trials"] == \
        sum(t.utterance == bad for t in trials)

    status, _, err = run_script("save_cm_score.py", common + ["--model", str(model_file)], capsys, monkeypatch)
    assert status == 0, err
    cm_rows = _score_rows(work.out / "score_CM_dev_no_softmax.txt")
    assert [row[0] for row in cm_rows if row[1] == "nan"] == [bad]
    saved = json.loads((work.out / "metrics_CM_dev.json").read_text())
    assert saved["n_skipped_utterances"] == 1 and np.isfinite(saved["cm_eer"])

    status, _, err = run_script("save_asv_score.py", ["--set", "on_bad_audio=error", *common], capsys, monkeypatch)
    assert_one_line_error((status, "", err), f"no ASV embedding for {bad}")
