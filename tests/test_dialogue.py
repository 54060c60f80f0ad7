"""Document-grounded dialogue: readers (CMU-DoG layout, JSONL, Shakespeare scenes), examples cut into
blocks from the end with the loss on the reply only, and `dialogue train | eval | chat` end to end on a
tiny random GPT-2 + memory."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("rouge_score")

from infinite_former.cli import main as cli_main  # noqa: E402
from infinite_former.data.dialogue import (  # noqa: E402
    SpecialIds,
    Turn,
    add_dialogue_tokens,
    block_spans,
    build_example,
    join_turns,
    load_dialogues,
    prompt_blocks,
    read_cmu_dog,
    read_jsonl,
    read_shakespeare_dialogues,
    write_jsonl,
)
from infinite_former.data.tokenizer import train_bpe_tokenizer  # noqa: E402

MOVIES = [
    {
        "0": {"movieName": "The Robot", "year": 1999, "cast": ["Ann Lee", "Bo Kim"], "rating": ["90%"]},
        "1": "The robot learns to paint.",
        "2": "A  painter   teaches it colours.",
        "3": "It ends in a gallery.",
        "wikiDocumentIdx": 0,
    },
    {
        "0": {"movieName": "Sea Song", "year": 2004},
        "1": "A whale sings at night.",
        "2": "Sailors hear the song.",
        "3": "The whale swims away.",
        "wikiDocumentIdx": 1,
    },
]


def _msg(uid: str, text: str, doc: int = 0) -> dict:
    return {"docIdx": doc, "text": text, "uid": uid, "utcTimestamp": "2018-03-19T06:39:12.547Z"}


CONVERSATIONS = {
    "train": [
        ("t1", 0, [("u1", "hi, did you see it?"), ("u2", "yes"), ("u2", "the robot paints!"), ("u1", "who plays in it?"), ("u2", "ann lee")]),
        ("t2", 1, [("u1", "is it about a whale?"), ("u2", "a singing whale"), ("u1", "do sailors hear it?"), ("u2", "they do")]),
    ],
    "valid": [("v1", 1, [("u1", "what is the whale doing?"), ("u2", "singing at night"), ("u1", "and then?")])],
    "test": [("s1", 0, [("u1", "what year is it from?"), ("u2", "1999"), ("u1", "who teaches the robot?"), ("u2", "a painter")])],
}  # fmt: skip


def write_cmu_dog(root: Path) -> Path:
    """A tiny corpus in the CMU-DoG release layout."""
    (root / "WikiData").mkdir(parents=True)
    for i, movie in enumerate(MOVIES):
        (root / "WikiData" / f"{i}.json").write_text(json.dumps(movie))
    for split, convs in CONVERSATIONS.items():
        folder = root / "Conversations" / split
        folder.mkdir(parents=True)
        for name, doc, msgs in convs:
            data = {
                "history": [_msg(u, t) for u, t in msgs],
                "wikiDocumentIdx": doc,
                "whoSawDoc": ["u1", "u2"],
                "rating": 2,
                "date": "2018-03-19",
                "uid1": "u1",
                "uid2": "u2",
                "status": 1,
            }
            (folder / f"{name}.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_cmu_dog(tmp_path / "CMU_DoG")


@pytest.fixture(scope="module")
def tok():
    texts = [m["1"] + " " + m["2"] for m in MOVIES] + [
        t for c in CONVERSATIONS.values() for _, _, ms in c for _, t in ms
    ]
    return add_dialogue_tokens(train_bpe_tokenizer(texts * 20, vocab_size=300))


# ------------------------------------------------------------------------------------------ readers


def test_cmu_dog_reader(corpus: Path) -> None:
    train = read_cmu_dog(corpus, "train")
    assert [d.name for d in train] == ["t1", "t2"] and [d.doc_id for d in train] == ["0", "1"]
    doc = train[0].document.splitlines()
    assert doc[:4] == ["movieName: The Robot", "year: 1999", "cast: Ann Lee, Bo Kim", "rating: 90%"]
    assert doc[4:] == ["The robot learns to paint.", "A painter teaches it colours.", "It ends in a gallery."]
    # consecutive messages of u2 are joined into one turn
    assert train[0].turns == (
        Turn("u1", "hi, did you see it?"),
        Turn("u2", "yes the robot paints!"),
        Turn("u1", "who plays in it?"),
        Turn("u2", "ann lee"),
    )
    assert [d.name for d in read_cmu_dog(corpus, "valid")] == ["v1"]
    assert read_cmu_dog(corpus, "test")[0].document.startswith("movieName: The Robot")
    assert [d.name for d in load_dialogues(corpus, "test")] == ["s1"]


def test_join_turns_drops_empty_messages() -> None:
    assert join_turns([("a", "x"), ("b", "  "), ("a", "y\n z")]) == (Turn("a", "x y z"),)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: d.pop("history"), r"t1\.json: missing field 'history'"),
        (lambda d: d["history"][1].pop("text"), r"t1\.json: history\[1\]: missing field 'text'"),
        (lambda d: d.__setitem__("history", "oops"), r"t1\.json: field 'history' must be list"),
        (
            lambda d: d.__setitem__("wikiDocumentIdx", 7),
            r"t1\.json: field 'wikiDocumentIdx' = 7 names no file",
        ),
    ],
)
def test_cmu_dog_errors_name_file_and_field(corpus: Path, breakage, message: str) -> None:
    path = corpus / "Conversations" / "train" / "t1.json"
    data = json.loads(path.read_text())
    breakage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_cmu_dog(corpus, "train")


def test_cmu_dog_errors_on_bad_files(corpus: Path) -> None:
    (corpus / "WikiData" / "1.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"1\.json: not valid JSON"):
        read_cmu_dog(corpus, "train")
    (corpus / "WikiData" / "1.json").write_text(json.dumps({**MOVIES[1], "2": ["a list"]}))
    with pytest.raises(ValueError, match=r"1\.json: field '2' must be str"):
        read_cmu_dog(corpus, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        read_cmu_dog(corpus, "dev")
    with pytest.raises(ValueError, match="CMU-DoG layout"):
        read_cmu_dog(corpus / "WikiData", "train")


def test_jsonl_roundtrip_and_errors(corpus: Path, tmp_path: Path) -> None:
    dialogues = read_cmu_dog(corpus, "train")
    path = write_jsonl(dialogues, tmp_path / "d" / "train.jsonl")
    assert read_jsonl(path) == dialogues
    assert load_dialogues(tmp_path / "d", "train") == dialogues
    assert (
        load_dialogues(tmp_path / "d", "train", max_document_chars=5)[0].document
        == dialogues[0].document[-5:]
    )
    path.write_text(
        '{"document": "d", "turns": [{"speaker": "a", "text": "x"}]}\n{"document": "d", "turns": [{"text": "x"}]}\n'
    )
    with pytest.raises(ValueError, match=r"train\.jsonl: line 2: turns\[0\]: missing field 'speaker'"):
        read_jsonl(path)
    with pytest.raises(ValueError, match="neither a CMU-DoG folder"):
        load_dialogues(tmp_path / "nothing", "train")


PLAY = """A PLAY

