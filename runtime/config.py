"""Experiment configuration: loaded, merged and validated here, declared beside the code that reads it.

A `.conf` file is a YAML flow mapping (the original repo's JSON-like files,
trailing commas included, load unchanged). Every key is a runtime.schema.Field with
its type, default, meaning, range and resume policy: the run-wide keys in SCHEMA below,
a component's keys in its own file (networks, back-ends, losses, augmentation: each module's
CONFIG, a runtime.schema.ConfigSection, also with the rules between keys). Unknown keys, keys
given twice, wrong types, NaN/inf and out-of-range values, values a network cannot be built
with and missing sections are errors that name the key.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from data.augment import CONFIG as AUGMENTER
from data.codec_augment import CONFIG as CODEC_AUGMENT
from data.corpora import CORPORA, corpus_class, corpus_names, corpus_of
from data.rawboost import CONFIG as RAWBOOST
from losses.aam_softmax import CONFIG as AAM_SOFTMAX
from losses.angle_proto import CONFIG as ANGLE_PROTO
from losses.oc_softmax import CONFIG as OC_SOFTMAX
from models.aasist import CONFIG as AASIST_CONFIG
from models.aasist import min_samples as aasist_min_samples  # noqa: F401  (re-exported for the tests)
from models.b2_backend import CONFIG as B2_BACKEND
from models.resnet_se34v2 import CONFIG as RESNET
from models.resnet_se34v2 import MIN_SAMPLES as ASV_MIN_SAMPLES  # noqa: F401  (re-exported)
from models.sasv import CONFIG as SASV_BACKEND
from runtime.errors import ConfigError
from runtime.schema import (  # noqa: F401  (Range and the ranges are re-exported)
    ANGULAR_MARGIN,
    ANY_FINITE,
    COSINE,
    DECAY_FACTOR,
    POSITIVE,
    SEED,
    ZERO_OR_MORE,
    ConfigSection,
    Field,
    Invalid,
    Range,
    check_field,
)


def _section(**fields: Field | dict) -> dict:
    return fields


PROTOTYPICAL_LOSSES = ("angleproto", "softmaxproto")  # need >= 2 utterances per speaker in a batch
# dirs.<key> -> its default, where a corpus adapter gives one (the ASVspoof 5 release's file names).
_PROTOCOL_DEFAULTS = {key: name for corpus in CORPORA.values() for key, name in corpus.protocol_defaults.items()}

SCHEMA: dict = _section(
    config_name=Field(str, None, "a name recorded in config.conf (defaults to the config file stem); the "
                                 "experiment folder is <output_dir>/<config file stem>", resume=True),
    dataset=Field(str, "asvspoof2019_la", "the corpus layout under dirs.database: asvspoof2019_la (ASVspoof 2019 LA "
                  "with the SASV 2022 protocols, dirs.cm_* / dirs.sasv_*) or asvspoof5 (the ASVspoof 5 release: "
                  "flac_T/, flac_D/, flac_E_eval/ and the dirs.asvspoof5_* lists; docs/asvspoof5.md); any name in "
                  "data.corpora.CORPORA (docs/new_corpus.md)",
                  choices=corpus_names()),
    system=Field(str, "sasv", "what main.py trains: sasv (ASV + CM + back-end, the paper), asv (ResNetSE34V2 "
                 "speaker model, see asv_train), cm (AASIST countermeasure, see cm_train) or b2 (the SASV 2022 "
                 "baseline B2 back-end on pre-extracted embeddings, see b2); asv and cm write "
                 "weights/best.ckpt, which asv_weight / aasist_weight accept; any name in training.tasks.TASKS"),
    seed=Field(int, 1234, "seed for python, numpy, torch and the trial sampler", range=SEED),
    batch_size=Field(int, 20, "per optimisation step: training trials (sasv, b2), speakers (asv; "
                              "asv_train.n_per_speaker utterances each) or utterances (cm); under torchrun all "
                              "processes together, batch_size / N each", range=POSITIVE),
    eval_batch_size=Field(int, 32, "utterances per batch when extracting embeddings for scoring", range=POSITIVE,
                          resume=True),
    epoch=Field(int, 20, "number of training epochs", range=POSITIVE, resume=True),
    trials_per_epoch=Field(int, None, "training trials per epoch; default: number of utterances in the training CM "
                                      "protocol (as the original)", range=POSITIVE),
    save_top_k=Field(int, 3, "keep this many best checkpoints by the dev metric (plus last.ckpt): SASV-EER (sasv, b2); "
                              "asv: EER; cm: cm_train.select_by", range=POSITIVE),
    val_interval_epoch=Field(int, 1, "validate on the dev trials every N epochs", range=POSITIVE),
    checkpoint_interval_steps=Field(int, 0, "also save a resumable weights/last.ckpt every N optimisation steps, so "
                                    "that a hard kill loses at most N steps; 0: only at the end of each epoch and "
                                    "on SIGINT/SIGTERM", range=ZERO_OR_MORE, resume=True),
    nonfinite_loss=Field(str, "error", "NaN/inf training loss: error stops, naming the step (weights/last.ckpt keeps "
                         "the last good state); skip leaves that batch out (no update) and counts it in metrics.csv "
                         "(skipped_batches)", choices=("error", "skip"), resume=True),
    on_bad_audio=Field(str, "error", "missing, corrupt, empty, shorter than 100 ms (data.audio.MIN_AUDIO_MS), NaN/inf "
                       "or implausibly loud (|x| > 32), or wrong-rate/"
                       "multi-channel (unless resample) audio: error stops with one line naming the file; skip draws "
                       "another training trial (sasv) or utterance of the same speaker / class (asv / cm) instead "
                       "and, in scoring, marks the "
                       "trials that need the file (score nan, left out of the metrics, counted as "
                       "n_skipped_trials)", choices=("error", "skip"), resume=True),
    report_plots=Field(bool, True, "draw the evaluation report's PNG plots (DET curves, histograms, a-DCF, training "
                       "curves); false writes the tables alone, a second or two sooner per report (sweeps, tests)",
                       resume=True),
    logger=Field(str, "none", "training log beside metrics.csv: none, or tensorboard: training loss and learning "
                 "rates per step, dev metrics per epoch, the eval metrics and report plots, in "
                 "<experiment>/tensorboard/ (needs pip install tensorboard; docs/outputs.md#tensorboard)",
                 choices=("none", "tensorboard"), resume=True),
    gradient_clip=Field((int, float), 0, "clip the gradient norm to this value; 0 disables", range=ZERO_OR_MORE),
    model_arch=Field(str, "ResNetSE34V2_AASIST_OC", "ResNetSE34V2_AASIST_OC trains everything jointly; "
                     "ResNetSE34V2_AASIST_OC_fixed freezes ASV and CM",
                     choices=("ResNetSE34V2_AASIST_OC", "ResNetSE34V2_AASIST_OC_fixed")),
    train_asv=Field(bool, None, "train the ASV network; default from model_arch"),
    train_cm=Field(bool, None, "train the CM network; default from model_arch"),
    dataloader=Field(str, None, "original dataloader name; selects the trial sampling when `trial_sampling` is not set",
                     choices=(None, "Datalaoder_sasv", "Datalaoder_sasv_4class", "Datalaoder_sasv_FADbona",
                              "Datalaoder_sasv_FADbona_4class", "Datalaoder_sasv_FADfull",
                              "Datalaoder_sasv_FADfull_4class")),
    trial_sampling=Field(str, None, "four_class: target/nontarget x bona fide/spoof, equal odds (joint); two_class: "
                         "half target, half nontarget split between zero-effort and same-speaker spoof (fixed; "
                         "the SASV 2022 baseline B2's). Default from model_arch; system b2: two_class",
                         choices=(None, "four_class", "two_class")),
    train_crop=Field(str, "first", "training crop: first (the original: first N samples, tiled when shorter) or random",
                     choices=("first", "random")),
    train_samples=Field(int, 64600, "samples per training utterance", range=POSITIVE),
    test_samples=Field(int, 64600, "samples per test utterance when scoring", range=POSITIVE),
    enrollment_samples=_section(
        dev=Field(int, 960000, "enrollment waveform length for dev scoring (original read_waveform_eval_1); "
                  "dataset asvspoof5: the length each enrollment utterance is cut or tiled to, default test_samples",
                  range=POSITIVE),
        eval=Field(int, 1440000, "enrollment waveform length for eval scoring (original read_waveform_eval_2); "
                   "dataset asvspoof5: as dev", range=POSITIVE),
    ),
    # telephone to studio rates; 16 for 16000 would resample to nothing
    sample_rate=Field(int, 16000, "expected sampling rate", range=Range(4000, 192000)),
    audio_ext=Field(str, "flac", "file extension of the utterances in ASVspoof2019_LA_<part>/flac/",
                    choices=("flac", "wav")),
    resample=Field(bool, False, "resample / down-mix audio that is not 16 kHz mono instead of refusing it"),
    device=Field(str, "auto", "auto (CUDA when present), cuda, cuda:N or cpu", resume=True),
    amp=Field(str, "auto", "mixed precision of training: auto (bf16 on CUDA, off on CPU), bf16, fp16 (with a "
              "grad scaler) or off, on CUDA and CPU alike; scoring is always fp32",
              choices=("auto", "bf16", "fp16", "off")),
    channels_last=Field(str, "auto", "keep the ResNet's weights and 4-D activations in channels_last (NHWC): auto "
                        "(on CUDA only), on or off", choices=("auto", "on", "off")),
    compile=Field(bool, False, "torch.compile the trained networks in place: the back-end, plus ASV / CM when "
                  "trained, or the stage's network (inductor: Triton kernels on CUDA, C++ built with the system "
                  "compiler on CPU; ignored under torchrun on CUDA, where SyncBatchNorm cannot be compiled). "
                  "When the compiler fails (at the first call, a new shape or the first backward pass), one "
                  "warning line names the cause and the run goes on eagerly, with the eager numbers", resume=True),
    cache_frozen_embeddings=Field(bool, True, "with frozen ASV and CM and train_crop first, embed each training "
                                  "utterance once, cache the embeddings on disk (dirs.embedding) and train the "
                                  "back-end on them; false runs the frozen networks every batch", resume=True),
    asv_weight=Field(str, None, "initial ASV weights: voxceleb_trainer .model (e.g. baseline_v2_ap.model) or a "
                     "joint checkpoint"),
    aasist_config=Field(str, None, "AASIST JSON config; its model_config builds the CM network"),
    aasist_weight=Field(str, None, "initial CM weights: AASIST .pth or a joint checkpoint"),
    init_checkpoint=Field(str, None, "initialise the parts a joint checkpoint holds (Lightning .ckpt or ours); "
                          "asv_weight / aasist_weight fill in only the parts it does not hold (a _fixed model's "
                          "checkpoint holds the back-end only)"),
    # The ASV network's keys are its own (models/resnet_se34v2.py CONFIG for the default); another
    # asv_model.architecture brings the keys of its class's `config` (_asv_fields).
    asv_model=_section(
        architecture=Field(str, "ResNetSE34V2", "ASV network, by its name in models.ASV_NETWORKS"),
        **RESNET.fields,
    ),
    cm_model=Field(dict, None, "AASIST model_config written inline; overrides aasist_config; its `architecture` "
                   "names the CM network in models.CM_NETWORKS"),
    backend=_section(**SASV_BACKEND.fields),
    optimizer=Field(str, "adam", "optimiser", choices=("adam",)),
    optim=_section(
        lr=Field(float, 5e-5, "learning rate", range=POSITIVE),
        wd=Field(float, 1e-4, "weight decay", range=ZERO_OR_MORE),
        gamma=Field(float, 0.95, "ExponentialLR decay factor", range=DECAY_FACTOR),
        scheduler_interval=Field(int, 200, "apply the decay every N optimisation steps", range=POSITIVE),
        scheduler=Field(str, "keras", "unused by the original", ignored=True),
        **OC_SOFTMAX.fields,
    ),
    loader=_section(
        n_workers=Field(int, 4, "DataLoader worker processes", range=ZERO_OR_MORE, resume=True),
    ),
    calibration=_section(
        prior=Field(float, 0.5, "target (bona fide) prior of the calibration fitted on dev at the end of training "
                    "(weights/calibration.json, docs/calibration.md): weights the logistic fit and sets the eval "
                    "report's actual-cost prior", range=Range(0, 1, low_open=True, high_open=True), resume=True),
    ),
    speaker_loss=_section(
        weight=Field(float, 0.0, "system sasv: weight of an auxiliary AAM-softmax speaker-classification loss on "
                     "the ASV embeddings of the bona fide training utterances, added to the SASV loss (0 = off, the "
                     "original recipe; needs a trainable ASV sub-system)", range=ZERO_OR_MORE),
        **AAM_SOFTMAX.fields,
    ),
    asv_train=_section(
        loss=Field(str, "aamsoftmax", "system asv: speaker loss, aamsoftmax (additive angular margin), angleproto "
                   "(angular prototypical) or softmaxproto (softmax + angular prototypical, the recipe of "
                   "voxceleb_trainer's baseline_v2_ap)", choices=("aamsoftmax", "angleproto", "softmaxproto")),
        **AAM_SOFTMAX.fields,
        **ANGLE_PROTO.fields,
        n_per_speaker=Field(int, None, "utterances per speaker in a batch; default 1 (aamsoftmax), 2 (angleproto, "
                            "softmaxproto, which need >= 2; a batch then never holds a speaker twice)", range=POSITIVE),
        max_per_speaker=Field(int, 500, "at most this many utterances of a speaker per epoch (voxceleb_trainer's "
                              "max_seg_per_spk)", range=POSITIVE),
        samples=Field(int, 32000, "random training crop, in samples (2 s); shorter files are tiled", range=POSITIVE),
        train_list=Field(str, None, "VoxCeleb-style training list, 'speaker_id relative/path.wav' per line; default: "
                         "the bona fide utterances of the dataset's training list (dirs.cm_trn_list or "
                         "dirs.asvspoof5_train_list)"),
        train_root=Field(str, None, "folder the train_list paths are relative to"),
        trial_list=Field(str, None, "VoxCeleb-style dev trials, 'label enrol/path.wav test/path.wav' (label 1 = "
                         "same speaker); default: the bona fide trials (target, nontarget) of dirs.sasv_dev_trial"),
        eval_trial_list=Field(str, None, "VoxCeleb-style trials scored with the best checkpoint at the end; default: "
                              "the bona fide trials of dirs.sasv_eval_trial, or none when trial_list is set"),
        trial_root=Field(str, None, "folder the trial_list / eval_trial_list paths are relative to"),
        enrollment=Field(str, "utterances", "ASVspoof trials: the speaker model is the mean embedding of its "
                         "asv.*.{female,male}.trn.txt utterances (utterances, as save_asv_embeddings.py) or the "
                         "embedding of its dirs.enrollment_dir file cut to enrollment_samples (file, as the SASV "
                         "model)",
                         choices=("utterances", "file")),
        **AUGMENTER.fields,
        lr=Field(float, 0.001, "Adam learning rate (voxceleb_trainer)", range=POSITIVE),
        wd=Field(float, 0.0, "Adam weight decay", range=ZERO_OR_MORE),
        lr_decay=Field(float, 0.95, "multiply the learning rate by this every lr_decay_epochs epochs (StepLR)",
                       range=DECAY_FACTOR),
        lr_decay_epochs=Field(int, 10, "epochs between learning-rate decays", range=POSITIVE),
    ),
    cm_train=_section(
        lr=Field(float, 0.0001, "system cm: Adam base learning rate (aasist optim_config base_lr)", range=POSITIVE),
        lr_min=Field(float, 0.000005, "final learning rate of the cosine schedule (aasist lr_min)", range=ZERO_OR_MORE),
        betas=Field(list, [0.9, 0.999], "Adam betas", range=Range(0, 1, high_open=True)),
        wd=Field(float, 0.0001, "Adam weight decay", range=ZERO_OR_MORE),
        amsgrad=Field(bool, False, "AMSGrad variant of Adam"),
        scheduler=Field(str, "cosine", "cosine: per-step cosine decay from lr to lr_min over all epochs (aasist); "
                        "constant: no decay", choices=("cosine", "constant")),
        class_weights=Field(list, [0.1, 0.9], "cross-entropy weights [spoof, bona fide] (aasist)", range=ZERO_OR_MORE),
        samples=Field(int, 64600, "training crop, in samples; shorter files are tiled", range=POSITIVE),
        crop=Field(str, "random", "where the training crop starts: random (aasist) or first, the file's first samples "
                   "(SSL_Anti-spoofing)", choices=("random", "first")),
        freq_aug=Field(bool, False, "frequency augmentation: zero a random run of sinc-filter bands per batch "
                       "(aasist)"),
        **RAWBOOST.fields,
        **CODEC_AUGMENT.fields,
        select_by=Field(str, "eer", "dev metric that ranks checkpoints: eer (as aasist) or min_tdcf (needs ASV scores)",
                        choices=("eer", "min_tdcf")),
        asv_scores=_section(
            dev=Field(str, None, "ASV scores of dirs.sasv_dev_trial for the dev min t-DCF: 'SRC KEY score' "
                      "(organisers' asv.dev.gi.trl.scores.txt), 'SPK UTT KEY score' or 'UTT score' in trial order"),
            eval=Field(str, None, "ASV scores of dirs.sasv_eval_trial for the eval min t-DCF (same formats)"),
        ),
        asv_model=Field(str, None, "ASV weights (any asv_weight format; architecture from asv_model) used to score "
                        "the dev/eval trials for the min t-DCF when asv_scores.dev/eval is not given"),
    ),
    dirs=_section(
        database=Field(str, None, "ASVspoof 2019 LA root holding ASVspoof2019_LA_{train,dev,eval}/flac/; a "
                       "protocol key left at its default whose file is not there is looked for here, then in "
                       "ASVspoof2019_LA_cm_protocols/ (cm_*) or ASVspoof2019_LA_asv_protocols/ (the others)"),
        enrollment_dir=Field(str, "enr_audio/", "folder with {dev,eval}/<entry of asv.*.gi.trn.txt>.flac "
                             "concatenated enrollments"),
        cm_trn_list=Field(str, "protocols/ASVspoof2019.LA.cm.train.trn.txt", "CM training protocol"),
        cm_dev_list=Field(str, "protocols/ASVspoof2019.LA.cm.dev.trl.txt", "CM dev protocol"),
        cm_eval_list=Field(str, "protocols/ASVspoof2019.LA.cm.eval.trl.txt", "CM eval protocol"),
        sasv_dev_trial=Field(str, "protocols/ASVspoof2019.LA.asv.dev.gi.trl.txt", "SASV dev trials"),
        sasv_eval_trial=Field(str, "protocols/ASVspoof2019.LA.asv.eval.gi.trl.txt", "SASV eval trials"),
        sasv_dev_trn_trial=Field(str, "protocols/ASVspoof2019.LA.asv.dev.gi.trn.txt", "dev speaker -> enrollment file"),
        sasv_eval_trn_trial=Field(str, "protocols/ASVspoof2019.LA.asv.eval.gi.trn.txt",
                                  "eval speaker -> enrollment file"),
        asv_dev_enrollment_lists=Field(list, ["protocols/ASVspoof2019.LA.asv.dev.female.trn.txt",
                                              "protocols/ASVspoof2019.LA.asv.dev.male.trn.txt"],
                                       "dev speaker -> enrollment utterances (for save_asv_embeddings.py)"),
        asv_eval_enrollment_lists=Field(list, ["protocols/ASVspoof2019.LA.asv.eval.female.trn.txt",
                                               "protocols/ASVspoof2019.LA.asv.eval.male.trn.txt"],
                                        "eval speaker -> enrollment utterances (for save_asv_embeddings.py)"),
        extra_trn_lists=Field(list, [], "extra training protocols (e.g. FAD) in the 2019 CM layout or an ASVspoof 5 "
                              "utterance-list layout (told by the columns), audio in the train audio folder"),
        extra_trn_use=Field(str, "bonafide", "bonafide: extra speakers add bona fide trials only (FADbona); full: "
                            "spoof too (FADfull)",
                            choices=("bonafide", "full")),
        spk_meta=Field(str, "spk_meta/", "unused: speaker metadata is built from the protocols in memory",
                       ignored=True),
        asvspoof5_train_list=Field(str, _PROTOCOL_DEFAULTS["asvspoof5_train_list"], "dataset asvspoof5: training "
                                   "utterance list (training trials and CM training); default: in dirs.database"),
        asvspoof5_dev_cm_list=Field(str, _PROTOCOL_DEFAULTS["asvspoof5_dev_cm_list"], "dataset asvspoof5: dev "
                                    "Track 1 utterance list (CM dev)"),
        asvspoof5_eval_cm_list=Field(str, _PROTOCOL_DEFAULTS["asvspoof5_eval_cm_list"], "dataset asvspoof5: eval "
                                     "Track 1 utterance list (CM eval)"),
        asvspoof5_dev_trial=Field(str, _PROTOCOL_DEFAULTS["asvspoof5_dev_trial"], "dataset asvspoof5: dev Track 2 "
                                  "(SASV) trials"),
        asvspoof5_eval_trial=Field(str, _PROTOCOL_DEFAULTS["asvspoof5_eval_trial"], "dataset asvspoof5: eval "
                                   "Track 2 (SASV) trials"),
        asvspoof5_dev_enroll=Field(str, _PROTOCOL_DEFAULTS["asvspoof5_dev_enroll"], "dataset asvspoof5: dev "
                                   "speaker -> enrollment utterances (the speaker model is their mean embedding)"),
        asvspoof5_eval_enroll=Field(str, _PROTOCOL_DEFAULTS["asvspoof5_eval_enroll"], "dataset asvspoof5: eval "
                                    "speaker -> enrollment utterances"),
        embedding=Field(str, None, "folder of the frozen-embedding cache (cache_frozen_embeddings), shared by runs: "
                        "entries are keyed by the frozen weights, architecture and crop; default: "
                        "<experiment>/frozen_embeddings/"),
    ),
    # Keys of the original configs that this implementation never reads.
    fast_dev_run=Field(bool, False, "unused (PyTorch Lightning option)", ignored=True),
    loss_weight=Field(list, [0.1, 0.9], "unused by the original", ignored=True),
    ngpus=Field(int, 1, "unused: use torchrun --nproc_per_node for several GPUs", ignored=True),
    progbar_refresh=Field(int, 10, "unused: tqdm refreshes itself", ignored=True),
    pl_system=Field(str, "OC", "unused (PyTorch Lightning system name); dataloader / dirs.extra_trn_use select FAD "
                    "sampling", ignored=True),
    ecapa_weight=Field(str, None, "unused by the original", ignored=True),
    b2=_section(
        embeddings=Field(str, None, "system b2: folder with save_asv_embeddings.py's pickles asv_embd_{trn,dev,"
                         "eval}.pk, cm_embd_{trn,dev,eval}.pk and spk_model_{dev,eval}.pk; training trials are drawn "
                         "from the dataset's training list (trial_sampling), dev / eval trials are its trial lists "
                         "(dirs.sasv_{dev,eval}_trial or dirs.asvspoof5_{dev,eval}_trial)"),
        **B2_BACKEND.fields,
        enrollment=Field(str, "utterance", "enrollment side of a training trial: utterance (the baseline: the ASV "
                         "embedding of one bona fide utterance of the claimed speaker, another than the test one in "
                         "a target trial) or speaker_model (the mean of the speaker's bona fide training "
                         "embeddings, the test utterance left out, like the dev / eval speaker models)",
                         choices=("utterance", "speaker_model")),
        lr=Field(float, 0.0001, "Adam learning rate (the baseline's)", range=POSITIVE),
        wd=Field(float, 0.001, "Adam weight decay (the baseline's)", range=ZERO_OR_MORE),
        lr_decay=Field(float, 0.0001, "per-step Keras-style decay, lr / (1 + lr_decay * step) (the baseline's "
                       "keras scheduler); 0: constant", range=ZERO_OR_MORE),
        class_weights=Field(list, [0.1, 0.9], "cross-entropy weights [other trials, target bona fide] (the "
                            "baseline's loss_weight)", range=ZERO_OR_MORE),
    ),
    demo_corpus=_section(
        root=Field(str, None, "when set, generate the synthetic demo corpus here if it is missing (see "
                   "data/synthetic/)", resume=True),
        size=Field(str, "demo", "corpus size", choices=("demo", "tiny"), resume=True),
        seed=Field(int, 0, "corpus seed", range=SEED, resume=True),
        layout=Field(str, "asvspoof2019", "file layout: the ASVspoof 2019 LA one, or the ASVspoof 5 public "
                     "release's (docs/demo.md)", choices=("asvspoof2019", "asvspoof5"), resume=True),
    ),
)


def _fields(schema: dict, prefix: str = "") -> Iterable[tuple[str, Field]]:
    for name, item in schema.items():
        if isinstance(item, dict):
            yield from _fields(item, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", item


def all_keys() -> list[str]:
    return [key for key, _ in _fields(SCHEMA)] + [key for key, item in SCHEMA.items() if isinstance(item, dict)]


def _defaults(schema: dict) -> dict:
    return {name: _defaults(item) if isinstance(item, dict) else copy.deepcopy(item.default)
            for name, item in schema.items()}


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "integer", float: "number", str: "string", bool: "true/false",
                        list: "list", dict: "mapping"}[k] for k in kinds)


def _coerce(value: Any, field: Field, key: str, source: str) -> Any:
    if value is None:
        if field.default is None or field.ignored:
            return None
        raise ConfigError(f"{source}: key '{key}' must be set (default {field.default!r}), got null")
    kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
    if str in kinds and isinstance(value, bool) and ("on" if value else "off") in (field.choices or ()):
        value = "on" if value else "off"  # YAML 1.1 reads a bare on / off (amp: off, --set amp=off) as a boolean
    if float in kinds and isinstance(value, str):
        try:  # PyYAML reads 5e-5 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if kinds == (float,) else value
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        name = _type_name(field.kind)
        raise ConfigError(f"{source}: key '{key}' must be {'an' if name[0] in 'aeiou' else 'a'} {name}, got {value!r}")
    if field.choices is not None and value not in field.choices:
        valid = ", ".join(str(c) for c in field.choices if c is not None)
        raise ConfigError(f"{source}: key '{key}' is {value!r}; valid values: {valid}")
    return value


def _unknown_key(key: str, section: dict, prefix: str, source: str) -> ConfigError:
    candidates = [f"{prefix}{name}" for name in section]
    close = difflib.get_close_matches(f"{prefix}{key}", candidates, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")


def network_section(kind: str, name: str, where: str = "") -> ConfigSection:
    """The declaration of the network registered as `name` in models.ASV_NETWORKS (kind "asv") or CM_NETWORKS
    ("cm"): its class's `config`; an unknown name is a ConfigError after `where`."""
    from models import network_class  # the registry; the class's module is imported on first use

    try:
        network = network_class(kind, name)
    except KeyError as error:
        raise ConfigError(f"{where}{error.args[0]}") from None
    return getattr(network, "config", None) or ConfigSection(fields={}, name=network.__name__)


