"""Protocols left at their default are looked for where users keep them (the default path, dirs.database,
the official ASVspoof 2019 LA sub-folders); a path the config names is used as given."""
from __future__ import annotations

import argparse
import copy
import pickle
import shutil
from pathlib import Path

import pytest
import yaml

from data.protocols import ProtocolError, read_cm_protocol, read_enrollment_utterances, read_sasv_trials
from runtime.cli import config_from_args
from runtime.config import build_config, config_text

CM_TRAIN = "ASVspoof2019.LA.cm.train.trn.txt"
DEV_TRIALS = "ASVspoof2019.LA.asv.dev.gi.trl.txt"
FEMALE, MALE = "ASVspoof2019.LA.asv.dev.female.trn.txt", "ASVspoof2019.LA.asv.dev.male.trn.txt"
CM_FOLDER, ASV_FOLDER = "ASVspoof2019_LA_cm_protocols", "ASVspoof2019_LA_asv_protocols"


@pytest.fixture
def place(fixtures, tmp_path, monkeypatch):
    """Copy a real protocol file into a folder under tmp_path (the working directory of the test)."""
    monkeypatch.chdir(tmp_path)

    def copy_to(folder: str, name: str) -> Path:
        target = tmp_path / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fixtures / "protocols" / name, target)
        return target

    return copy_to


def config(database: str = "LA", **values):
    return build_config({"dirs": {"database": database, **values}})


def test_default_path_is_used_when_present(place):
    place("protocols", CM_TRAIN)
    place("LA", CM_TRAIN)  # also in the database: the default path comes first
    built = config()
    assert built["dirs"]["cm_trn_list"] == f"protocols/{CM_TRAIN}"
    assert built.found_protocols == {}


def test_database_root(place):
    """The original save_asv_embeddings.py read the enrollment lists from <database>/ (the reported bug)."""
    place("LA", FEMALE), place("LA", MALE)
    place(f"LA/{ASV_FOLDER}", FEMALE)  # the root comes before the sub-folder
    built = config()
    assert built["dirs"]["asv_dev_enrollment_lists"] == [f"LA/{FEMALE}", f"LA/{MALE}"]
    assert built.found_protocols == {f"protocols/{FEMALE}": f"LA/{FEMALE}", f"protocols/{MALE}": f"LA/{MALE}"}
    speakers = read_enrollment_utterances(built["dirs"]["asv_dev_enrollment_lists"])
    assert len(speakers) == 6 + 4  # lines of the two fixture files
    assert speakers["LA_0078"][0] == "LA_D_1045602"


def test_official_sub_folders(place):
    place(f"LA/{CM_FOLDER}", CM_TRAIN)
    place(f"LA/{ASV_FOLDER}", DEV_TRIALS)
    place(f"LA/{ASV_FOLDER}", FEMALE), place(f"LA/{ASV_FOLDER}", MALE)
    built = config()
    assert built["dirs"]["cm_trn_list"] == f"LA/{CM_FOLDER}/{CM_TRAIN}"
    assert built["dirs"]["sasv_dev_trial"] == f"LA/{ASV_FOLDER}/{DEV_TRIALS}"
    assert built["dirs"]["asv_dev_enrollment_lists"] == [f"LA/{ASV_FOLDER}/{FEMALE}", f"LA/{ASV_FOLDER}/{MALE}"]
    assert len(read_cm_protocol(built["dirs"]["cm_trn_list"])) == 25380
    assert len(read_sasv_trials(built["dirs"]["sasv_dev_trial"])) == 29548


def test_cm_protocol_not_looked_for_in_the_asv_folder(place):
    place(f"LA/{ASV_FOLDER}", CM_TRAIN)
    with pytest.raises(ProtocolError) as error:
        read_cm_protocol(config()["dirs"]["cm_trn_list"])
    assert f"{CM_FOLDER}/{CM_TRAIN}" in str(error.value) and ASV_FOLDER not in str(error.value)


@pytest.mark.parametrize("how", ["file", "--set"])
def test_explicit_path_is_not_searched(place, how):
    place("LA", FEMALE), place("LA", MALE), place("LA", CM_TRAIN)
    named = [f"protocols/{FEMALE}", f"protocols/{MALE}"]  # the defaults, but named by the user
    if how == "file":
        built = config(asv_dev_enrollment_lists=named, cm_trn_list=f"protocols/{CM_TRAIN}")
    else:
        built = build_config({"dirs": {"database": "LA"}}, overrides=[
            f"dirs.asv_dev_enrollment_lists=[{', '.join(named)}]", f"dirs.cm_trn_list=protocols/{CM_TRAIN}"])
    assert built["dirs"]["asv_dev_enrollment_lists"] == named
    assert built["dirs"]["cm_trn_list"] == f"protocols/{CM_TRAIN}"
    assert built["dirs"]["asv_eval_enrollment_lists"][0] == f"protocols/{FEMALE.replace('dev', 'eval')}"
    with pytest.raises(ProtocolError) as error:
        read_enrollment_utterances(built["dirs"]["asv_dev_enrollment_lists"])
    assert str(error.value) == f"protocols/{FEMALE}: protocol file not found"


def test_error_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    built = config("/data/LA")
    with pytest.raises(ProtocolError) as error:
        read_enrollment_utterances(built["dirs"]["asv_dev_enrollment_lists"])
    message = str(error.value)
    assert "\n" not in message
    assert message == (f"protocols/{FEMALE}: protocol file not found; looked for dirs.asv_dev_enrollment_lists in "
                       f"protocols/{FEMALE}, /data/LA/{FEMALE}, /data/LA/{ASV_FOLDER}/{FEMALE}; "
                       f"set dirs.asv_dev_enrollment_lists to its path")


def test_no_database_only_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProtocolError, match=r"looked for dirs.cm_dev_list in protocols/[^,]*; set"):
        read_cm_protocol(build_config({})["dirs"]["cm_dev_list"])


def test_searched_value_survives_copy_pickle_and_config_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    built = config()
    value = built["dirs"]["cm_trn_list"]
    for clone in (copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
        assert clone == value and clone.places == value.places and clone.key == "dirs.cm_trn_list"
    text = config_text(built, ["main.py"])
    assert yaml.safe_load(text)["dirs"]["cm_trn_list"] == f"protocols/{CM_TRAIN}"


def test_command_line_reports_the_place_once(place, capsys):
    place("LA", CM_TRAIN)
    conf = place("LA", FEMALE).parent.parent / "run.conf"
    conf.write_text('{"dirs": {"database": "LA"}}\n')
    built = config_from_args(argparse.Namespace(config=str(conf), overrides=[], device=None))
    assert built["dirs"]["cm_trn_list"] == f"LA/{CM_TRAIN}"
    err = capsys.readouterr().err.splitlines()
    assert err == [f"using protocol LA/{CM_TRAIN} (protocols/{CM_TRAIN} does not exist)",
                   f"using protocol LA/{FEMALE} (protocols/{FEMALE} does not exist)"]
