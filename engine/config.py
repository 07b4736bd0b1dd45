"""Experiment configuration: one schema, validated in one place.

A `.conf` file is a YAML flow mapping (the original repo's JSON-like files,
trailing commas included, load unchanged). Every key is declared in SCHEMA with
its type, default and meaning; unknown keys, wrong types and missing sections
are errors that name the key.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the file and key."""


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    ignored: bool = False  # accepted for compatibility with the original configs, never read


def _section(**fields: Field | dict) -> dict:
    return fields


ASVSPOOF_URL = "https://datashare.ed.ac.uk/handle/10283/3336"

SCHEMA: dict = _section(
    config_name=Field(str, None, "experiment name; defaults to the config file stem"),
    system=Field(str, "sasv", "what main.py trains", choices=("sasv",)),
    seed=Field(int, 1234, "seed for python, numpy, torch and the trial sampler"),
    batch_size=Field(int, 20, "training trials per optimisation step"),
    eval_batch_size=Field(int, 32, "utterances per batch when extracting embeddings for scoring"),
    epoch=Field(int, 20, "number of training epochs"),
    trials_per_epoch=Field(int, None, "training trials per epoch; default: number of utterances in the training CM protocol (as the original)"),
    save_top_k=Field(int, 3, "keep this many best checkpoints by dev SASV-EER (plus last.ckpt)"),
    val_interval_epoch=Field(int, 1, "validate on the dev trials every N epochs"),
    gradient_clip=Field((int, float), 0, "clip the gradient norm to this value; 0 disables"),
    model_arch=Field(str, "ResNetSE34V2_AASIST_OC", "ResNetSE34V2_AASIST_OC trains everything jointly; ResNetSE34V2_AASIST_OC_fixed freezes ASV and CM",
                     choices=("ResNetSE34V2_AASIST_OC", "ResNetSE34V2_AASIST_OC_fixed")),
    train_asv=Field(bool, None, "train the ASV network; default from model_arch"),
    train_cm=Field(bool, None, "train the CM network; default from model_arch"),
    dataloader=Field(str, None, "original dataloader name; selects the trial sampling when `trial_sampling` is not set",
                     choices=(None, "Datalaoder_sasv", "Datalaoder_sasv_4class", "Datalaoder_sasv_FADbona",
                              "Datalaoder_sasv_FADbona_4class", "Datalaoder_sasv_FADfull", "Datalaoder_sasv_FADfull_4class")),
    trial_sampling=Field(str, None, "four_class: target/nontarget x bona fide/spoof, equal odds (joint); two_class: half target, half nontarget split between zero-effort and same-speaker spoof (fixed). Default from model_arch",
                         choices=(None, "four_class", "two_class")),
    train_crop=Field(str, "first", "training crop: first (the original: first N samples, tiled when shorter) or random", choices=("first", "random")),
    train_samples=Field(int, 64600, "samples per training utterance"),
    test_samples=Field(int, 64600, "samples per test utterance when scoring"),
    enrollment_samples=_section(
        dev=Field(int, 960000, "enrollment waveform length for dev scoring (original read_waveform_eval_1)"),
        eval=Field(int, 1440000, "enrollment waveform length for eval scoring (original read_waveform_eval_2)"),
    ),
    sample_rate=Field(int, 16000, "expected sampling rate"),
    audio_ext=Field(str, "flac", "file extension of the utterances in ASVspoof2019_LA_<part>/flac/", choices=("flac", "wav")),
    resample=Field(bool, False, "resample / down-mix audio that is not 16 kHz mono instead of refusing it"),
    device=Field(str, "auto", "auto (CUDA when present), cuda, cuda:N or cpu"),
    amp=Field(str, "auto", "mixed precision: auto (bf16 on CUDA, off on CPU), bf16, fp16 or off",
              choices=("auto", "bf16", "fp16", "off")),
    asv_weight=Field(str, None, "initial ASV weights: voxceleb_trainer .model (e.g. baseline_v2_ap.model) or a joint checkpoint"),
    aasist_config=Field(str, None, "AASIST JSON config; its model_config builds the CM network"),
    aasist_weight=Field(str, None, "initial CM weights: AASIST .pth or a joint checkpoint"),
    init_checkpoint=Field(str, None, "initialise every part from a joint checkpoint (Lightning .ckpt or ours)"),
    asv_model=_section(
        n_out=Field(int, 512, "speaker embedding size"),
        encoder_type=Field(str, "ASP", "attentive statistics (ASP) or self-attentive (SAP) pooling", choices=("ASP", "SAP")),
        n_mels=Field(int, 64, "mel bands"),
        layers=Field(list, [3, 4, 6, 3], "SE basic blocks per stage"),
        num_filters=Field(list, [32, 64, 128, 256], "channels per stage"),
    ),
    cm_model=Field(dict, None, "AASIST model_config written inline; overrides aasist_config"),
    backend=_section(
        conv_channels=Field(list, [64, 128, 256], "channels of the three fusion Conv1d blocks"),
        hidden_dims=Field(list, [512, 256], "fusion MLP widths; the last one is the OC-softmax feature size"),
    ),
    optimizer=Field(str, "adam", "optimiser", choices=("adam",)),
    optim=_section(
        lr=Field(float, 5e-5, "learning rate"),
        wd=Field(float, 1e-4, "weight decay"),
        gamma=Field(float, 0.95, "ExponentialLR decay factor"),
        scheduler_interval=Field(int, 200, "apply the decay every N optimisation steps"),
        scheduler=Field(str, "keras", "unused by the original", ignored=True),
        r_real=Field(float, 0.8, "OC-softmax margin for target bona fide"),
        r_fake=Field(float, 0.2, "OC-softmax margin for other trials"),
        alpha=Field(float, 10.0, "OC-softmax scale"),
        oc_dim=Field(int, 256, "OC-softmax feature size; must equal backend.hidden_dims[-1]"),
    ),
    loader=_section(
        n_workers=Field(int, 4, "DataLoader worker processes"),
    ),
    dirs=_section(
        database=Field(str, None, "ASVspoof 2019 LA root holding ASVspoof2019_LA_{train,dev,eval}/flac/"),
        enrollment_dir=Field(str, "enr_audio/", "folder with {dev,eval}/<entry of asv.*.gi.trn.txt>.flac concatenated enrollments"),
        cm_trn_list=Field(str, "protocols/ASVspoof2019.LA.cm.train.trn.txt", "CM training protocol"),
        cm_dev_list=Field(str, "protocols/ASVspoof2019.LA.cm.dev.trl.txt", "CM dev protocol"),
        cm_eval_list=Field(str, "protocols/ASVspoof2019.LA.cm.eval.trl.txt", "CM eval protocol"),
        sasv_dev_trial=Field(str, "protocols/ASVspoof2019.LA.asv.dev.gi.trl.txt", "SASV dev trials"),
        sasv_eval_trial=Field(str, "protocols/ASVspoof2019.LA.asv.eval.gi.trl.txt", "SASV eval trials"),
        sasv_dev_trn_trial=Field(str, "protocols/ASVspoof2019.LA.asv.dev.gi.trn.txt", "dev speaker -> enrollment file"),
        sasv_eval_trn_trial=Field(str, "protocols/ASVspoof2019.LA.asv.eval.gi.trn.txt", "eval speaker -> enrollment file"),
        asv_dev_enrollment_lists=Field(list, ["protocols/ASVspoof2019.LA.asv.dev.female.trn.txt",
                                              "protocols/ASVspoof2019.LA.asv.dev.male.trn.txt"],
                                       "dev speaker -> enrollment utterances (for save_asv_embeddings.py)"),
        asv_eval_enrollment_lists=Field(list, ["protocols/ASVspoof2019.LA.asv.eval.female.trn.txt",
                                               "protocols/ASVspoof2019.LA.asv.eval.male.trn.txt"],
                                        "eval speaker -> enrollment utterances (for save_asv_embeddings.py)"),
        extra_trn_lists=Field(list, [], "extra CM-format training protocols (e.g. FAD), audio in the train flac folder"),
        extra_trn_use=Field(str, "bonafide", "bonafide: extra speakers add bona fide trials only (FADbona); full: spoof too (FADfull)",
                            choices=("bonafide", "full")),
        spk_meta=Field(str, "spk_meta/", "unused: speaker metadata is built from the protocols in memory", ignored=True),
        embedding=Field(str, "embeddings/", "unused: no precomputed embeddings are needed", ignored=True),
    ),
    # Keys of the original configs that this implementation never reads.
    fast_dev_run=Field(bool, False, "unused (PyTorch Lightning option)", ignored=True),
    loss_weight=Field(list, [0.1, 0.9], "unused by the original", ignored=True),
    ngpus=Field(int, 1, "unused: use torchrun --nproc_per_node for several GPUs", ignored=True),
    progbar_refresh=Field(int, 10, "unused: tqdm refreshes itself", ignored=True),
    pl_system=Field(str, "OC", "unused (PyTorch Lightning system name); dataloader / dirs.extra_trn_use select FAD sampling", ignored=True),
    ecapa_weight=Field(str, None, "unused by the original", ignored=True),
    demo_corpus=_section(
        root=Field(str, None, "when set, generate the synthetic demo corpus here if it is missing (see data/synthetic.py)"),
        size=Field(str, "demo", "corpus size", choices=("demo", "tiny")),
        seed=Field(int, 0, "corpus seed"),
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
        return None
    kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
    if float in kinds and isinstance(value, str):
        try:  # PyYAML reads 5e-5 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if kinds == (float,) else value
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise ConfigError(f"{source}: key '{key}' must be a {_type_name(field.kind)}, got {value!r}")
    if field.choices is not None and value not in field.choices:
        valid = ", ".join(str(c) for c in field.choices if c is not None)
        raise ConfigError(f"{source}: key '{key}' is {value!r}; valid values: {valid}")
    return value


def _unknown_key(key: str, section: dict, prefix: str, source: str) -> ConfigError:
    candidates = [f"{prefix}{name}" for name in section]
    close = difflib.get_close_matches(f"{prefix}{key}", candidates, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")


def _merge(target: dict, values: Mapping, schema: dict, source: str, prefix: str = "") -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: section '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {values!r}")
    for key, value in values.items():
        if not isinstance(key, str) or key not in schema:
            raise _unknown_key(str(key), schema, prefix, source)
        item = schema[key]
        if isinstance(item, dict):
            if value is None:
                raise ConfigError(f"{source}: section '{prefix}{key}' is empty; remove it or give its keys")
            _merge(target[key], value, item, source, f"{prefix}{key}.")
        else:
            target[key] = _coerce(value, item, f"{prefix}{key}", source)


class Config(dict):
    """A validated configuration: nested dicts with attribute access for reading."""

    source: str = "<defaults>"

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
        return copy.deepcopy(dict(self))


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
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(dotted: str, value: Any) -> dict:
    result: Any = value
    for part in reversed(dotted.split(".")):
        result = {part: result}
    return result


def build_config(values: Mapping | None = None, *, source: str = "<dict>",
                 overrides: Iterable[str] = (), stem: str | None = None) -> Config:
    """Validate `values` (+ `--set` overrides) against SCHEMA and fill defaults."""
    config = Config(_defaults(SCHEMA))
    config.source = source
    _merge(config, values or {}, SCHEMA, source)
    for text in overrides:
        key, value = parse_override(text)
        _merge(config, _nest(key, value), SCHEMA, f"--set {text}")
    _derive(config, stem)
    return config


def _derive(config: Config, stem: str | None) -> None:
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
            config["trial_sampling"] = "two_class" if fixed else "four_class"
    loader = config["dataloader"] or ""
    if "FADfull" in loader:
        config["dirs"]["extra_trn_use"] = "full"
    if config["config_name"] is None:
        config["config_name"] = stem or "experiment"
    if config["optim"]["oc_dim"] != config["backend"]["hidden_dims"][-1]:
        raise ConfigError(f"{config.source}: optim.oc_dim ({config['optim']['oc_dim']}) must equal "
                          f"backend.hidden_dims[-1] ({config['backend']['hidden_dims'][-1]})")
    for key in ("batch_size", "eval_batch_size", "epoch", "train_samples", "test_samples", "save_top_k"):
        if config[key] <= 0:
            raise ConfigError(f"{config.source}: key '{key}' must be positive, got {config[key]}")


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read and validate a `.conf` file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    try:
        values = yaml.safe_load(text)
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


def require_database(config: Config) -> Path:
    """The database root, checked to have the ASVspoof 2019 LA layout."""
    database = config["dirs"]["database"]
    if not database:
        raise ConfigError(f"{config.source}: dirs.database is not set; point it at the ASVspoof 2019 LA root "
                          f"(download from {ASVSPOOF_URL})")
    root = Path(database)
    expected = root / "ASVspoof2019_LA_train" / "flac"
    if not root.is_dir():
        raise ConfigError(f"{config.source}: dirs.database folder {root} does not exist; expected ASVspoof 2019 LA "
                          f"with {expected} (download from {ASVSPOOF_URL})")
    return root


def describe_schema() -> str:
    """Markdown table of every key, for the README."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, field in _fields(SCHEMA):
        doc = ("ignored. " if field.ignored else "") + field.doc
        rows.append(f"| `{key}` | {_type_name(field.kind)} | `{field.default!r}` | {doc} |")
    return "\n".join(rows)
