"""Protocols left at their default are looked for where users keep them (the default path, dirs.database,
the official ASVspoof 2019 LA sub-folders) by the corpus adapter, when first used; loading a config looks for
nothing. A path the config names is used as given."""
from __future__ import annotations

import argparse
import copy
import pickle
import re
import shutil
from pathlib import Path

import pytest
import yaml
from tiny_run import run_script

from data.corpora import corpus_of, recorded_config
from data.protocols import ProtocolError, read_sasv_trials
from runtime.cli import config_from_args, print_notice
from runtime.config import build_config, config_text

CM_TRAIN, CM_DEV, CM_EVAL = ("ASVspoof2019.LA.cm.train.trn.txt", "ASVspoof2019.LA.cm.dev.trl.txt",
                             "ASVspoof2019.LA.cm.eval.trl.txt")
DEV_TRIALS = "ASVspoof2019.LA.asv.dev.gi.trl.txt"
FEMALE, MALE = "ASVspoof2019.LA.asv.dev.female.trn.txt", "ASVspoof2019.LA.asv.dev.male.trn.txt"
CM_FOLDER, ASV_FOLDER = "ASVspoof2019_LA_cm_protocols", "ASVspoof2019_LA_asv_protocols"
DEFAULT_ENROLLMENT = [f"protocols/{FEMALE}", f"protocols/{MALE}"]


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


def assert_not_found(error: ProtocolError, key: str, places: list[str]) -> None:
    """One line naming the default (first place), the dirs key that sets it, and every place looked, in order."""
    message = str(error)
    assert "\n" not in message and message.startswith(f"{places[0]}: ")
    assert message.count(f"dirs.{key}") == 2  # where it looked for it, and what to set
    listed = re.search(r" in (.*); set ", message)
    assert listed is not None and listed.group(1).split(", ") == places


def test_default_path_is_used_when_present(place):
    place("protocols", CM_TRAIN)
    place("LA", CM_TRAIN)  # also in the database: the default path comes first
    built = config()
    assert corpus_of(built).protocol("cm_trn_list") == Path(f"protocols/{CM_TRAIN}")
    assert built.found_protocols == {}


def test_loading_looks_for_nothing_and_a_file_made_later_is_found(place):
    """The demo corpus is generated after main.py reads the config: its protocols are found without a
    second read."""
    built = config()
    assert built["dirs"]["cm_trn_list"] == f"protocols/{CM_TRAIN}"  # the default, as configured
    assert built["dirs"]["asv_dev_enrollment_lists"] == DEFAULT_ENROLLMENT
    assert built.found_protocols == {}
    place(f"LA/{CM_FOLDER}", CM_TRAIN)
    assert corpus_of(built).protocol("cm_trn_list") == Path(f"LA/{CM_FOLDER}/{CM_TRAIN}")
    assert built["dirs"]["cm_trn_list"] == f"protocols/{CM_TRAIN}"  # finding changes no config value


def test_database_root(place):
    """The original save_asv_embeddings.py read the enrollment lists from <database>/ (the reported bug)."""
    place("LA", FEMALE), place("LA", MALE)
    place(f"LA/{ASV_FOLDER}", FEMALE)  # the root comes before the sub-folder
    built = config()
    corpus = corpus_of(built)
    assert corpus.enrollment_list("dev") == [f"LA/{FEMALE}", f"LA/{MALE}"]
    assert built.found_protocols == {f"protocols/{FEMALE}": f"LA/{FEMALE}", f"protocols/{MALE}": f"LA/{MALE}"}
    speakers = corpus.enrollment_utterances("dev")
    assert len(speakers) == 6 + 4  # lines of the two fixture files
    assert speakers["LA_0078"][0] == "LA_D_1045602"


def test_official_sub_folders(place):
    place(f"LA/{CM_FOLDER}", CM_TRAIN)
    place(f"LA/{ASV_FOLDER}", DEV_TRIALS)
    place(f"LA/{ASV_FOLDER}", FEMALE), place(f"LA/{ASV_FOLDER}", MALE)
    corpus = corpus_of(config())
    assert corpus.protocol("cm_trn_list") == Path(f"LA/{CM_FOLDER}/{CM_TRAIN}")
    assert corpus.protocol("sasv_dev_trial") == Path(f"LA/{ASV_FOLDER}/{DEV_TRIALS}")
    assert corpus.enrollment_list("dev") == [f"LA/{ASV_FOLDER}/{FEMALE}", f"LA/{ASV_FOLDER}/{MALE}"]
    assert len(corpus.cm_entries("train")) == 25380
    assert len(read_sasv_trials(corpus.trial_list("dev"))) == 29548


def test_cm_protocol_not_looked_for_in_the_asv_folder(place):
    place(f"LA/{ASV_FOLDER}", CM_TRAIN)
    with pytest.raises(ProtocolError) as error:
        corpus_of(config()).cm_entries("train")
    assert_not_found(error.value, "cm_trn_list",
                     [f"protocols/{CM_TRAIN}", f"LA/{CM_TRAIN}", f"LA/{CM_FOLDER}/{CM_TRAIN}"])
    assert ASV_FOLDER not in str(error.value)


