"""system asv on the tiny synthetic corpus: training, metrics against metrics/, resume, augmentation,
VoxCeleb-style lists, and the checkpoint loading into system sasv (asv_weight)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data.augment import Augmenter
from data.protocols import ProtocolError, read_cm_protocol, read_sasv_trials
from data.speaker_lists import plan_speaker_batches, read_voxceleb_train_list, read_voxceleb_trials
from metrics import MetricError
from metrics.dcf import min_dcf
from metrics.eer import roc_eer
from models.build import build_sasv_model
from models.checkpoint import load_asv_weights, load_checkpoint
from runtime.config import ConfigError, build_config
from training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from test_pipeline import tiny_config  # noqa: E402  (the tiny widths shared by the pipeline tests)
from tiny_run import run_main_here, tiny_corpus  # noqa: E402

# Every test here needs a trained run or a real model (a module fixture): seconds to minutes.
pytestmark = pytest.mark.slow

torch.set_num_threads(2)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory)  # generated once per session, shared with the other modules


@pytest.fixture(scope="module")
def noise_folders(tmp_path_factory) -> tuple[Path, Path]:
    """A miniature MUSAN (noise/, speech/, music/) and RIR folder."""
    root = tmp_path_factory.mktemp("augment")
    rng = np.random.default_rng(0)
    for category, count in (("noise", 2), ("speech", 4), ("music", 1)):
        for index in range(count):
            path = root / "musan" / category / "set" / f"{category}{index}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, 0.3 * rng.standard_normal(12000), 16000, subtype="FLOAT")
    rir = np.zeros(800)
    rir[[0, 200, 500]] = [1.0, 0.5, 0.25]
    (root / "rirs" / "room").mkdir(parents=True)
    sf.write(root / "rirs" / "room" / "rir0.wav", rir, 16000, subtype="FLOAT")
    return root / "musan", root / "rirs"


def asv_config(corpus: Path, **overrides) -> dict:
    config = tiny_config(corpus, system="asv", epoch=2, batch_size=3, save_top_k=2)
    # max_per_speaker 2: 6 speakers x 2 utterances = 2 batches of 3 speakers per epoch (keeps the test fast).
    config["asv_train"] = {"loss": "angleproto", "samples": 8000, "lr": 0.002, "lr_decay_epochs": 1, "lr_decay": 0.5,
                           "max_per_speaker": 2}
    config.update(overrides)
    return config


def run_main(work: Path, config: dict, *extra: str) -> subprocess.CompletedProcess:
    """main.py in this process, under run_main_here's fixed thread settings (the same for every run compared)."""
    path = work / "asv.conf"
    path.write_text(json.dumps(config))
    result = run_main_here(path, work / "exp", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def read_metrics(experiment: Path) -> list[dict]:
    with open(experiment / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained(corpus, noise_folders, tmp_path_factory):
    """main.py: AP training for 1 epoch with MUSAN/RIR augmentation, then resumed for a 2nd epoch."""
    work = tmp_path_factory.mktemp("asv_run")
    config = asv_config(corpus, epoch=1)
    config["asv_train"].update(musan_dir=str(noise_folders[0]), rir_dir=str(noise_folders[1]))
    first = run_main(work, config)
    one_epoch = read_metrics(work / "exp" / "asv")
    resumed = run_main(work, config, "--resume", "--set", "epoch=2")
    return work, {**config, "epoch": 2}, work / "exp" / "asv", first.stdout, one_epoch, resumed.stdout


def test_outputs_and_dev_metrics_match_metrics_functions(trained, corpus):
    _, _, experiment, stdout, _, _ = trained
    rows = read_metrics(experiment)
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert list(rows[0]) == ["epoch", "step", "lr", "train_loss", "train_accuracy", "dev_eer", "dev_min_dcf_p01",
                             "dev_min_dcf_p05", "skipped_batches", "redrawn_utterances", "seconds"]
    bona_fide = [t for t in read_sasv_trials(corpus / "protocols" / "ASVspoof2019.LA.asv.dev.gi.trl.txt")
                 if t.key != "spoof"]
    for row in rows:
        lines = (experiment / "scores" / f"dev_epoch_{int(row['epoch']):03d}.txt").read_text().splitlines()
        fields = [line.split() for line in lines]
        assert [f[:3] for f in fields] == [[t.speaker, t.utterance, t.key] for t in bona_fide]
        scores = np.array([float(f[3]) for f in fields])
        is_target = np.array([f[2] == "target" for f in fields])
        assert float(row["dev_eer"]) == pytest.approx(roc_eer(scores[is_target], scores[~is_target]), abs=1e-12)
        for column, prior in (("dev_min_dcf_p01", 0.01), ("dev_min_dcf_p05", 0.05)):
            assert float(row[column]) == pytest.approx(min_dcf(scores, is_target.astype(int), prior)[0], abs=1e-12)
    summary = json.loads((experiment / "metrics_eval.json").read_text())
    eval_lines = [line.split() for line in (experiment / "scores" / "eval.txt").read_text().splitlines()]
    eval_scores = np.array([float(f[3]) for f in eval_lines])
    eval_target = np.array([f[2] == "target" for f in eval_lines])
    assert summary["eer"] == pytest.approx(roc_eer(eval_scores[eval_target], eval_scores[~eval_target]), abs=1e-12)
    assert summary["n_trials"] == len(eval_lines) and "spoof" not in {f[2] for f in eval_lines}
    best_epoch = min(rows, key=lambda row: (float(row["dev_eer"]), int(row["epoch"])))["epoch"]
    assert summary["epoch"] == int(best_epoch) and summary["best_dev"]["eer"] == min(float(r["dev_eer"]) for r in rows)
    assert "eval EER" in stdout and "weights/best.ckpt" in stdout


def test_the_run_carries_its_calibration(trained):
    """The run was resumed for its second epoch: the calibration is of the best epoch whichever process
    validated it (scored again when that was the first process)."""
    from test_calibration import check_run_calibration

    from models.build import build_asv_network
    from runtime.config import load_config

    _, _, experiment, _, _, resumed = trained
    check_run_calibration(experiment, "asv", build_asv_network(load_config(experiment / "config.conf")))
    assert "calibration (dev fit): eval asv" in resumed


def test_the_api_scores_the_asv_run_as_its_eval_scores(trained):
    """weights/best.ckpt of an ASV run through the Python API: a speaker enrolled from its enrollment utterances
    (cut to test_samples, as the run enrolls them) scores the eval trials as scores/eval.txt holds them, and
    the run's calibration is found and applied."""
    from data.corpora import corpus_of
    from runtime.config import load_config
    from scoring.system import SASVSystem

    _, _, experiment, _, _, _ = trained
    config = load_config(experiment / "config.conf")
    warnings: list[str] = []
    system = SASVSystem.load(experiment / "weights" / "best.ckpt", warn=warnings.append)
    assert system.kind == "asv" and warnings == [] and system.enrollment_samples == config["test_samples"]
    corpus = corpus_of(config)
    audio, ext = corpus.audio_dir("eval"), config["audio_ext"]
    rows = [line.split() for line in (experiment / "scores" / "eval.txt").read_text().splitlines()]
    speaker = rows[0][0]
    utterances = corpus.enrollment_utterances("eval")[speaker]
    system.enroll(speaker, [audio / f"{utterance}.{ext}" for utterance in utterances])
    chosen = [row for row in rows if row[0] == speaker][:5]
    results = system.score_trials([(speaker, audio / f"{row[1]}.{ext}") for row in chosen])
    np.testing.assert_allclose([r.asv_score for r in results], [float(row[3]) for row in chosen], atol=1e-6, rtol=0)
    assert [r.decision for r in results] == [r.asv_score > system.calibration.decision.threshold for r in results]


def test_learning_rate_steps_per_epoch_and_batches_cover_the_plan(trained, corpus):
    _, config, experiment, _, _, _ = trained
    rows = read_metrics(experiment)
    assert [float(row["lr"]) for row in rows] == pytest.approx([0.002, 0.001])  # StepLR, decay 0.5 per epoch
    labels = _speaker_labels(corpus)
    steps = [len(plan_speaker_batches(labels, per_speaker=2, batch_size=3, max_per_speaker=2, seed=7, epoch=epoch,
                                      distinct_speakers=True)) for epoch in range(2)]
    assert steps == [2, 2]
    assert [int(row["step"]) for row in rows] == list(np.cumsum(steps))


def test_resume_continues_exactly(trained, corpus, tmp_path):
    _, config, experiment, _, one_epoch, resumed_stdout = trained
    assert "resumed from" in resumed_stdout
    rows = read_metrics(experiment)
    def without_time(row: dict) -> dict:
        return {key: value for key, value in row.items() if key != "seconds"}

    assert without_time(one_epoch[0]) == without_time(rows[0])
    # An uninterrupted 2-epoch run ends with the same weights as the 1 + 1 resumed one. It runs as those
    # did (run_main_here): thread settings of this test process must not enter the comparison.
    run_main(tmp_path, config)
    resumed_state = load_checkpoint(experiment / "weights" / "last.ckpt")
    straight_state = load_checkpoint(tmp_path / "exp" / "asv" / "weights" / "last.ckpt")
    assert [row["train_loss"] for row in rows] == [str(row["train_loss"]) for row in straight_state.meta["metrics"]]
    for key, value in straight_state.asv_state.items():
        assert torch.equal(value, resumed_state.asv_state[key]), key
    assert torch.equal(straight_state.asv_loss_state["w"], resumed_state.asv_loss_state["w"])


def test_best_checkpoint_initialises_the_sasv_model(trained, corpus):
    work, _, experiment, _, _, _ = trained
    best = experiment / "weights" / "best.ckpt"
    checkpoint = load_checkpoint(best)
    assert checkpoint.cm_state is None and checkpoint.backend_state is None
    assert set(checkpoint.asv_loss_state) == {"w", "b"}
    assert "optimizer" not in checkpoint.meta and checkpoint.meta["epoch"] == json.loads(
        (experiment / "metrics_eval.json").read_text())["epoch"]
    sasv = build_config(tiny_config(corpus, asv_weight=str(best)))
    model, _ = build_sasv_model(sasv)
    for key, value in checkpoint.asv_state.items():
        assert torch.equal(model.asv_model.state_dict()[key], value), key
    kept = sorted(path.name for path in (experiment / "weights").glob("epoch=*.ckpt"))
    assert len(kept) == 2 and all("-eer_dev=" in name for name in kept)  # save_top_k = 2


def _speaker_labels(corpus: Path) -> list[int]:
    entries = [e for e in read_cm_protocol(corpus / "protocols" / "ASVspoof2019.LA.cm.train.trn.txt")
               if e.key == "bonafide"]
    speakers = sorted({e.speaker for e in entries})
    return [speakers.index(e.speaker) for e in entries]


def test_speaker_batches_hold_distinct_speakers_and_vary_by_epoch():
    labels = [speaker for speaker in range(7) for _ in range(5 + speaker)]
    plan = plan_speaker_batches(labels, per_speaker=2, batch_size=4, max_per_speaker=6, seed=3, epoch=0,
                                distinct_speakers=True)
    used = [index for batch in plan for group in batch for index in group]
    assert len(used) == len(set(used))  # no utterance twice in an epoch
    for batch in plan:
        assert len(batch) == 4 and all(len(group) == 2 for group in batch)
        assert all(len({labels[i] for i in group}) == 1 for group in batch)  # a group is one speaker
        assert len({labels[group[0]] for group in batch}) == 4  # speakers differ within a batch
    per_speaker = np.bincount([labels[i] for i in used], minlength=7)
    assert per_speaker.max() <= 6  # max_per_speaker
    again = plan_speaker_batches(labels, per_speaker=2, batch_size=4, max_per_speaker=6, seed=3, epoch=0,
                                 distinct_speakers=True)
    other = plan_speaker_batches(labels, per_speaker=2, batch_size=4, max_per_speaker=6, seed=3, epoch=1,
                                 distinct_speakers=True)
    assert again == plan and other != plan


def test_augmenter_snr_reverb_and_choices(noise_folders):
    musan, rirs = noise_folders
    augment = Augmenter(musan, rirs)
    assert augment.choices == ["none", "reverb", "noise", "speech", "music"]
    clean = 0.5 * np.sin(np.linspace(0, 400 * np.pi, 8000))
    rng = np.random.default_rng(1)
    noisy = augment.add_noise(clean, "noise", rng)
    snr = 10 * np.log10(np.mean(clean ** 2) / np.mean((noisy - clean) ** 2))
    assert 0.0 - 0.05 <= snr <= 15.0 + 0.05  # MUSAN noise: one file at 0-15 dB
    babble = augment.add_noise(clean, "speech", np.random.default_rng(2))
    assert babble.shape == clean.shape and not np.allclose(babble, clean)
    reverberant = augment.reverberate(clean, rng)
    rir = np.array([1.0, 0.5, 0.25]) / np.sqrt(1.3125)
    expected = rir[0] * clean
    expected[200:] += rir[1] * clean[:-200]
    expected[500:] += rir[2] * clean[:-500]
    np.testing.assert_allclose(reverberant, expected, atol=1e-9)
    only_rir = Augmenter(None, rirs)
    assert only_rir.choices == ["none", "reverb"]


def test_voxceleb_lists_train_with_aam_softmax(corpus, tmp_path):
    """A VoxCeleb-style train list and trial list (paths relative to a root) with AAM-softmax."""
    entries = read_cm_protocol(corpus / "protocols" / "ASVspoof2019.LA.cm.train.trn.txt")
    train_list = tmp_path / "train_list.txt"
    train_list.write_text("".join(f"id{e.speaker[-4:]} ASVspoof2019_LA_train/flac/{e.utterance}.flac\n"
                                  for e in entries if e.key == "bonafide"))
    dev = [t for t in read_sasv_trials(corpus / "protocols" / "ASVspoof2019.LA.asv.dev.gi.trl.txt") if t.key != "spoof"]
    enrol = {line.split()[0]: line.split()[1].split(",")[0] for name in ("female", "male") for line in
             (corpus / "protocols" / f"ASVspoof2019.LA.asv.dev.{name}.trn.txt").read_text().splitlines()}
    trial_list = tmp_path / "veri_test.txt"
    trial_list.write_text("".join(f"{int(t.key == 'target')} ASVspoof2019_LA_dev/flac/{enrol[t.speaker]}.flac "
                                  f"ASVspoof2019_LA_dev/flac/{t.utterance}.flac\n" for t in dev))
    root = corpus / "LA"
    config = build_config(asv_config(corpus, epoch=1, batch_size=8, asv_train={
        "loss": "aamsoftmax", "margin": 0.2, "scale": 30.0, "samples": 8000, "max_per_speaker": 2,
        "train_list": str(train_list), "train_root": str(root), "trial_list": str(trial_list),
        "trial_root": str(root)}))
    trainer = Trainer(config, tmp_path / "exp", CPU, progress=False)
    assert trainer.task.loss.weight.shape == (6, 32) and len(trainer.task.utterances) == 36
    summary = trainer.fit()
    lines = [line.split() for line in (tmp_path / "exp" / "scores" / "dev_epoch_001.txt").read_text().splitlines()]
    assert [line[:3] for line in lines] == [line.split() for line in trial_list.read_text().splitlines()]
    scores = np.array([float(line[3]) for line in lines])
    target = np.array([line[0] == "1" for line in lines])
    assert summary["best_dev"]["eer"] == pytest.approx(roc_eer(scores[target], scores[~target]), abs=1e-12)
    assert "eer" not in summary and not (tmp_path / "exp" / "metrics_eval.json").exists()  # no eval trial list
    assert load_checkpoint(tmp_path / "exp" / "weights" / "best.ckpt").asv_loss_state["weight"].shape == (6, 32)


def test_list_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "train.txt"
    bad.write_text("id1 a.wav\nid2\n")
    with pytest.raises(ProtocolError, match=r"train.txt:2: expected 'speaker_id relative/path.wav'"):
        read_voxceleb_train_list(bad, tmp_path)
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a.wav b.wav\n2 a.wav c.wav\n")
    with pytest.raises(ProtocolError, match=r"trials.txt:2: expected '1\|0 enrol/path.wav test/path.wav'"):
        read_voxceleb_trials(trials)
    trials.write_text("1 a.wav b.wav\n")
    with pytest.raises(ProtocolError, match="needs both target"):
        read_voxceleb_trials(trials)
    with pytest.raises(ConfigError, match="n_per_speaker must be >= 2 for angleproto"):
        build_config({"system": "asv", "asv_train": {"loss": "angleproto", "n_per_speaker": 1}})
    with pytest.raises(ConfigError, match="asv_train.train_root"):
        build_config({"system": "asv", "asv_train": {"train_list": "list.txt"}})


def test_min_dcf_hand_computed_and_against_a_literal_sweep():
    # Sorted: 0.1 n, 0.3 t, 0.35 n, 0.8 t. Rejecting up to index i: (P_miss, P_fa) =
    # (0, 1/2), (1/2, 1/2), (1/2, 0), (1, 0). p = 0.05: costs / 0.05 = 9.5, 10, 0.5, 1 -> 0.5 at 0.35.
    scores, labels = [0.8, 0.1, 0.35, 0.3], [1, 0, 0, 1]
    assert min_dcf(scores, labels, 0.05) == pytest.approx((0.5, 0.35))
    # p = 0.5: costs / 0.5 = 0.5, 1, 0.5, 1 -> the first minimum, 0.5 at 0.1.
    assert min_dcf(scores, labels, 0.5) == pytest.approx((0.5, 0.1))
    rng = np.random.default_rng(4)
    values = np.round(rng.normal(size=400), 1)  # many ties: the stable order matters
    truth = (rng.random(400) < 0.3).astype(int)
    for prior, c_miss, c_fa in ((0.01, 1, 1), (0.05, 1, 1), (0.2, 2, 0.5)):
        best, threshold = np.inf, None
        order = sorted(range(400), key=lambda i: values[i])  # Python's sort is stable
        misses, false_alarms_left = 0, int((truth == 0).sum())
        for i in order:
            misses += truth[i]
            false_alarms_left -= 1 - truth[i]
            cost = c_miss * misses / truth.sum() * prior + c_fa * false_alarms_left / (truth == 0).sum() * (1 - prior)
            if cost < best:
                best, threshold = cost, values[i]
        normalised = best / min(c_miss * prior, c_fa * (1 - prior))
        assert min_dcf(values, truth, prior, c_miss, c_fa) == pytest.approx((normalised, threshold), rel=1e-12)
    with pytest.raises(MetricError, match="target and nontarget"):
        min_dcf([0.1, 0.2], [1, 1], 0.05)


def test_ap_parameters_load_from_voxceleb_file_through_asv_weight(fixtures, corpus, tmp_path):
    golden = fixtures / "golden" / "resnetse34v2_vox_format.model"
    config = asv_config(corpus, asv_weight=str(golden))
    config["asv_model"] = {}  # the golden file is the full-size ResNetSE34V2
    config["asv_train"].update(init_w=1.0, init_b=0.0)
    trainer = Trainer(build_config(config), tmp_path / "exp", CPU, progress=False)
    assert (trainer.task.loss.w.item(), trainer.task.loss.b.item()) == (10.0, -5.0)
    reference = build_sasv_model(build_config(tiny_config(corpus, asv_model={})), load_weights=False)[0].asv_model
    load_asv_weights(reference, golden)
    for key, value in reference.state_dict().items():
        assert torch.equal(trainer.task.model.state_dict()[key], value), key
    # With AAM-softmax the AP entries do not fit: the network still loads, the loss starts afresh.
    config["asv_train"] = {"loss": "aamsoftmax", "samples": 8000}
    trainer = Trainer(build_config(config), tmp_path / "exp2", CPU, progress=False)
    assert torch.equal(trainer.task.model.state_dict()["fc.weight"], reference.state_dict()["fc.weight"])


def test_demo_sequence_configs_agree_with_demo_conf():
    """demo_asv -> demo_cm -> demo_sasv_pretrained must train what demo.conf trains, from the stages' outputs."""
    from runtime.config import load_config

    demo = load_config(REPO / "configs" / "demo.conf")
    stages = {name: load_config(REPO / "configs" / f"{name}.conf")
              for name in ("demo_asv", "demo_cm", "demo_sasv_pretrained")}
    pretrained = stages["demo_sasv_pretrained"]
    differing = {key for key in demo if demo[key] != pretrained[key]}
    assert differing == {"config_name", "asv_weight", "aasist_weight"}
    asv_best, cm_best = "exp_result/demo_asv/weights/best.ckpt", "exp_result/demo_cm/weights/best.ckpt"
    assert (pretrained["asv_weight"], pretrained["aasist_weight"]) == (asv_best, cm_best)
    assert stages["demo_cm"]["cm_train"]["asv_model"] == asv_best
    for name, system in (("demo_asv", "asv"), ("demo_cm", "cm")):
        stage = stages[name]
        assert stage["system"] == system
        for key in ("dirs", "demo_corpus", "asv_model", "seed", "device", "test_samples", "sample_rate"):
            assert stage[key] == demo[key], (name, key)
    assert stages["demo_cm"]["cm_model"] == demo["cm_model"]


@pytest.mark.parametrize("enrollment", ["utterances", "file"])
def test_asvspoof_trial_scores_equal_a_direct_computation(corpus, enrollment):
    from data.audio import load_waveform
    from data.protocols import read_enrollment_files, read_enrollment_utterances
    from models.build import build_asv_network
    from scoring.extraction import Extraction
    from scoring.verification import asvspoof_trials, score_trials

    config = build_config(asv_config(corpus, asv_train={"enrollment": enrollment}))
    trials = asvspoof_trials(config, "dev")
    protocols = corpus / "protocols"
    expected_trials = [t for t in read_sasv_trials(protocols / "ASVspoof2019.LA.asv.dev.gi.trl.txt")
                       if t.key != "spoof"]
    assert trials.keys == [t.key for t in expected_trials]
    torch.manual_seed(0)
    network = build_asv_network(config).eval()
    scores = score_trials(network, trials, Extraction(CPU, batch_size=5))
    audio = corpus / "LA" / "ASVspoof2019_LA_dev" / "flac"
    if enrollment == "utterances":
        files = read_enrollment_utterances([protocols / f"ASVspoof2019.LA.asv.dev.{gender}.trn.txt"
                                            for gender in ("female", "male")])
        paths = {speaker: [audio / f"{u}.flac" for u in utts] for speaker, utts in files.items()}
        samples = config["test_samples"]
    else:
        stems = read_enrollment_files(protocols / "ASVspoof2019.LA.asv.dev.gi.trn.txt")
        paths = {speaker: [corpus / "enr_audio" / "dev" / f"{stem}.flac"] for speaker, stem in stems.items()}
        samples = config["enrollment_samples"]["dev"]
    embedded: dict = {}

    def embed(path: Path, length: int) -> torch.Tensor:
        if (path, length) not in embedded:
            with torch.no_grad():
                embedded[(path, length)] = network(load_waveform(path, length)[None]).double()[0]
        return embedded[(path, length)]

    for trial, score in zip(expected_trials, scores):
        model = torch.stack([embed(p, samples) for p in paths[trial.speaker]]).mean(0)
        test = embed(audio / f"{trial.utterance}.flac", config["test_samples"])
        assert score == pytest.approx(torch.nn.functional.cosine_similarity(model, test, dim=0).item(), abs=1e-5)


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run of asv_config in this process (the reference of the in-process resumes
    below, which run under this process's thread settings too): its last.ckpt."""
    folder = tmp_path_factory.mktemp("asv_straight")
    Trainer(build_config(asv_config(corpus, epoch=2)), folder, CPU, progress=False).fit()
    return folder / "weights" / "last.ckpt"


def test_signal_mid_epoch_saves_and_resume_equals_an_uninterrupted_run(corpus, straight, tmp_path):
    import signal

    from runtime.signals import RunInterrupted

    config = asv_config(corpus, epoch=2)

    stopped = Trainer(build_config(config), tmp_path / "run", CPU, progress=False)
    original, calls = stopped.task.batch_loss, []

    def forward_then_signal(*inputs):
        calls.append(1)
        if len(calls) == 3:  # epoch 2, batch 1: the step completes, the loop stops before batch 2
            stopped.stop.requested = signal.SIGTERM  # what StopRequest records when the signal arrives
        return original(*inputs)

    stopped.task.batch_loss = forward_then_signal
    with pytest.raises(RunInterrupted, match=r"SIGTERM at asv epoch 2, batch 1/2 \(step 3\); saved .*last.ckpt; "
                                             r"resume with") as interrupted:
        stopped.fit()
    assert interrupted.value.exit_status == 128 + signal.SIGTERM
    saved = load_checkpoint(tmp_path / "run" / "weights" / "last.ckpt").meta
    assert (saved["epoch"], saved["batch"], saved["step"], saved["loss_count"]) == (1, 1, 3, 1)

    changed = asv_config(corpus, epoch=2)
    changed["asv_train"]["lr"] = 0.01
    with pytest.raises(ConfigError, match=r"config differs from the run's in asv_train.lr \(run: 0.002, now: 0.01\)"):
        Trainer(build_config(changed), tmp_path / "run", CPU, progress=False).resume_latest()
    resumed = Trainer(build_config(config), tmp_path / "run", CPU, progress=False)
    assert resumed.resume_latest() == tmp_path / "run" / "weights" / "last.ckpt"
    resumed.fit()
    ends = [load_checkpoint(straight), load_checkpoint(tmp_path / "run" / "weights" / "last.ckpt")]
    for key, value in ends[0].asv_state.items():
        assert torch.equal(value, ends[1].asv_state[key]), key
    for key, value in ends[0].asv_loss_state.items():
        assert torch.equal(value, ends[1].asv_loss_state[key]), key
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in ends[0].meta["metrics"]] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in ends[1].meta["metrics"]]


def test_samplers_resume_inside_an_epoch_with_the_remaining_batches():
    from data.speaker_lists import ShuffledEpochSampler, SpeakerBatchSampler

    labels = [index % 5 for index in range(40)]
    batches = SpeakerBatchSampler(labels, per_speaker=2, batch_size=3, max_per_speaker=8, seed=4)
    batches.set_epoch(2)
    whole = list(batches)
    assert len(whole) == batches.epoch_batches >= 3
    batches.set_epoch(2, 2)
    assert list(batches) == whole[2:] and len(batches) == len(whole) - 2
    with pytest.raises(ValueError, match="beyond its"):
        batches.set_epoch(2, len(whole) + 1)
    items = ShuffledEpochSampler(10, seed=4)
    items.set_epoch(1)
    order = list(items)
    items.set_epoch(1, 6)
    assert list(items) == order[6:] and len(items) == 4


def test_verification_metrics_leave_out_trials_not_scored():
    from scoring.verification import verification_metrics

    scores = np.array([0.9, 0.1, np.nan, 0.8, 0.2, 0.85, np.nan])
    keys = ["target", "nontarget", "target", "target", "nontarget", "nontarget", "nontarget"]
    kept = [0, 1, 3, 4, 5]
    assert verification_metrics(scores, keys) == verification_metrics(scores[kept], [keys[i] for i in kept])
    assert verification_metrics(scores, keys)["eer"] == pytest.approx(roc_eer(scores[[0, 3]], scores[[1, 4, 5]]))


def test_signal_in_dev_scoring_and_a_damaged_last_checkpoint_resume_exactly(corpus, straight, tmp_path):
    import signal

    from runtime.signals import RunInterrupted

    config = asv_config(corpus, epoch=2)  # StepLR steps once per epoch: resuming must not step it twice

    stopped = Trainer(build_config(config), tmp_path / "run", CPU, progress=False)
    original = stopped.task.validate

    def validate_with_a_signal(epoch):
        if epoch == 0:
            stopped.stop.requested = signal.SIGINT  # arrives while the dev files are embedded
        return original(epoch)

    stopped.task.validate = validate_with_a_signal
    with pytest.raises(RunInterrupted, match=r"SIGINT at the dev scoring of asv epoch 1 \(its training is saved\) "
                                             r"\(step 2\); saved .*last.ckpt"):
        stopped.fit()
    weights = tmp_path / "run" / "weights"
    saved = load_checkpoint(weights / "last.ckpt").meta
    assert (saved["epoch"], saved["batch"], saved["step"]) == (0, 2, 2)

    resumed = Trainer(build_config(config), tmp_path / "run", CPU, progress=False)
    assert resumed.resume_latest() == weights / "last.ckpt"
    resumed.fit()
    ends = [load_checkpoint(straight), load_checkpoint(tmp_path / "run" / "weights" / "last.ckpt")]
    for key, value in ends[0].asv_state.items():
        assert torch.equal(value, ends[1].asv_state[key]), key
    assert [row["lr"] for row in ends[0].meta["metrics"]] == [row["lr"] for row in ends[1].meta["metrics"]]

    # last.ckpt damaged (e.g. by a disk fault): the newest best-k copy is restored and becomes last.ckpt.
    (weights / "last.ckpt").write_bytes(b"damaged")
    again = Trainer(build_config(config), tmp_path / "run", CPU, progress=False)
    newest = again.resume_latest()
    assert newest.name.startswith("epoch=002-") and (again.state.epoch, again.state.batch) == (2, 0)
    assert load_checkpoint(weights / "last.ckpt").meta["step"] == again.state.step
    # A damaged best-k copy is dropped from the ranking (the final test would otherwise load it).
    older = next(weights.glob("epoch=001-*.ckpt"))
    older.write_bytes(b"damaged")
    third = Trainer(build_config(config), tmp_path / "run", CPU, progress=False)
    third.resume_latest()
    assert [entry["epoch"] for entry in third.state.best] == [2] and not older.exists()


def test_nan_dev_scores_without_bad_audio_mean_divergence():
    from scoring.extraction import ScoringError, count_unscored

    with pytest.raises(ScoringError, match=r"dev epoch 3: 1 of 2 scores are NaN/inf: the model's output is not"):
        count_unscored(np.array([np.nan, 0.5]), {}, 0, "dev epoch 3")
    counts = count_unscored(np.array([np.nan, 0.5]), {"a.flac": "cannot decode"}, 1, "dev epoch 3")
    assert counts == {"n_skipped_trials": 1, "skipped_audio": {"a.flac": "cannot decode"}}
    # More NaN scores than trials that need the bad file: the model diverged as well.
    with pytest.raises(ScoringError, match=r"2 of 3 scores are NaN/inf"):
        count_unscored(np.array([np.nan, np.nan, 0.5]), {"a.flac": "cannot decode"}, 1, "dev epoch 3")


def test_trainer_reports_nan_dev_scores_as_divergence(corpus, tmp_path, monkeypatch):
    from training.state import TrainingError

    trainer = Trainer(build_config(asv_config(corpus)), tmp_path, CPU, progress=False)
    monkeypatch.setattr(trainer.task, "validate", lambda epoch: count_unscored_nan(epoch))
    with pytest.raises(TrainingError, match=r"dev epoch 1: 1 of 2 scores are NaN/inf: the model's output is not "
                                            r"finite: training has diverged\. No checkpoint was saved"):
        trainer._validate(0)


def count_unscored_nan(epoch: int) -> dict:
    from scoring.extraction import count_unscored

    return count_unscored(np.array([np.nan, 0.5]), {}, 0, f"dev epoch {epoch + 1}")


def test_softmaxproto_trains_and_keeps_its_loss_in_the_checkpoint(corpus, tmp_path):
    config = asv_config(corpus, epoch=1)
    config["asv_train"].update(loss="softmaxproto")
    trainer = Trainer(build_config(config), tmp_path, CPU, progress=False)
    assert trainer.config["asv_train"]["n_per_speaker"] == 2
    trainer.fit()
    rows = read_metrics(tmp_path)
    assert int(rows[0]["step"]) == 2 and np.isfinite(float(rows[0]["train_loss"]))
    saved = load_checkpoint(tmp_path / "weights" / "best.ckpt").asv_loss_state
    assert sorted(saved) == ["angleproto.b", "angleproto.w", "softmax.fc.bias", "softmax.fc.weight"]
    assert saved["softmax.fc.weight"].shape == (len(trainer.task.classes), config["asv_model"]["n_out"])
    with pytest.raises(ConfigError, match="n_per_speaker must be >= 2 for softmaxproto"):
        build_config(asv_config(corpus, asv_train={"loss": "softmaxproto", "n_per_speaker": 1}))
