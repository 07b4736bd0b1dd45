"""Config loading and validation: the original configs load, mistakes are named."""
from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

import models
from runtime.config import ConfigError, build_config, describe_schema, load_config, parse_override, require_database
from runtime.schema import POSITIVE, ConfigSection, Field, Invalid

REPO = Path(__file__).resolve().parent.parent
ORIGINAL_JOINT_CONF = """{
    "batch_size": 20,
    "dataloader": "Datalaoder_sasv_4class",
    "config_name": "ResNetSE34V2_AASIST_OC",
    "dirs": {
        "spk_meta": "spk_meta/",
        "embedding": "embeddings/",
        "sasv_dev_trn_trial": "protocols/ASVspoof2019.LA.asv.dev.gi.trn.txt",
        "sasv_eval_trn_trial": "protocols/ASVspoof2019.LA.asv.eval.gi.trn.txt",
        "sasv_dev_trial": "protocols/ASVspoof2019.LA.asv.dev.gi.trl.txt",
        "sasv_eval_trial": "protocols/ASVspoof2019.LA.asv.eval.gi.trl.txt",
        "cm_trn_list": "protocols/ASVspoof2019.LA.cm.train.trn.txt",
        "cm_dev_list": "protocols/ASVspoof2019.LA.cm.dev.trl.txt",
        "cm_eval_list": "protocols/ASVspoof2019.LA.cm.eval.trl.txt",
        "database": "/path/to/your/LA/"
    },
    "epoch": 20,
    "fast_dev_run": false,
    "loader": {
        "n_workers": 8
    },
    "loss_weight": [0.1, 0.9],
    "model_arch": "ResNetSE34V2_AASIST_OC",
    "ngpus": 1,
    "optimizer": "adam",
    "optim": {
        "lr": 0.00005,
        "scheduler": "keras",
        "wd": 0.0001,
        "gamma": 0.95,
        "r_real": 0.8,
        "r_fake": 0.2,
        "alpha": 10.0,
        "oc_dim": 256,
    },
    "progbar_refresh": 10,
    "pl_system": "OC",
    "save_top_k": 3,
    "seed": 1234,
    "val_interval_epoch": 1,
    "gradient_clip": 0,
    "aasist_config": "./aasist/config/AASIST.conf",
    "aasist_weight": "./aasist/models/weights/AASIST.pth",
    "ecapa_weight": "./ECAPATDNN/exps/pretrain.model"
}"""


def write(tmp_path: Path, text: str, name: str = "exp.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_original_joint_config_loads_unchanged(tmp_path):
    config = load_config(write(tmp_path, ORIGINAL_JOINT_CONF, "ResNetSE34V2_AASIST_OC.conf"))
    assert config["batch_size"] == 20 and config["epoch"] == 20
    assert config["optim"]["lr"] == pytest.approx(5e-5) and config["optim"]["gamma"] == 0.95
    assert config["train_asv"] and config["train_cm"]
    assert config["trial_sampling"] == "four_class"
    assert config["dirs"]["enrollment_dir"] == "enr_audio/"
    assert config.optim.oc_dim == 256


def test_fixed_arch_freezes_subsystems_and_uses_two_class_trials(tmp_path):
    text = ORIGINAL_JOINT_CONF.replace('"ResNetSE34V2_AASIST_OC",\n    "ngpus"',
                                       '"ResNetSE34V2_AASIST_OC_fixed",\n    "ngpus"')
    text = text.replace("Datalaoder_sasv_4class", "Datalaoder_sasv")
    config = load_config(write(tmp_path, text))
    assert not config["train_asv"] and not config["train_cm"]
    assert config["trial_sampling"] == "two_class"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.conf")))
def test_shipped_configs_validate(name):
    load_config(REPO / "configs" / name)


def test_unknown_key_names_key_and_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr'; did you mean 'optim.lr'\?"):
        load_config(write(tmp_path, '{"optim": {"lrr": 0.1}}'))
    with pytest.raises(ConfigError, match=r"unknown key 'batchsize'; did you mean 'batch_size'"):
        load_config(write(tmp_path, '{"batchsize": 3}'))


def test_wrong_type_and_choice(tmp_path):
    with pytest.raises(ConfigError, match=r"exp.conf: key 'batch_size' must be a integer|"
                                          r"exp.conf: key 'batch_size' must be an? integer"):
        load_config(write(tmp_path, '{"batch_size": "twenty"}'))
    with pytest.raises(ConfigError, match=r"key 'model_arch' is 'ResNet'; valid values"):
        load_config(write(tmp_path, '{"model_arch": "ResNet"}'))
    with pytest.raises(ConfigError, match=r"key 'train_asv' must be a true/false"):
        load_config(write(tmp_path, '{"train_asv": 1}'))


def test_section_given_a_scalar_or_empty(tmp_path):
    with pytest.raises(ConfigError, match=r"section 'dirs' must be a mapping"):
        load_config(write(tmp_path, '{"dirs": 3}'))
    with pytest.raises(ConfigError, match=r"section 'optim' is empty"):
        load_config(write(tmp_path, 'optim:\n'))


def test_yaml_syntax_error_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"exp.conf: line \d+"):
        load_config(write(tmp_path, '{"a": 1,\n "b": [1, 2}\n'))


