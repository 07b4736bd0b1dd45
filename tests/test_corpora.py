"""The corpus adapter (data/corpora): chosen once from `dataset`, protocols looked for lazily, the layout
check's one-line error, and the official keys files told apart by their columns."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from data.corpora import CORPORA, CorpusLayoutError, corpus_for_keys, corpus_names, corpus_of, recorded_config
from data.protocols import ProtocolError
from runtime.config import ConfigError, build_config, config_text

CM_DEV = "ASVspoof2019.LA.cm.dev.trl.txt"
CM_FOLDER = "ASVspoof2019_LA_cm_protocols"


def test_registry_gives_the_dataset_choices():
    assert corpus_names() == tuple(CORPORA) and {"asvspoof2019_la", "asvspoof5"} <= set(corpus_names())
    with pytest.raises(ConfigError, match="dataset"):
        build_config({"dataset": "no_such_corpus"})
    assert corpus_of(build_config({})).name == "asvspoof2019_la"


def test_protocol_found_lazily_after_the_config_loaded(fixtures, tmp_path, monkeypatch):
    """A protocol that appears after the config was read (a generated demo corpus) is found on first use."""
    monkeypatch.chdir(tmp_path)
    config = build_config({"dirs": {"database": "LA"}})
    corpus = corpus_of(config)
    with pytest.raises(ProtocolError) as error:
        corpus.protocol("cm_dev_list")
    assert f"LA/{CM_FOLDER}/{CM_DEV}" in str(error.value) and "dirs.cm_dev_list" in str(error.value)
    (tmp_path / "LA" / CM_FOLDER).mkdir(parents=True)
    shutil.copy(fixtures / "protocols" / CM_DEV, tmp_path / "LA" / CM_FOLDER / CM_DEV)
    assert corpus.protocol("cm_dev_list") == Path("LA") / CM_FOLDER / CM_DEV
    entries = corpus.cm_entries("dev")
    assert len(entries) == 24844 and entries[0].conditions == {}  # the 2019 LA dev CM protocol


def test_given_protocol_is_not_looked_for(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "LA").mkdir()
    shutil.copy(fixtures / "protocols" / CM_DEV, tmp_path / "LA" / CM_DEV)
    corpus = corpus_of(build_config({"dirs": {"database": "LA", "cm_dev_list": f"protocols/{CM_DEV}"}}))
    assert corpus.protocol("cm_dev_list") == Path("protocols") / CM_DEV
    with pytest.raises(ProtocolError, match=rf"^protocols/{CM_DEV}: protocol file not found$"):
        corpus.cm_entries("dev")


@pytest.mark.parametrize("dataset", ["asvspoof2019_la", "asvspoof5"])
def test_layout_error_is_one_line_naming_what_and_where(tmp_path, dataset):
    (tmp_path / "db").mkdir()
    corpus = corpus_of(build_config({"dataset": dataset, "dirs": {"database": str(tmp_path / "db")}}))
    with pytest.raises(CorpusLayoutError) as error:
        corpus.check_layout()
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "db") in message
    for folder in corpus.audio_folders.values():  # every folder expected is named
        assert folder in message


def test_keys_files_told_apart(fixtures, tmp_path):
    assert corpus_for_keys(fixtures / "protocols" / CM_DEV).name == "asvspoof2019_la"
    release = tmp_path / "ASVspoof5.dev.track_1.tsv"
    release.write_text("D_0062 D_0000000001 F - - - - bonafide bonafide -\n")
    assert corpus_for_keys(release).name == "asvspoof5"
    assert corpus_for_keys(release).read_keys(release)[0].conditions == {"codec": "-"}
    odd = tmp_path / "odd.txt"
    odd.write_text("a b c\n")
    with pytest.raises(ProtocolError, match=r"odd.txt:1: "):
        corpus_for_keys(odd)


def test_a_recorded_protocol_is_not_looked_for_again(tmp_path, monkeypatch):
    """ASVspoof 5 lists are looked for in dirs.database. config.conf records the file found; read back, that
    path is given and must not be joined to dirs.database a second time."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ASVspoof5.train.tsv").write_text("T_0001 T_0000000001 F - - - - bonafide bonafide -\n")
    config = build_config({"dataset": "asvspoof5", "dirs": {"database": "d"}})
    assert config["dirs"]["asvspoof5_train_list"] == "ASVspoof5.train.tsv"  # loading looks for nothing
    assert corpus_of(config).protocol("asvspoof5_train_list") == Path("d") / "ASVspoof5.train.tsv"
    assert config.found_protocols == {}  # the release's own place: no notice
    recorded = recorded_config(config)
    assert recorded["dirs"]["asvspoof5_train_list"] == str(Path("d") / "ASVspoof5.train.tsv")
    again = build_config(yaml.safe_load(config_text(recorded, ["main.py"])))
    assert corpus_of(again).protocol("asvspoof5_train_list") == Path("d") / "ASVspoof5.train.tsv"
    assert [entry.utterance for entry in corpus_of(again).cm_entries("train")] == ["T_0000000001"]