def asv_schema(architecture: str) -> dict:
    """The asv_model section's schema for an ASV network: `architecture` plus the network's own keys."""
    return {"architecture": SCHEMA["asv_model"]["architecture"], **network_section("asv", architecture).fields}


def _switch_asv_network(target: dict, value: Mapping, source: str, origins: dict[str, str] | None) -> dict:
    """The asv_model schema for the architecture `value` names (else the one already chosen); on a change of
    network, `target` holds the new network's defaults, with the values set earlier for keys both declare."""
    current = target["architecture"]
    name = value.get("architecture", current)
    if not isinstance(name, str):
        return asv_schema(current)  # _coerce reports the type
    schema = asv_schema(name) if name == current else _asv_schema_named(name, source)
    if name != current:
        given = {key: target[key] for key in target if f"asv_model.{key}" in (origins or {}) and key != "architecture"}
        dropped = sorted(key for key in given if key not in schema)
        if dropped:
            raise ConfigError(f"{source}: key 'asv_model.architecture' {name} has no key "
                              f"'asv_model.{dropped[0]}' (set by {origins[f'asv_model.{dropped[0]}']})")
        target.clear()
        target.update({key: copy.deepcopy(item.default) for key, item in schema.items()})
        target.update(given)
        target["architecture"] = current  # _merge sets the new name
    return schema