@pytest.mark.parametrize("how", ["file", "--set"])
def test_explicit_path_is_not_searched(place, how):
    place("LA", FEMALE), place("LA", MALE), place("LA", CM_TRAIN)
    named = DEFAULT_ENROLLMENT  # the defaults, but named by the user
    if how == "file":
        built = config(asv_dev_enrollment_lists=named, cm_trn_list=f"protocols/{CM_TRAIN}")
    else:
        built = build_config({"dirs": {"database": "LA"}}, overrides=[
            f"dirs.asv_dev_enrollment_lists=[{', '.join(named)}]", f"dirs.cm_trn_list=protocols/{CM_TRAIN}"])
    corpus = corpus_of(built)
    assert corpus.enrollment_list("dev") == named
    assert corpus.protocol("cm_trn_list") == Path(f"protocols/{CM_TRAIN}")
    # a key left at its default is still looked for (the eval lists are nowhere: their default stays)
    assert recorded_config(built)["dirs"]["asv_eval_enrollment_lists"][0] == \
        f"protocols/{FEMALE.replace('dev', 'eval')}"
    with pytest.raises(ProtocolError) as error:
        corpus.enrollment_utterances("dev")
    assert str(error.value).startswith(f"protocols/{FEMALE}: ") and "looked for" not in str(error.value)
    assert built.found_protocols == {}


def test_error_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProtocolError) as error:
        corpus_of(config("/data/LA")).enrollment_utterances("dev")
    assert_not_found(error.value, "asv_dev_enrollment_lists",
                     [f"protocols/{FEMALE}", f"/data/LA/{FEMALE}", f"/data/LA/{ASV_FOLDER}/{FEMALE}"])


def test_no_database_only_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProtocolError) as error:
        corpus_of(build_config({})).cm_entries("dev")
    assert_not_found(error.value, "cm_dev_list", [f"protocols/{CM_DEV}"])


def test_config_survives_copy_pickle_and_config_text(place):
    built = config()
    for clone in (copy.deepcopy(built), pickle.loads(pickle.dumps(built))):
        assert clone == built and clone.given == built.given
        with pytest.raises(ProtocolError) as error:  # still looked for, in the same places
            corpus_of(clone).protocol("cm_trn_list")
        assert_not_found(error.value, "cm_trn_list",
                         [f"protocols/{CM_TRAIN}", f"LA/{CM_TRAIN}", f"LA/{CM_FOLDER}/{CM_TRAIN}"])
    # config.conf records a file found elsewhere than its default, and the default of one found nowhere
    place(f"LA/{CM_FOLDER}", CM_TRAIN)
    recorded = yaml.safe_load(config_text(recorded_config(built), ["main.py"]))
    assert recorded["dirs"]["cm_trn_list"] == f"LA/{CM_FOLDER}/{CM_TRAIN}"
    assert recorded["dirs"]["cm_dev_list"] == f"protocols/{CM_DEV}"
    assert recorded["dirs"]["asv_dev_enrollment_lists"] == DEFAULT_ENROLLMENT
    assert yaml.safe_load(config_text(built, ["main.py"]))["dirs"]["cm_trn_list"] == f"protocols/{CM_TRAIN}"
    # read back, the recorded path is given: used as it is
    again = build_config(recorded)
    assert "dirs.cm_trn_list" in again.given
    assert corpus_of(again).protocol("cm_trn_list") == Path(f"LA/{CM_FOLDER}/{CM_TRAIN}")


def test_command_line_reports_the_place_once(place, capsys):
    place("LA", CM_TRAIN), place("protocols", MALE)  # the male list at its default: no notice
    conf = place("LA", FEMALE).parent.parent / "run.conf"
    conf.write_text('{"dirs": {"database": "LA"}}\n')
    built = config_from_args(argparse.Namespace(config=str(conf), overrides=[], device=None))
    assert capsys.readouterr().err == ""  # loading looks for nothing
    assert pickle.loads(pickle.dumps(built)).notify is print_notice  # a config that prints still pickles
    corpus = corpus_of(built)
    for _ in range(2):
        assert corpus.protocol("cm_trn_list") == Path(f"LA/{CM_TRAIN}")
        assert corpus_of(built).enrollment_list("dev")[0] == f"LA/{FEMALE}"
        recorded_config(built)  # config.conf and checkpoints look again
    err = capsys.readouterr().err.splitlines()
    assert err == [f"using protocol LA/{CM_TRAIN} (protocols/{CM_TRAIN} does not exist)",
                   f"using protocol LA/{FEMALE} (protocols/{FEMALE} does not exist)"]


@pytest.mark.slow
def test_main_reports_a_place_once_and_the_missing_protocol_in_one_line(place, tmp_path, capsys, monkeypatch):
    """main.py, system cm: the dev and eval lists are found in the database root (one notice each, though
    config.conf and the task both look), the training list nowhere: one line naming every place."""
    for partition in ("train", "dev", "eval"):
        (tmp_path / "LA" / f"ASVspoof2019_LA_{partition}" / "flac").mkdir(parents=True)
    place("LA", CM_DEV), place("LA", CM_EVAL)
    conf = tmp_path / "stage.conf"
    conf.write_text(yaml.safe_dump({"system": "cm", "device": "cpu", "dirs": {"database": "LA"}}))
    status, _, err = run_script("main.py", ["--config", str(conf), "--output_dir", str(tmp_path / "exp")],
                                capsys, monkeypatch)
    lines = err.splitlines()
    assert status == 2, err
    assert lines[:2] == [f"using protocol LA/{CM_DEV} (protocols/{CM_DEV} does not exist)",
                         f"using protocol LA/{CM_EVAL} (protocols/{CM_EVAL} does not exist)"]
    assert len(lines) == 3 and lines[2].startswith("error: ")
    assert_not_found(ProtocolError(lines[2].removeprefix("error: ")), "cm_trn_list",
                     [f"protocols/{CM_TRAIN}", f"LA/{CM_TRAIN}", f"LA/{CM_FOLDER}/{CM_TRAIN}"])
    assert not (tmp_path / "exp" / "stage").exists()  # a failed start leaves no experiment folder