ACT I.

SCENE I. A room.

[Enter Ann and Bob.]

ANN.
Good morrow, Bob.
How fare you?

BOB.
Well, [Aside.] I think.

ANN.
Then let us go.

[Exeunt.]

Scene II. A field.

BOB.
The field is green.

CAT.
Aye, and wide.
"""


def test_shakespeare_scenes(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "play.txt").write_text(PLAY)
    (tmp_path / "train" / "poem.txt").write_text("A poem\n\nwith no scenes.\n")
    scenes = read_shakespeare_dialogues(tmp_path, "train")
    assert [d.name for d in scenes] == ["play/scene01", "play/scene02"]
    assert scenes[0].turns == (
        Turn("ANN", "Good morrow, Bob. How fare you?"),
        Turn("BOB", "Well, I think."),
        Turn("ANN", "Then let us go."),
    )
    assert scenes[0].document == "A PLAY\n\nACT I.\n\n"  # the play before the scene
    assert scenes[1].document.endswith("[Exeunt.]\n\n") and "field is green" not in scenes[1].document
    assert (
        read_shakespeare_dialogues(tmp_path, "train", max_document_chars=6)[1].document
        == "[Exeunt.]\n\n"[-6:]
    )
    assert len(read_shakespeare_dialogues(tmp_path, "train", max_turns=2)[0].turns) == 2
    assert load_dialogues(f"shakespeare:{tmp_path}", "train") == scenes
    with pytest.raises(ValueError, match="has no test/ folder"):
        read_shakespeare_dialogues(tmp_path, "test")


# ----------------------------------------------------------------------------------------- examples


def test_block_spans_from_the_end() -> None:
    assert block_spans(3, 7, 8) == ([(0, 7)], 0)  # fits: one block, document included
    spans, n_doc = block_spans(10, 25, 8)  # document [0, 10) and dialogue [10, 25) cut separately
    assert spans == [(0, 2), (2, 10), (10, 17), (17, 25)] and n_doc == 2
    assert all(e - s <= 8 for s, e in spans)


def test_example_labels_on_reply_only(corpus: Path, tok) -> None:
    dialogue = read_cmu_dog(corpus, "train")[0]
    ids = SpecialIds.of(tok)
    ex = build_example(dialogue, 3, tok, block_size=512)
    assert len(ex.blocks) == 1 and ex.doc_blocks == 0
    tokens, targets, mask = ex.blocks[0]
    assert tokens[:2] == [ids.bos, ids.doc]
    labelled = [t for t, m in zip(targets, mask) if m]
    assert labelled == tok.encode("ann lee") + [ids.eos]
    assert tokens[targets.index(ids.eos) - len(labelled) + 1] == ids.speaker2  # the reply follows <speaker2>
    # the reply's speaker (u2) is <speaker2> in the history too, the other speaker <speaker1>
    assert tokens.count(ids.speaker1) == 2 and tokens.count(ids.speaker2) == 2
    assert tok.decode(tokens).count("hi, did you see it?") == 1


def test_blocks_cut_from_the_end_document_only_in_memory(corpus: Path, tok) -> None:
    dialogue = read_cmu_dog(corpus, "train")[0]
    ids = SpecialIds.of(tok)
    full = build_example(dialogue, 3, tok, block_size=512)
    seq = full.blocks[0][0]
    block = 16
    ex = build_example(dialogue, 3, tok, block_size=block)
    assert [t for b in ex.blocks for t in b[0]] == seq  # the same sequence, only cut
    assert all(len(b[0]) <= block for b in ex.blocks)
    doc_len = seq.index(ids.speaker1)  # <bos> <doc> document, then the first turn
    # the document's blocks end where the document ends; the others hold only dialogue
    assert sum(len(b[0]) for b in ex.blocks[: ex.doc_blocks]) == doc_len
    last = ex.blocks[-1]
    assert len(last[0]) == block and not any(t in (ids.doc, ids.bos) for t in last[0])
    assert [m for b in ex.blocks[:-1] for m in b[2]] == [False] * sum(len(b[2]) for b in ex.blocks[:-1])
    assert [t for t, m in zip(last[1], last[2]) if m] == tok.encode("ann lee") + [ids.eos]
    # the first block of each part is the short one (cut from the end)
    assert len(ex.blocks[0][0]) == doc_len % block or len(ex.blocks[0][0]) == block
    # generation prompts use the same layout, leaving room for the reply in the last block
    prompt = prompt_blocks(dialogue, 3, tok, block, reserve=4)
    assert [t for b in prompt for t in b] == seq[: len(seq) - len(tok.encode("ann lee"))]  # inputs lack <eos>
    assert len(prompt[-1]) <= block - 4 and prompt[-1][-1] == ids.speaker2


def test_example_errors(corpus: Path, tok) -> None:
    dialogue = read_cmu_dog(corpus, "train")[0]
    with pytest.raises(ValueError, match="turn must be in"):
        build_example(dialogue, 0, tok, 64)
    plain = train_bpe_tokenizer(["a b c"] * 5, vocab_size=270)
    with pytest.raises(ValueError, match="add_dialogue_tokens"):
        build_example(dialogue, 1, plain, 64)


# -------------------------------------------------------------------------------------- end to end

TINY = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--vocab-size", "300"]
TINY += ["--num-basis", "8", "--num-samples", "8", "--lr", "1e-3", "--ltm-lr", "1e-3", "--no-progress"]
TINY += ["--no-tensorboard", "--max-new-tokens", "6", "--threads", "1"]


def test_stream_baseline_sees_only_the_reply_block(corpus: Path, tok) -> None:
    from infinite_former.data.dialogue import DialogueExamples
    from infinite_former.experiments.dialogue import ExampleStream

    examples = DialogueExamples(read_cmu_dog(corpus, "train"), tok, 16)
    for memory in (True, False):
        stream = ExampleStream(examples, memory, seed=0)
        it = iter(stream)
        segs = [next(it) for _ in range(20)]
        while not segs[-1].train:  # up to a step boundary (where the Trainer saves the position)
            segs.append(next(it))
        trained = [s for s in segs if s.train]
        assert all(bool(s.reset.item()) == (i == 0 or segs[i - 1].train) for i, s in enumerate(segs))
        if not memory:
            assert len(trained) == len(segs) == 20  # one block (the reply's) per example
        else:
            assert 0 < len(trained) < len(segs)
        # every trained segment's labels are one example's reply
        assert all(s.loss_mask.any() for s in trained) and not any(
            s.loss_mask.any() for s in segs if not s.train
        )
        state = stream.state_dict()
        again = ExampleStream(examples, memory, seed=0)
        again.load_state_dict(state)
        assert torch.equal(next(iter(again)).tokens, next(it).tokens)  # resumes where it stopped


def test_training_loss_equals_eval_reply_nll(corpus: Path, tok) -> None:
    """The Trainer path (DialogueLM over the segments) and eval's reply_nll score the same tokens."""
    from infinite_former.data.dialogue import DialogueExamples
    from infinite_former.experiments.dialogue import DialogueLM, ExampleStream, reply_nll
    from infinite_former.hf import InfiniteGPT2Config, InfiniteGPT2LMHeadModel

    torch.manual_seed(0)
    ids = SpecialIds.of(tok)
    cfg = InfiniteGPT2Config(
        vocab_size=tok.vocab_size,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=ids.bos,
        eos_token_id=ids.eos,
        num_basis=8,
        num_samples=8,
        sticky=False,
    )  # fmt: skip  (uniform sampling: deterministic, so both paths see the same memory)
    model = InfiniteGPT2LMHeadModel(cfg).eval()
    for m in model.ltm:  # a memory that matters (W_O starts at 0)
        torch.nn.init.normal_(m.out.weight, std=0.5)
    examples = DialogueExamples(read_cmu_dog(corpus, "train"), tok, 16)
    lm = DialogueLM(model).eval()
    state = lm.init_state(1)
    it = iter(ExampleStream(examples, True, seed=0))
    with torch.no_grad():
        while True:
            seg = next(it)
            state = state.reset(seg.reset)
            out, state = lm(seg.tokens, state, seg.targets, seg.loss_mask)
            if seg.train:
                break
    first = examples[ExampleStream(examples, True, seed=0)._order(0)[0]]
    assert len(first.blocks) > 2
    nll, n = reply_nll(model, first, torch.device("cpu"))
    assert n == int(seg.loss_mask.sum())
    assert out.loss.item() == pytest.approx(nll / n, rel=1e-5)
    # the memory changes the reply's loss: the document does reach it
    no_doc = type(first)(first.blocks[-1:], 0, 0, first.turn)
    assert reply_nll(model, no_doc, torch.device("cpu"))[0] != pytest.approx(nll, rel=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(corpus, run folder, train argv): 6 steps of a tiny GPT-2 + memory, then eval on test."""
    root = tmp_path_factory.mktemp("dialogue")
    corpus = write_cmu_dog(root / "CMU_DoG")
    run = root / "run"
    args = ["dialogue", "train", "--data", str(corpus), "--run-dir", str(run), *TINY]
    assert (
        cli_main([*args, "--steps", "6", "--warmup", "2", "--eval-splits", "test", "--ckpt-every", "3"]) == 0
    )
    return corpus, run, args


def test_train_then_eval_end_to_end(trained, tmp_path: Path) -> None:
    corpus, run, args = trained
    res = json.loads((run / "results.json").read_text())
    assert res["steps"] == 6 and res["memory"] and res["sticky"]
    test = res["eval"]["test"]
    assert test["overall"]["replies"] == 3 and len(test["per_dialogue"]) == 1
    for k in ("f1", "rouge1", "rougeL", "reply_ppl"):
        assert test["overall"][k] is not None and test["overall"][k] >= 0
    assert 1 < test["overall"]["reply_ppl"] < 10 * 300
    assert (run / "model" / "config.json").is_file() and (run / "checkpoints" / "latest").is_file()
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["vocab_size"] == 300 + 6 and config["ltm"]["num_basis"] == 8  # the 0.3 nested form

    # eval: same seed -> same replies; its own JSON
    out = tmp_path / "eval.json"
    assert cli_main(["dialogue", "eval", "--run", str(run), "--out", str(out), "--max-new-tokens", "6"]) == 0
    ev = json.loads(out.read_text())
    assert [r["prediction"] for r in ev["replies"]] == [r["prediction"] for r in test["replies"]]
    assert ev["overall"]["reply_ppl"] == pytest.approx(test["overall"]["reply_ppl"], rel=1e-5)


def test_resume_continues(trained, tmp_path: Path) -> None:
    import shutil

    corpus, run, args = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    args = [a if a != str(run) else str(copy) for a in args]
    resume = [*args, "--steps", "6", "--warmup", "2", "--ckpt-every", "3", "--eval-splits", "--resume"]
    assert cli_main([*resume, "--uniform"]) == 2  # memory settings cannot change
    assert cli_main([*resume, "--override", "steps=8"]) == 0
    assert json.loads((copy / "results.json").read_text())["steps"] == 8


def test_no_memory_baseline_trains_without_memory(corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "nomem"
    argv = ["dialogue", "train", "--data", str(corpus), "--run-dir", str(run), "--steps", "3", "--no-memory"]
    assert cli_main([*argv, *TINY, "--eval-splits", "valid"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["memory"] is False and res["steps"] == 3 and res["eval"]["valid"]["overall"]["replies"] == 2
    assert json.loads((run / "model" / "config.json").read_text())["memory_layers"] == []


def test_bad_cli_input(corpus: Path, tmp_path: Path, capsys) -> None:
    argv = ["dialogue", "train", "--data", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "r"), *TINY]
    assert cli_main(argv) == 2
    assert "neither a CMU-DoG folder" in capsys.readouterr().err
    assert cli_main(["dialogue", "eval", "--run", str(tmp_path / "nothing")]) == 2
    assert "holds no model" in capsys.readouterr().err
    argv = [
        "dialogue",
        "train",
        "--data",
        str(corpus),
        "--run-dir",
        str(tmp_path / "r2"),
        "--batch-size",
        "2",
    ]
    assert cli_main([*argv, *TINY, "--steps", "2"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_chat_through_stdin(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    from infinite_former.experiments.dialogue import chat, load_dialogue_model

    _, run, _ = trained
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(["The robot learns to paint and then it paints the sea."] * 12))

    # in process: the memory keeps the document and every turn
    model, tok = load_dialogue_model(run, torch.device("cpu"))
    doc_tokens = len(tok.encode(doc.read_text())) + 2
    out = io.StringIO()
    stream = chat(model, tok, doc.read_text(), io.StringIO("who paints?\nand then?\n"), out, max_new_tokens=6)
    assert len(out.getvalue().splitlines()) == 2
    assert stream.num_tokens >= doc_tokens + 2 * 3  # document + both questions (+ replies)
    assert int(stream.memory.ltm_tokens[0]) > 0  # blocks of the document went into the long-term memory

    # through the CLI: one reply line per line of stdin
    monkeypatch.setattr(sys, "stdin", io.StringIO("who paints?\nwhat colour?\nand then?\n"))
    cmd = [
        "dialogue",
        "chat",
        "--run",
        str(run),
        "--document",
        str(doc),
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
    ]
    capsys.readouterr()
    assert cli_main(cmd) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_chat_reads_stdin_as_utf8_with_replacement(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    _, run, _ = trained
    doc = tmp_path / "doc.txt"
    doc.write_text("The robot learns to paint.")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 \xff\xfe who?\nand then?\n")))
    cmd = ["dialogue", "chat", "--run", str(run), "--document", str(doc), "--max-new-tokens", "3"]
    assert cli_main([*cmd, "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2 and "reading stdin as UTF-8" in out.err


def test_train_refuses_a_model_that_is_not_gpt2(corpus: Path, tmp_path: Path, capsys) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    capsys.readouterr()  # (the progress bar of saving it)
    argv = ["dialogue", "train", "--data", str(corpus), "--run-dir", str(tmp_path / "r"), *TINY]
    assert cli_main([*argv, "--model", str(tmp_path / "llama"), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "'llama' model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def _gpt2_folder(root: Path) -> tuple[Path, int]:
    """A tiny random GPT-2 folder with its own BPE tokenizer (as pretrain.py writes): (folder, vocab)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    texts = [m["1"] for m in MOVIES] + [t for c in CONVERSATIONS.values() for _, _, ms in c for _, t in ms]
    bpe = train_bpe_tokenizer(texts * 20, vocab_size=300)
    (root / "vocab").mkdir()
    bpe.backend.model.save(str(root / "vocab"))
    hf_tok = GPT2TokenizerFast(
        vocab=str(root / "vocab" / "vocab.json"), merges=str(root / "vocab" / "merges.txt")
    )
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(hf_tok), n_positions=32, n_embd=16, n_layer=2, n_head=2)
    GPT2LMHeadModel(cfg).save_pretrained(root / "gpt2")
    hf_tok.save_pretrained(root / "gpt2")
    return root / "gpt2", len(hf_tok)