def _asv_schema_named(name: str, source: str) -> dict:
    try:
        return asv_schema(name)
    except ConfigError as error:
        raise ConfigError(f"{source}: key 'asv_model.architecture': {error}") from None


def _merge(target: dict, values: Mapping, schema: dict, source: str, prefix: str = "",
           origins: dict[str, str] | None = None) -> None:
    """Validate `values` into `target`; `origins` records the source (file or --set) that set each key."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: section '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {values!r}")
    for key, value in values.items():
        if not isinstance(key, str) or key not in schema:
            raise _unknown_key(str(key), schema, prefix, source)
        item = schema[key]
        if isinstance(item, dict):
            if value is None:
                raise ConfigError(f"{source}: section '{prefix}{key}' is empty; remove it or give its keys")
            if not prefix and key == "asv_model" and isinstance(value, Mapping):
                item = _switch_asv_network(target[key], value, source, origins)
            _merge(target[key], value, item, source, f"{prefix}{key}.", origins)
        else:
            target[key] = _coerce(value, item, f"{prefix}{key}", source)
            if origins is not None:
                origins[f"{prefix}{key}"] = source


class Config(dict):
    """A validated configuration: nested dicts with attribute access for reading."""

    source: str = "<defaults>"
    # default protocol path -> where the corpus adapter found it instead, noted when first found (loading does
    # no search; data.corpora.base Corpus.locate).
    found_protocols: dict[str, str]
    # Told "using protocol X (Y does not exist)" the first time the adapter finds X; the command line sets it
    # (runtime.cli.config_from_args) to print the notice once per run. None: collected, not told.
    notify: Callable[[str], None] | None = None
    # The keys the file or --set gave (others hold defaults): the corpus adapter looks for a protocol key's
    # file only when it is not given. None: not known (every key is then used as given).
    given: frozenset[str] | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError as error:
            raise AttributeError(name) from error
        return _wrap(value)

    def get_path(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = node[part]
        return node

    def to_dict(self) -> dict:
        """A deep copy made of plain Python data (what checkpoints store: no class of ours inside)."""
        return _plain(dict(self))


class _View(dict):
    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self[name])
        except KeyError as error:
            raise AttributeError(name) from error


def _wrap(value: Any) -> Any:
    return _View(value) if isinstance(value, dict) and not isinstance(value, _View) else value


def parse_override(text: str) -> tuple[str, Any]:
    """`optim.lr=1e-4` -> ("optim.lr", 0.0001); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
    key, raw = text.split("=", 1)
    try:
        value = _load_yaml(raw, f"--set {text}") if raw.strip() else None
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key.strip(), value