def test_float_without_dot_is_a_number(tmp_path):
    assert load_config(write(tmp_path, '{"optim": {"lr": 5e-5}}'))["optim"]["lr"] == pytest.approx(5e-5)


def test_overrides():
    config = build_config({}, overrides=["optim.lr=1e-4", "batch_size=8", "dirs.database=/data/LA"])
    assert config["optim"]["lr"] == pytest.approx(1e-4)
    assert config["batch_size"] == 8 and config["dirs"]["database"] == "/data/LA"
    with pytest.raises(ConfigError, match=r"--set optim.lrr=1: unknown key 'optim.lrr'"):
        build_config({}, overrides=["optim.lrr=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("batch_size")


def test_override_inside_a_free_form_mapping_keeps_its_other_entries():
    base = {"cm_model": {"architecture": "AASIST", "first_conv": 128,
                         "filts": [70, [1, 32], [32, 32], [32, 64], [64, 64]], "gat_dims": [64, 32],
                         "pool_ratios": [0.5, 0.7, 0.5, 0.5], "temperatures": [2.0, 2.0, 100.0, 100.0]}}
    config = build_config(base, overrides=["cm_model.filts=[16, [1, 8], [8, 8], [8, 16], [16, 16]]"])
    assert config["cm_model"]["filts"] == [16, [1, 8], [8, 8], [8, 16], [16, 16]]
    assert config["cm_model"]["first_conv"] == 128 and config["cm_model"]["architecture"] == "AASIST"
    assert base["cm_model"]["filts"][:2] == [70, [1, 32]]  # the caller's mapping is not modified
    with pytest.raises(ConfigError, match="'first_conv' inside 'cm_model' is not a mapping"):
        build_config(base, overrides=["cm_model.first_conv.x=1"])


def test_oc_dim_must_match_backend():
    with pytest.raises(ConfigError, match="oc_dim"):
        build_config({"optim": {"oc_dim": 128}})


def test_missing_database_says_where_to_get_it(tmp_path):
    config = build_config({"dirs": {"database": str(tmp_path / "nowhere")}})
    with pytest.raises(ConfigError, match=r"nowhere does not exist.*ASVspoof2019_LA_train.*datashare"):
        require_database(config)


def test_schema_table_lists_ignored_keys():
    table = describe_schema()
    assert "| `ecapa_weight` |" in table and "ignored." in table


def test_configuration_page_documents_every_key():
    page = REPO / "docs" / "configuration.md"
    assert describe_schema() in page.read_text(), "regenerate the table in docs/configuration.md with describe_schema()"


def test_widths_the_networks_cannot_be_built_with_are_config_errors(tmp_path):
    """Values that used to pass validation and end in a ValueError traceback while building the networks."""
    path = write(tmp_path, '{"optim": {"oc_dim": 128}}')
    with pytest.raises(ConfigError) as error:  # the fusion back-end has exactly two MLP widths
        load_config(path, ["backend.hidden_dims=[512,256,128]"])
    assert "'backend.hidden_dims'" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="'cm_model.filts\\[4\\]\\[0\\]'"):  # AASIST's blocks chain their channels
        load_config(path, ["cm_model={architecture: AASIST, first_conv: 128, filts: [70, [1, 32], [32, 32], "
                           "[32, 64], [32, 64]], gat_dims: [64, 32], pool_ratios: [0.5, 0.7, 0.5, 0.5], "
                           "temperatures: [2.0, 2.0, 100.0, 100.0]}"])
    with pytest.raises(ConfigError, match="'cm_model.filts' must be given"):
        load_config(path, ["cm_model={first_conv: 128}"])
    with pytest.raises(ConfigError, match="'cm_model.architecture'"):
        load_config(path, ["cm_model={architecture: Nope}"])


class ToyASV(nn.Module):
    """A test network with keys of its own: `width` hidden units, `n_out` outputs."""

    def _width_divides_output(values) -> None:
        if values["n_out"] % values["width"]:
            raise Invalid("width", f"must divide n_out ({values['n_out']}), got {values['width']}")

    config = ConfigSection(name="ToyASV", fields=dict(
        width=Field(int, 4, "hidden units", range=POSITIVE),
        n_out=Field(int, 8, "embedding size", range=POSITIVE),
    ), checks=(_width_divides_output,), min_samples=lambda values: (values["width"], "one frame per unit"))

    def __init__(self, width: int, n_out: int, sample_rate: int) -> None:
        super().__init__()
        self.width, self.sample_rate = width, sample_rate
        self.layers = nn.Sequential(nn.Linear(1, width), nn.Linear(width, n_out))


def test_a_new_asv_network_brings_its_own_keys(tmp_path, monkeypatch):
    from models.build import build_asv_network

    monkeypatch.setitem(models.ASV_NETWORKS, "ToyASV", f"{__name__}:ToyASV")  # the one registry line
    path = write(tmp_path, 'asv_model: {architecture: ToyASV, width: 3, n_out: 12}\noptim: {oc_dim: 256}\n')
    config = load_config(path)
    assert config["asv_model"] == {"architecture": "ToyASV", "width": 3, "n_out": 12}
    network = build_asv_network(config)
    assert isinstance(network, ToyASV) and network.width == 3 and network.layers[1].out_features == 12
    assert load_config(path, ["asv_model.width=6"])["asv_model"]["width"] == 6
    for override, key in (("asv_model.width=0", "asv_model.width"),  # its declared range
                          ("asv_model.width=5", "asv_model.width"),  # its declared check
                          ("asv_model.layers=[1,1,1,1]", "asv_model.layers"),  # ResNetSE34V2's key, not its
                          ("asv_model.width=3.5", "asv_model.width")):  # its declared type
        with pytest.raises(ConfigError) as error:
            load_config(path, [override])
        assert f"'{key}'" in str(error.value) and str(error.value).startswith(f"--set {override}")
    with pytest.raises(ConfigError, match="'asv_train.samples' is 2"):  # its declared minimum input
        load_config(path, ["system=asv", "asv_train.samples=2"])
    with pytest.raises(ConfigError, match="'asv_model.architecture'.*ToyASV2"):
        load_config(path, ["asv_model.architecture=ToyASV2"])
    # ResNetSE34V2 keys set by the file and a switch to the toy: refused, naming the key the toy lacks.
    resnet = write(tmp_path, '{"asv_model": {"n_mels": 40}}', "resnet.conf")
    with pytest.raises(ConfigError, match="asv_model.n_mels"):
        load_config(resnet, ["asv_model.architecture=ToyASV"])
