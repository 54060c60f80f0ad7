"""Long-document data: sources, tokenizers, lanes with resets, metrics (no network)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from infinite_former.data.text import (
    Document,
    DocumentLanes,
    DocumentNLL,
    check_segment_length,
    documents_from_dataset,
    load_corpus_split,
    load_documents,
    split_wikitext_articles,
    tokenize_documents,
)
from infinite_former.data.tokenizer import (
    TextTokenizer,
    build_tokenizer,
    bytes_tokenizer,
    gpt2_tokenizer,
    train_bpe_tokenizer,
)

TEXTS = {
    "a_first": "Alas, poor Yorick! I knew him, Horatio. " * 3,
    "b_second": "To be, or not to be, that is the question. " * 2,
    "c_third": "Now is the winter of our discontent.",
    "d_fourth": "Friends, Romans, countrymen, lend me your ears; " * 4,
    "e_fifth": "All the world's a stage. ",
}


def write_corpus(folder: Path, texts: dict[str, str] = TEXTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder


def read_lanes(lanes: DocumentLanes):
    """Per document: the (tokens, targets) it was read as, and the segment index of each of its segments."""
    seen: dict[int, dict] = {}
    for step, seg in enumerate(lanes):
        for lane in range(seg.tokens.shape[0]):
            d = int(seg.doc_ids[lane])
            if d < 0:
                assert not seg.loss_mask[lane].any()
                continue
            m = seg.loss_mask[lane]
            rec = seen.setdefault(d, {"tok": [], "tgt": [], "steps": [], "lane": lane, "resets": []})
            assert rec["lane"] == lane, "a document must stay in one lane"
            rec["tok"] += seg.tokens[lane][m].tolist()
            rec["tgt"] += seg.targets[lane][m].tolist()
            rec["steps"].append(step)
            rec["resets"].append(bool(seg.reset[lane]))
    return seen


def test_lanes_stream_documents_in_order_and_reset_at_document_start(tmp_path):
    docs = load_documents(write_corpus(tmp_path / "c"))
    assert [d.name for d in docs] == sorted(TEXTS)  # sorted file order
    tok = bytes_tokenizer()
    corpus = tokenize_documents(docs, tok)
    lanes = DocumentLanes(corpus, batch_size=2, seg_len=16, eos_id=tok.eos_id, loop=False)
    seen = read_lanes(lanes)
    assert sorted(seen) == list(range(len(docs)))  # every document read exactly once
    first_step = [seen[d]["steps"][0] for d in range(len(docs))]
    assert first_step == sorted(first_step)  # documents start in corpus order
    for d, rec in seen.items():
        ids = corpus.tokens[d].tolist()
        # read as EOS d_1..d_n -> targets d_1..d_n EOS, contiguous segments in one lane
        assert rec["tok"] == [tok.eos_id] + ids
        assert rec["tgt"] == ids + [tok.eos_id]
        assert rec["steps"] == list(range(rec["steps"][0], rec["steps"][0] + len(rec["steps"])))
        assert rec["resets"] == [True] + [False] * (len(rec["resets"]) - 1)  # reset exactly at the start
        assert tok.decode(rec["tok"][1:]) == docs[d].text
    # when a lane's document ends the lane takes the next unread one: lane 0 reads doc 0 then doc 2
    assert seen[0]["lane"] == 0 and seen[1]["lane"] == 1
    lane_of_next = 0 if seen[0]["steps"][-1] < seen[1]["steps"][-1] else 1
    assert seen[2]["lane"] == lane_of_next


def test_lanes_loop_and_resume_exactly(tmp_path):
    tok = bytes_tokenizer()
    corpus = tokenize_documents(load_documents(write_corpus(tmp_path / "c")), tok)
    ref = DocumentLanes(corpus, batch_size=3, seg_len=8, eos_id=tok.eos_id, loop=True)
    ref_segs = [ref.next_segment() for _ in range(60)]  # several passes over the corpus
    assert all(s is not None and s.loss_mask.any() for s in ref_segs)
    assert sum(int(s.reset.sum()) for s in ref_segs) > len(corpus)  # wrapped around
    a = DocumentLanes(corpus, batch_size=3, seg_len=8, eos_id=tok.eos_id, loop=True)
    for _ in range(23):
        a.next_segment()
    state = a.state_dict()
    b = DocumentLanes(corpus, batch_size=3, seg_len=8, eos_id=tok.eos_id, loop=True)
    b.load_state_dict(state)
    for s_ref in ref_segs[23:]:
        s = b.next_segment()
        for f in ("tokens", "targets", "loss_mask", "reset", "doc_ids"):
            assert torch.equal(getattr(s, f), getattr(s_ref, f)), f
    other = DocumentLanes(corpus, batch_size=2, seg_len=8, eos_id=tok.eos_id)
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state_dict(state)


def test_bpe_tokenizer_trained_on_folder_and_reloaded(tmp_path):
    docs = load_documents(write_corpus(tmp_path / "c"))
    tok = build_tokenizer("bpe", [d.text for d in docs], vocab_size=300)
    assert tok.kind == "bpe" and 257 < tok.vocab_size <= 300
    text = docs[0].text
    ids = tok.encode(text)
    assert len(ids) < len(text.encode("utf-8"))  # merges learned from the folder compress it
    assert tok.decode(ids) == text
    tok.save(tmp_path / "tok")
    again = TextTokenizer.load(tmp_path / "tok")
    assert again.kind == "bpe" and again.eos_id == tok.eos_id and again.vocab_size == tok.vocab_size
    assert again.encode(text) == ids and again.fingerprint() == tok.fingerprint()
    assert again.encode("<|endoftext|>") == [tok.eos_id]
    # bytes tokenizer round trip through save/load
    bytes_tokenizer().save(tmp_path / "b")
    assert TextTokenizer.load(tmp_path / "b").encode("é") == [0xC3, 0xA9]


def test_gpt2_tokenizer_from_local_folder_and_missing(tmp_path):
    from transformers import GPT2TokenizerFast

    bpe = train_bpe_tokenizer([t for t in TEXTS.values()] * 5, vocab_size=300)
    vocab_dir = tmp_path / "v"
    vocab_dir.mkdir()
    bpe.backend.model.save(str(vocab_dir))
    GPT2TokenizerFast(
        vocab=str(vocab_dir / "vocab.json"), merges=str(vocab_dir / "merges.txt")
    ).save_pretrained(tmp_path / "gpt2tok")
    tok = gpt2_tokenizer(tmp_path / "gpt2tok")
    assert tok.kind == "gpt2" and tok.encode("<|endoftext|>") == [tok.eos_id]
    assert tok.decode(tok.encode(TEXTS["a_first"])) == TEXTS["a_first"]
    with pytest.raises(ValueError, match="no GPT-2 tokenizer"):
        gpt2_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="name_or_path"):
        gpt2_tokenizer(tmp_path / "empty")


def test_bad_inputs_give_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        load_documents(tmp_path / "empty")
    with pytest.raises(ValueError, match="neither"):
        load_documents(tmp_path / "missing")
    bad = write_corpus(tmp_path / "bad", {"good": "fine"})
    (bad / "broken.txt").write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(ValueError, match=r"broken\.txt.*not valid UTF-8"):
        load_documents(bad)
    tok = bytes_tokenizer()
    corpus = tokenize_documents([Document("x", "abc")], tok)
    with pytest.raises(
        ValueError, match=r"seg_len=64 is longer than the model's positions \(max_positions=32\)"
    ):
        DocumentLanes(corpus, batch_size=1, seg_len=64, eos_id=tok.eos_id, max_positions=32)
    with pytest.raises(ValueError, match="block_size=2048"):
        check_segment_length(2048, 1024, name="block_size")
    with pytest.raises(ValueError, match="batch_size"):
        DocumentLanes(corpus, batch_size=0, seg_len=4, eos_id=tok.eos_id)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(["abc"], vocab_size=10)
    with pytest.raises(ValueError, match="source"):
        load_corpus_split(tmp_path / "nope", "train")


def test_corpus_splits_and_token_cache(tmp_path):
    root = tmp_path / "corpus"
    write_corpus(root / "train")
    write_corpus(root / "test", {"z": "held out"})
    assert [d.name for d in load_corpus_split(root, "test")] == ["z"]
    assert len(load_corpus_split(root, "train")) == len(TEXTS)
    single = root / "train" / "c_third.txt"
    assert load_corpus_split(single, "test") == [Document("c_third", TEXTS["c_third"])]
    tok = bytes_tokenizer()
    docs = load_corpus_split(root, "train")
    first = tokenize_documents(docs, tok, cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache").glob("tokens-*.pt"))
    assert len(files) == 1
    again = tokenize_documents(docs, tok, cache_dir=tmp_path / "cache")
    assert again.names == first.names and again.num_bytes == first.num_bytes
    assert all(torch.equal(a, b) for a, b in zip(again.tokens, first.tokens))
    # a different tokenizer must not hit the same cache entry
    bpe = train_bpe_tokenizer([d.text for d in docs], vocab_size=280)
    tokenize_documents(docs, bpe, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("tokens-*.pt"))) == 2


def test_hf_datasets_layouts_offline(tmp_path):
    import datasets

    lines = [
        "",
        " = Valkyria = \n",
        "",
        " Senjou no Valkyria is a game . \n",
        " = = Gameplay = = \n",
        " It plays . \n",
        " = Tower Building = \n",
        " A tower . \n",
    ]
    arts = split_wikitext_articles(lines)
    assert [a.name for a in arts] == ["Valkyria", "Tower Building"]
    assert " = = Gameplay = = \n" in arts[0].text and "tower" in arts[1].text and "tower" not in arts[0].text
    ds = datasets.Dataset.from_dict({"text": lines})
    assert [d.name for d in documents_from_dataset(ds, "wikitext")] == ["Valkyria", "Tower Building"]
    books = datasets.Dataset.from_dict(
        {"text": ["book one", "book two", ""], "short_book_title": ["A", "B", "C"]}
    )
    got = documents_from_dataset(books, "rows", title_field="short_book_title")
    assert [(d.name, d.text) for d in got] == [("A", "book one"), ("B", "book two")]  # empty row dropped
    with pytest.raises(ValueError, match="text_field"):
        documents_from_dataset(books, "rows", text_field="body")
    # a local folder through datasets' "text" builder, then the wikitext splitter (no network)
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / "train.txt").write_text("".join(x if x.endswith("\n") else x + "\n" for x in lines))
    local = datasets.load_dataset("text", data_dir=str(tmp_path / "wt"), split="train", keep_linebreaks=True)
    assert [d.name for d in documents_from_dataset(local, "wikitext")] == ["Valkyria", "Tower Building"]


def test_document_nll_perplexity_and_bits_per_byte():
    tok = bytes_tokenizer()
    corpus = tokenize_documents([Document("a", "abcd"), Document("b", "xy")], tok)
    acc = DocumentNLL(corpus)
    lanes = DocumentLanes(corpus, batch_size=2, seg_len=3, eos_id=tok.eos_id, loop=False)
    for seg in lanes:
        acc.add(torch.where(seg.doc_ids[:, None] == 0, 1.0, 2.0).expand(2, 3), seg.loss_mask, seg.doc_ids)
    s = acc.summary()
    # doc a: 5 predictions (4 bytes + EOS) at 1 nat; doc b: 3 predictions at 2 nats
    assert s["per_document"]["a"]["tokens"] == 5 and s["per_document"]["b"]["tokens"] == 3
    assert s["per_document"]["a"]["ppl"] == pytest.approx(math.e)
    assert s["per_document"]["b"]["bpb"] == pytest.approx(6 / (math.log(2) * 2))
    assert s["ppl"] == pytest.approx(math.exp(11 / 8))
    assert s["bpb"] == pytest.approx(11 / (math.log(2) * 6))


@pytest.mark.parametrize("memory_type", ["infinite_sticky", "compressive"])
def test_lane_reset_empties_that_lanes_model_memory(tmp_path, memory_type):
    """At a lane's document start its memory rows are emptied: its output equals a fresh stream's."""
    from infinite_former.models import InfiniteFormerLM, ModelConfig

    torch.manual_seed(0)
    texts = {"a": "x" * 37, "b": "y" * 90, "c": "z" * 50}
    tok = bytes_tokenizer()
    corpus = tokenize_documents(load_documents(write_corpus(tmp_path / "c", texts)), tok)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, d_inner=64, dropout=0.0, mem_len=8,
        memory_type=memory_type, cmem_len=4, ltm=dict(num_basis=8, num_samples=8, num_bins=8),
    )  # fmt: skip
    model = InfiniteFormerLM(cfg).eval()
    lanes = DocumentLanes(corpus, batch_size=2, seg_len=8, eos_id=tok.eos_id, loop=False)
    state, checked = None, 0
    with torch.no_grad():
        for seg in lanes:
            if state is not None:
                state = state.reset(seg.reset)
                restarted = seg.reset & (seg.doc_ids >= 0)
                if bool(restarted.any()):
                    lane = int(restarted.nonzero()[0])
                    assert int(state.mem_valid[lane]) == 0
                    if cfg.uses_ltm:
                        assert all(int(s.length[lane]) == 0 for s in state.ltm)
                        assert all(float(s.coeffs[lane].abs().sum()) == 0.0 for s in state.ltm)
                    other = 1 - lane
                    if not bool(seg.reset[other]):
                        assert int(state.mem_valid[other]) > 0  # the other lane keeps its memory
                    out, state = model(seg.tokens, state)
                    fresh, _ = model(seg.tokens[lane : lane + 1], None)
                    torch.testing.assert_close(out.logits[lane], fresh.logits[0], atol=1e-5, rtol=1e-5)
                    checked += 1
                    continue
            out, state = model(seg.tokens, state)
    assert checked >= 1  # doc "c" starts mid-stream in the lane where "a" ended


def test_load_hf_documents_with_a_local_builder(tmp_path):
    """The real datasets.load_dataset path, offline: the 'text' builder on local files, one row per document."""
    from infinite_former.data.text import load_hf_documents

    (tmp_path / "a.txt").write_text("first document\nsecond document\n\nthird\n")
    docs = load_hf_documents("text", "train", data_files=str(tmp_path / "a.txt"))
    assert [d.text for d in docs] == ["first document", "second document", "third"]  # empty line dropped