def _nest(dotted: str, value: Any) -> dict:
    result: Any = value
    for part in reversed(dotted.split(".")):
        result = {part: result}
    return result


def _into_mapping_field(config: Config, dotted: str, value: Any) -> tuple[str, Any]:
    """`cm_model.filts=...` changes one entry of the free-form `cm_model` mapping, not all of it."""
    parts = dotted.split(".")
    schema: Any = SCHEMA
    for depth, part in enumerate(parts[:-1]):
        item = schema.get(part) if isinstance(schema, dict) else None
        if isinstance(item, Field) and item.kind is dict:
            field_key = ".".join(parts[:depth + 1])
            current = config.get_path(field_key)
            updated = copy.deepcopy(current) if isinstance(current, dict) else {}
            node = updated
            for inner in parts[depth + 1:-1]:
                node = node.setdefault(inner, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {dotted}: '{inner}' inside '{field_key}' is not a mapping")
            node[parts[-1]] = value
            return field_key, updated
        if not isinstance(item, dict):
            break
        schema = item
    return dotted, value


def build_config(values: Mapping | None = None, *, source: str = "<dict>",
                 overrides: Iterable[str] = (), stem: str | None = None) -> Config:
    """Validate `values` (+ `--set` overrides) against SCHEMA and fill defaults."""
    config = Config(_defaults(SCHEMA))
    config.source = source
    config.found_protocols = {}
    origins: dict[str, str] = {}
    _merge(config, values or {}, SCHEMA, source, origins=origins)
    for text in overrides:
        key, value = parse_override(text)
        key, value = _into_mapping_field(config, key, value)
        _merge(config, _nest(key, value), SCHEMA, f"--set {text}", origins=origins)
    config.given = frozenset(origins)
    _derive(config, stem, origins)
    return config


def _derive(config: Config, stem: str | None, origins: dict[str, str] | None = None) -> None:
    fixed = config["model_arch"].endswith("_fixed")
    if config["train_asv"] is None:
        config["train_asv"] = not fixed
    if config["train_cm"] is None:
        config["train_cm"] = not fixed
    if config["trial_sampling"] is None:
        loader = config["dataloader"]
        if loader is not None:
            config["trial_sampling"] = "four_class" if loader.endswith("4class") else "two_class"
        else:
            config["trial_sampling"] = "two_class" if fixed or config["system"] == "b2" else "four_class"
    loader = config["dataloader"] or ""
    if "FADfull" in loader:
        config["dirs"]["extra_trn_use"] = "full"
    if config["config_name"] is None:
        config["config_name"] = stem or "experiment"
    if not corpus_class(config["dataset"]).concatenated_enrollment:  # single utterances, not 60-90 s files
        for partition in ("dev", "eval"):
            if f"enrollment_samples.{partition}" not in (origins or {}):
                config["enrollment_samples"][partition] = config["test_samples"]
    _check_values(config, origins or {})
    if config["speaker_loss"]["weight"] > 0 and not config["train_asv"]:
        raise ConfigError(f"{config.source}: speaker_loss.weight > 0 needs a trainable ASV sub-system "
                          f"(train_asv is false for {config['model_arch']})")
    _check_rules(config, origins or {})
    _derive_subsystem_training(config)


# Components whose rules span sections (ConfigSection.rules), called after every key has its value.
COMPONENT_RULES = SASV_BACKEND.rules


def _numeric_ranges() -> dict[str, Range]:
    return {key: field.range for key, field in _fields(SCHEMA) if field.range is not None}


# Every numeric key of SCHEMA (ignored keys aside) and its valid values, as the fields declare them; a test
# checks that none is missing. Sample counts also have a lower bound from the networks (_check_sample_counts).
RANGES: dict[str, Range] = _numeric_ranges()
AASIST_DEFAULT_FIRST_CONV = AASIST_CONFIG.fields["first_conv"].default  # AASIST.conf and AASIST-L.conf

DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str, where: str = "") -> None:
    """A device name torch and resolve_device understand (torch.device("gpu") would raise a RuntimeError),
    else a ConfigError naming it after `where`."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise ConfigError(f"{where}{': ' if where else ''}unknown device {name!r}; expected auto, cpu, cuda or cuda:N")


def _origin(origins: Mapping[str, str], key: str, default: str) -> str:
    """The source that set `key` (or the mapping key holding it, e.g. cm_model for cm_model.filts[0])."""
    while key:
        if key in origins:
            return origins[key]
        key = key.rpartition(".")[0] if "." in key else ""
    return default


def non_finite(value: Any, key: str) -> tuple[str, float] | None:
    """The first NaN/inf float inside `value` (nested mappings and lists) and its dotted key."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    if isinstance(value, dict):
        items = ((f"{key}.{name}" if key else str(name), item) for name, item in value.items())
    elif isinstance(value, list):
        items = ((f"{key}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for inner_key, item in items:
        found = non_finite(item, inner_key)
        if found is not None:
            return found
    return None


def cm_model_config(config: Config) -> tuple[dict | None, str]:
    """The CM network's model_config and how messages name its keys: `cm_model` inline ("cm_model."), else the
    `model_config` of the aasist_config file ("<file> model_config."), else (None, "") for AASIST's defaults.
    An aasist_config file that cannot be read or has no model_config gives (None, file): the model builder
    reports it (models.build.aasist_model_config)."""
    if config["cm_model"] is not None:
        return config["cm_model"], "cm_model."
    path = config["aasist_config"]
    if not path:
        return None, ""
    try:
        model_config = json.loads(Path(path).read_text(encoding="utf-8-sig"))["model_config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, path
    return (model_config, "model_config.") if isinstance(model_config, dict) else (None, path)


def _check_cm_network(config: Config, origins: Mapping[str, str]) -> tuple[ConfigSection, dict, str]:
    """The CM network's declared checks on its model_config; returns (its declaration, the model_config it is
    built from, how messages name the model_config's keys)."""
    model_config, prefix = cm_model_config(config)
    if model_config is None:
        return AASIST_CONFIG, AASIST_CONFIG.defaults(), "AASIST's default "
    where = (f"{_origin(origins, 'cm_model', config.source)}: " if prefix == "cm_model." else
             f"{config['aasist_config']}: ")
    architecture = model_config.get("architecture", "AASIST")
    if not isinstance(architecture, str):
        raise ConfigError(f"{where}key '{prefix}architecture' must be a string, got {architecture!r}")
    section = network_section("cm", architecture, f"{where}key '{prefix}architecture': ")
    found = non_finite(model_config, prefix.rstrip("."))
    if found is not None:
        raise ConfigError(f"{where}key '{found[0]}' is {found[1]}; NaN and infinity are not valid values")
    try:
        section.validate(model_config, typed=False)
    except Invalid as problem:
        raise ConfigError(f"{where}key '{prefix}{problem.key}' {problem.message}") from None
    return section, model_config, prefix if prefix == "cm_model." else f"{config['aasist_config']} {prefix}"


def _check_sample_counts(config: Config, origins: Mapping[str, str], asv: ConfigSection,
                         cm: tuple[ConfigSection, dict, str]) -> None:
    """Crops and enrollment lengths at least as long as the networks that read them accept (their declared
    min_samples)."""
    def needs(section: ConfigSection, values: Mapping, prefix: str = "") -> list[tuple[int, str]]:
        if section.min_samples is None:
            return []
        minimum, why = section.min_samples(values)
        return [(minimum, f"{section.name} ({prefix}{why})")]

    asv_needs = needs(asv, config["asv_model"])
    cm_needs = needs(*cm)
    system = config["system"]
    readers = {
        "train_samples": asv_needs + cm_needs if system == "sasv" else [],
        "test_samples": {"sasv": asv_needs + cm_needs, "asv": asv_needs, "cm": cm_needs}.get(system, []),
        "enrollment_samples.dev": asv_needs,
        "enrollment_samples.eval": asv_needs,
        "asv_train.samples": asv_needs,
        "cm_train.samples": cm_needs,
    }
    for key, networks in readers.items():
        value = config.get_path(key)
        for minimum, network in networks:
            if value < minimum:
                raise ConfigError(f"{_origin(origins, key, config.source)}: key '{key}' is {value}, shorter than "
                                  f"{network} accepts: at least {minimum} samples")


def _declared_fields(config: Config) -> Iterable[tuple[str, Field]]:
    """Every key of `config` and its declaration (asv_model: the chosen network's)."""
    for key, field in _fields(SCHEMA):
        if not key.startswith("asv_model."):
            yield key, field
    for name, field in asv_schema(config["asv_model"]["architecture"]).items():
        yield f"asv_model.{name}", field


def _check_values(config: Config, origins: Mapping[str, str]) -> None:
    """Values that would otherwise fail deep inside training (division by zero, bad shapes) or give numbers
    that look right but are not (NaN learning rates, negative weight decays) are refused here: each field's
    declared range / width, then each component's declared checks and rules."""
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{_origin(origins, key, config.source)}: key '{key}' {message}")

    found = non_finite(dict(config), "")
    if found is not None:
        raise fail(found[0], f"is {found[1]}; NaN and infinity are not valid values")
    try:
        for key, field in _declared_fields(config):
            check_field(key, field, config.get_path(key))
    except Invalid as problem:
        raise fail(problem.key, problem.message) from None
    asv = network_section("asv", config["asv_model"]["architecture"])
    for section, name in ((asv, "asv_model"), (SASV_BACKEND, "backend"), (B2_BACKEND, "b2"), (RAWBOOST, "cm_train"),
                          (CODEC_AUGMENT, "cm_train")):
        try:
            for check in section.checks:
                check(config[name])
        except Invalid as problem:
            raise fail(f"{name}.{problem.key}", problem.message) from None
    check_device_name(config["device"], f"{_origin(origins, 'device', config.source)}: key 'device'")
    for section in SCHEMA["dirs"]:
        value = config["dirs"][section]
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise fail(f"dirs.{section}", f"must be a list of paths, got {value!r}")
    cm = _check_cm_network(config, origins)
    _check_sample_counts(config, origins, asv, cm)


def _check_rules(config: Config, origins: Mapping[str, str]) -> None:
    """The components' cross-section rules (e.g. the OC-softmax feature size is the back-end's last width)."""
    for rule in COMPONENT_RULES:
        try:
            rule(config)
        except Invalid as problem:
            raise ConfigError(f"{_origin(origins, problem.key, config.source)}: key '{problem.key}' "
                              f"{problem.message}") from None


def _derive_subsystem_training(config: Config) -> None:
    """Defaults and consistency of the asv_train / cm_train / b2 sections (systems asv, cm and b2)."""
    asv, cm, source = config["asv_train"], config["cm_train"], config.source
    if asv["n_per_speaker"] is None:
        asv["n_per_speaker"] = 2 if asv["loss"] in PROTOTYPICAL_LOSSES else 1
    if asv["loss"] in PROTOTYPICAL_LOSSES and asv["n_per_speaker"] < 2:
        raise ConfigError(f"{source}: asv_train.n_per_speaker must be >= 2 for {asv['loss']}, "
                          f"got {asv['n_per_speaker']}")
    for key, root in (("train_list", "train_root"), ("trial_list", "trial_root"), ("eval_trial_list", "trial_root")):
        if asv[key] is not None and asv[root] is None:
            raise ConfigError(f"{source}: asv_train.{key} is set, so asv_train.{root} (the folder its paths are "
                              f"relative to) must be set too")
    for key in ("cm_train.betas", "cm_train.class_weights", "b2.class_weights"):  # RANGES checked each entry
        values = config.get_path(key)
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{source}: {key} must be two numbers, got {values!r}")
    for key in ("cm_train.class_weights", "b2.class_weights"):
        if not sum(config.get_path(key)) > 0:
            raise ConfigError(f"{source}: {key} must not both be zero, got {config.get_path(key)!r}")
    # Only a corpus one can train on: a CM evaluation set (2021, In-the-Wild) is scored with a training
    # config whose cm_train keys name the 2019 sets, and save_cm_score.py reads none of them there.
    trainable = corpus_class(config["dataset"])
    if not trainable.has_tdcf and "train" in trainable.partitions and config["system"] == "cm" and (
            cm["select_by"] == "min_tdcf" or cm["asv_scores"]["dev"] or cm["asv_scores"]["eval"] or cm["asv_model"]):
        raise ConfigError(f"{source}: the min t-DCF (cm_train.select_by min_tdcf, cm_train.asv_scores, "
                          f"cm_train.asv_model) is ASVspoof 2019's; dataset {config['dataset']} selects by eer")
    if cm["lr_min"] > cm["lr"]:
        raise ConfigError(f"{source}: cm_train.lr_min ({cm['lr_min']}) must not exceed cm_train.lr ({cm['lr']})")
    if config["system"] == "cm" and cm["select_by"] == "min_tdcf" and not (cm["asv_scores"]["dev"] or cm["asv_model"]):
        raise ConfigError(f"{source}: cm_train.select_by is min_tdcf, which needs dev ASV scores: set "
                          f"cm_train.asv_scores.dev or cm_train.asv_model")


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the later value).

    Mappings are built parent first, so each one records the dotted key of the mappings below it
    (`_keys`, by node) before they are built, and a duplicate is reported with its full key."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self._keys: dict[int, str] = {}

    def _name_children(self, node: Any, key: str) -> None:
        if isinstance(node, MappingNode):
            self._keys[id(node)] = key
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self._name_children(item, f"{key}[{index}]")

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            prefix = self._keys.get(id(node), "")
            lines: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # a merge key (<<) may be overridden, and a non-scalar key is refused by PyYAML
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                dotted = f"{prefix}.{key}" if prefix else str(key)
                try:
                    first = lines.get(key)
                except TypeError:  # unhashable: PyYAML reports it
                    continue
                if first is not None:
                    where = f"lines {first} and {line}" if first != line else f"both on line {line}"
                    raise ConfigError(f"{self.source}: key '{dotted}' is given twice ({where}); "
                                      f"YAML would silently keep the second value")
                lines[key] = line
                self._name_children(value_node, dotted)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> Any:
    loader = _StrictLoader(text, source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read and validate a `.conf` file (UTF-8, with or without a byte-order mark)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text config (invalid UTF-8 at byte {error.start})") from None
    try:
        values = _load_yaml(text, str(path))
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where} {problem}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return build_config(values, source=str(path), overrides=overrides, stem=path.stem)


def _plain(value: Any) -> Any:
    """A deep copy in plain dicts, lists, strings and numbers (what yaml.safe_dump represents and what
    checkpoints may hold)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return str(value)
    return copy.deepcopy(value)


def _comment(text: str) -> str:
    """`text` on one line that YAML reads as part of a comment: line breaks and other unprintable
    characters (which PyYAML refuses even in comments) are written as escapes."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class _ConfigDumper(yaml.SafeDumper):
    """Mappings in block style, lists in flow style ([3, 4, 6, 3])."""


_ConfigDumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=True))