GPT2_ARGS = ["--block-size", "32", "--num-basis", "8", "--num-samples", "8", "--max-new-tokens", "4"]
GPT2_ARGS += ["--no-progress", "--no-tensorboard", "--threads", "1"]


def test_finetunes_a_gpt2_checkpoint(corpus: Path, tmp_path: Path) -> None:
    """--model: a GPT-2 folder (weights + tokenizer) gets the memory and the dialogue tokens."""
    gpt2, vocab = _gpt2_folder(tmp_path)
    run = tmp_path / "run"
    argv = ["dialogue", "train", "--data", str(corpus), "--run-dir", str(run), "--model", str(gpt2)]
    assert cli_main([*argv, *GPT2_ARGS, "--steps", "3", "--eval-splits", "test"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["base_model"] == str(gpt2) and res["memory"] and res["steps"] == 3
    assert res["training_free"] is None
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["vocab_size"] == vocab + 6 and config["n_layer"] == 2 and config["block_size"] == 32
    saved = json.loads((run / "dialogue_config.json").read_text())
    assert saved["train"]["lr"] == 5e-5 and saved["ltm_lr"] == 2.5e-4  # the paper's two learning rates


def test_training_free_memory_on_a_gpt2_checkpoint(corpus: Path, tmp_path: Path, capsys) -> None:
    """--training-free: no weight is added (GPT-2's own are fine-tuned), the document reaches the reply
    through the memory, the saved run evaluates to the same replies, and resume keeps its settings."""
    from infinite_former.experiments.dialogue import evaluate_dialogues, load_dialogue_model, reply_nll

    gpt2, vocab = _gpt2_folder(tmp_path)
    argv = ["dialogue", "train", "--data", str(corpus), "--model", str(gpt2), *GPT2_ARGS, "--steps", "2"]
    free, plain = tmp_path / "free", tmp_path / "plain"
    args = [*argv, "--run-dir", str(free), "--ckpt-every", "1"]
    assert cli_main([*args, "--training-free", "gaussian:0.3", "--eval-splits", "test"]) == 0
    assert cli_main([*argv, "--run-dir", str(plain), "--no-memory", "--eval-splits"]) == 0
    res = json.loads((free / "results.json").read_text())
    free_config = {"density": "gaussian", "alpha": 0.3, "combine": "mix"}
    assert res["training_free"] == free_config and res["memory"] and res["sticky"]
    assert res["parameters"] == json.loads((plain / "results.json").read_text())["parameters"]
    assert json.loads((free / "model" / "config.json").read_text())["infinite_memory"]["training_free"] == (
        free_config
    )

    model, tok = load_dialogue_model(free, torch.device("cpu"))
    assert model.training_free is not None and not model.memory_parameters()
    ex = build_example(read_cmu_dog(corpus, "test")[0], 3, tok, 32)
    assert ex.doc_blocks >= 2  # the document is longer than one block
    cpu = torch.device("cpu")
    nll, n = reply_nll(model, ex, cpu, seed=1)
    alone = type(ex)(ex.blocks[-1:], 0, 0, ex.turn)
    assert abs(reply_nll(model, alone, cpu)[0] - nll) > 1e-4  # (float noise: ~1e-6)
    # the sticky draws matter, and the seed fixes them whatever the global RNG did before
    assert reply_nll(model, ex, cpu, seed=2)[0] != nll
    torch.manual_seed(123)
    assert reply_nll(model, ex, cpu, seed=1)[0] == nll
    runs = []
    for global_seed in (5, 6):
        torch.manual_seed(global_seed)
        again = evaluate_dialogues(model, tok, read_cmu_dog(corpus, "test"), 2, seed=0, max_new_tokens=2)
        runs.append([r["nll"] for r in again["replies"]])
    assert runs[0] == runs[1]

    out = tmp_path / "eval.json"
    cmd = [
        "dialogue",
        "eval",
        "--run",
        str(free),
        "--out",
        str(out),
        "--max-new-tokens",
        "4",
        "--threads",
        "1",
    ]
    assert cli_main(cmd) == 0
    ev, test = json.loads(out.read_text()), res["eval"]["test"]
    assert [r["prediction"] for r in ev["replies"]] == [r["prediction"] for r in test["replies"]]
    assert ev["overall"]["reply_ppl"] == pytest.approx(test["overall"]["reply_ppl"], rel=1e-5)

    capsys.readouterr()
    resume = [*args, "--eval-splits", "--resume"]
    assert cli_main([*resume, "--training-free", "gaussian:0.5", "--override", "steps=3"]) == 2
    assert "training_free.alpha" in capsys.readouterr().err
    assert cli_main([*resume, "--training-free", "gaussian:0.3", "--override", "steps=3"]) == 0
    assert json.loads((free / "results.json").read_text())["steps"] == 3


def _one_step(corpus: Path, run: Path) -> list[str]:
    return ["dialogue", "train", "--data", str(corpus), "--run-dir", str(run), *TINY, "--steps", "1"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--training-free", "gibbs"], "give --model"),
        (["--model", "M", "--training-free", "gibbs", "--no-memory"], "exclude each other"),
        (["--model", "M", "--training-free", "softmax:0.5"], "density must be one of"),
        (["--model", "M", "--training-free", "gibbs:1.5"], "alpha must be in [0, 1]"),
        (["--model", "M", "--training-free", "gibbs:x"], "expected DENSITY[:ALPHA"),
    ],
)
def test_training_free_bad_input(corpus: Path, tmp_path: Path, capsys, extra, message) -> None:
    argv = _one_step(corpus, tmp_path / "r")
    assert cli_main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_training_free_refuses_a_folder_with_memory(corpus: Path, tmp_path: Path, capsys) -> None:
    from infinite_former.hf import InfiniteGPT2Config, InfiniteGPT2LMHeadModel

    cfg = InfiniteGPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2, block_size=16)
    InfiniteGPT2LMHeadModel(cfg).save_pretrained(tmp_path / "mem")
    capsys.readouterr()
    argv = _one_step(corpus, tmp_path / "r")
    assert cli_main([*argv, "--model", str(tmp_path / "mem"), "--training-free", "gibbs"]) == 2
    assert "has a memory already" in capsys.readouterr().err
