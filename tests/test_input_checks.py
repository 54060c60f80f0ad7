"""Data and late errors (issue 20, build 5): every command checks its data, splits, output path and
numeric flags before any tokenization or training; bad input is one line and exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

import infinite_former.experiments.lm as lm_module
from infinite_former.cli import main
from infinite_former.data.dialogue import read_cmu_dog
from infinite_former.hf import MemoryConfig
from test_dialogue import MOVIES, write_cmu_dog
from test_lm_cli import TINY, tiny_gpt2, write_corpus


@pytest.fixture
def no_tokenizing(monkeypatch):
    """Every check must come before the corpus is tokenized: tokenizing fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the corpus was tokenized before the bad input was found")

    monkeypatch.setattr(lm_module, "tokenize_documents", forbidden)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_duplicate_cmu_dog_document_ids_name_both_files(tmp_path):
    corpus = write_cmu_dog(tmp_path / "CMU_DoG")
    (corpus / "WikiData" / "9.json").write_text(json.dumps({**MOVIES[1], "1": "another film"}))
    with pytest.raises(ValueError, match=r"9\.json: field 'wikiDocumentIdx' = 1 is also the id of .*1\.json"):
        read_cmu_dog(corpus, "train")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "-1"], "steps must be an int >= 1"),
        (["--batch-size", "0"], "batch_size must be an int >= 1"),
        (["--seg-len", "0"], "--seg-len must be an int >= 1"),
        (["--warmup", "7"], r"warmup_steps \(7\) must be <= steps \(6\)"),
        (["--eval-splits", "valid", "dev"], r"has no dev/ split \(it has \['train', 'valid', 'test'\]\)"),
    ],
)
def test_lm_train_checks_flags_and_splits_before_tokenizing(tmp_path, capsys, no_tokenizing, flags, message):
    corpus = write_corpus(tmp_path / "corpus")
    argv = ["lm", "train", "--data", str(corpus), "--run-dir", str(tmp_path / "r"), "--tokenizer", "bytes"]
    assert main([*argv, *TINY, *flags]) == 2
    assert re.search(message, one_line_error(capsys))
    assert not (tmp_path / "r").exists()  # nothing written


def test_a_missing_eval_split_is_found_before_training(tmp_path, capsys, no_tokenizing):
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "test" / "test0.txt").unlink()
    (corpus / "test" / "test1.txt").unlink()
    argv = ["lm", "train", "--data", str(corpus), "--run-dir", str(tmp_path / "r"), "--tokenizer", "bytes"]
    assert main([*argv, *TINY]) == 2
    assert "test split) holds no .txt files" in one_line_error(capsys)


def test_lm_finetune_refuses_warmup_longer_than_training(tmp_path, capsys, no_tokenizing):
    corpus = write_corpus(tmp_path / "corpus")
    gpt2 = tiny_gpt2(tmp_path / "hf", corpus)
    capsys.readouterr()  # (the progress bar of saving it)
    argv = ["lm", "finetune", "--model", str(gpt2), "--data", str(corpus), "--run-dir", str(tmp_path / "ft")]
    assert main([*argv, "--block-size", "8", "--steps", "2", "--warmup", "5", "--device", "cpu"]) == 2
    assert "warmup_steps (5) must be <= steps (2)" in one_line_error(capsys)
    assert main([*argv, "--block-size", "0"]) == 2
    assert "--block-size must be an int >= 1" in one_line_error(capsys)
    assert not (tmp_path / "ft").exists()


def test_hf_sources_offline_fail_fast_with_a_hint(tmp_path, capsys, monkeypatch):
    argv = ["lm", "train", "--data", "hf:wikitext-2", "--run-dir", str(tmp_path / "r"), *TINY]
    # offline mode (set before the process starts, as the Hub library reads it at import)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "infinite_former.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and time.perf_counter() - start < 60
    err = proc.stderr.strip().splitlines()[-1]
    assert "hf:wikitext-2" in err and "pass a local folder" in err and "Traceback" not in proc.stderr
    # no offline flag and no network: a quick connection probe (a host that does not resolve) fails fast
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 20
    err = one_line_error(capsys)
    assert "hf:wikitext-2" in err and "not reachable" in err and "pass a local folder" in err


def test_an_output_path_that_is_a_file_is_one_line(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    (tmp_path / "file").write_text("x")
    argv = ["lm", "train", "--data", str(corpus), "--tokenizer", "bytes", *TINY]
    assert main([*argv, "--run-dir", str(tmp_path / "file")]) == 2
    assert "--run-dir" in one_line_error(capsys)
    assert main(["sort", "--out", str(tmp_path / "file"), "--steps", "1"]) == 2
    assert "--out" in one_line_error(capsys)
    assert main(["lm", "eval", "--run", str(tmp_path), "--out", str(tmp_path / "corpus")]) == 2
    assert "--out" in one_line_error(capsys)
    assert main(["lm", "eval", "--run", str(tmp_path), "--seg-len", "0"]) == 2
    assert "--seg-len must be an int >= 1" in one_line_error(capsys)
    inspect = ["lm", "inspect", "--run", str(tmp_path), "--text", str(tmp_path / "file")]
    assert main([*inspect, "--seg-len", "0"]) == 2
    assert "--seg-len must be an int >= 1" in one_line_error(capsys)


def test_empty_widths_are_a_widths_error():
    with pytest.raises(ValueError, match="widths must be positive finite numbers, got"):
        MemoryConfig(widths=())