def config_text(config: Mapping[str, Any], command: Sequence[str]) -> str:
    """The effective config as `.conf` text: every key, as the file and the --set overrides gave it or its
    default / derived value, in SCHEMA order (block-style YAML), with `command` in a comment at the top.
    load_config reads it back to the same values."""
    body = yaml.dump(_plain(config), Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=2**31 - 1)
    return f"# command: {_comment(shlex.join(command))}\n{body}"


def require_database(config: Config) -> Path:
    """The database root, checked to exist (the corpus adapter's check_layout checks its audio folders)."""
    return corpus_of(config).require_database()


# dirs keys a resumed run may change (the data's place, not what is trained); kept here rather than as
# resume=True on their fields, which the corpus adapter's dirs section declares.
_RESUME_FREE_DIRS = ("dirs.database", "dirs.enrollment_dir", "dirs.embedding")


def resume_may_change() -> tuple[str, ...]:
    """The keys (or sections) whose value may differ between a run and its resumption (`resume=True`)."""
    return tuple(key for key, field in _fields(SCHEMA) if field.resume) + _RESUME_FREE_DIRS


def describe_schema() -> str:
    """Markdown table of every key, for the README: SCHEMA's, then the default CM network's model_config keys."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    cm_keys = [(f"cm_model.{name}", field) for name, field in AASIST_CONFIG.fields.items()]
    for key, field in _fields(SCHEMA):
        keys = [(key, field)] + (cm_keys if key == "cm_model" else [])
        for name, item in keys:
            rows.append(_schema_row(name, item, cm=name.startswith("cm_model.")))
    return "\n".join(rows)


def _schema_row(key: str, field: Field, cm: bool = False) -> str:
    doc = ("ignored. " if field.ignored else "") + ("AASIST model_config: " if cm else "") + field.doc
    named = [str(choice) for choice in field.choices or () if choice is not None]  # None: not set
    if named and not all(re.search(rf"\b{re.escape(choice)}\b", field.doc) for choice in named):
        doc += f" (one of: {', '.join(named)})"
    if field.range is not None:
        doc += f"; {'each ' if isinstance(field.default, list) else ''}{field.range.describe()}"
    if field.length is not None:
        doc += f"; {field.length or 'one or more'} positive integers"
    if field.resume or key in _RESUME_FREE_DIRS:
        doc += "; may change on --resume"
    return f"| `{key}` | {_type_name(field.kind)} | `{field.default!r}` | {doc} |"
