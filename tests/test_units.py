"Corpus, tokenizer, schedule and checkpoint-source units."
import math
import numpy as np
import pytest
from saetrack.checkpoints import PythiaHub, hook_layer, open_source
from saetrack.config import LMConfig, checkpoint_steps, get_preset
from saetrack.core import SaetrackError
from saetrack.corpus import load_corpus
from saetrack.lm import batch_at, lr_at
from saetrack.tokenizer import encode_docs, train_tokenizer, unigram_cross_entropy

@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "texts"; d.mkdir()
    for i in range(40):
        (d / f"doc{i:02d}.txt").write_text(f"Document {i}. " + "The cat sat on the mat. " * (i + 1))
    (d / "binary.bin").write_bytes(b"\xff\xfe\x00\x81" * 10)
    return d

def test_directory_corpus_and_doc_split(text_dir):
    c = load_corpus(str(text_dir))
    assert len(c.docs) == 40 and c.ids == sorted(c.ids)                  # binary skipped, fixed order
    tr, ev = c.split(0.2, seed=0)
    assert len(tr) + len(ev) == 40 and 2 <= len(ev) <= 16
    assert set(tr).isdisjoint(ev)
    assert c.split(0.2, seed=0) == (tr, ev) and c.split(0.2, seed=1) != (tr, ev)
    assert load_corpus(str(text_dir / "doc1*.txt")).ids == [f"doc1{i}.txt#0" for i in range(10)]   # relative to the glob's folder; < 20 files: cut into paragraphs

def test_single_file_is_cut_into_documents(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("\n\n".join(f"Paragraph {i}: " + "words " * 100 for i in range(50)))
    c = load_corpus(str(f))
    assert len(c.docs) > 10 and "Paragraph 0" in c.docs[0]

def test_hf_dataset_offline_is_a_clear_error(monkeypatch):
    with pytest.raises(SaetrackError, match="offline"):
        load_corpus("someone/not-a-dataset")

def test_content_hash_changes_with_content(text_dir):
    h = load_corpus(str(text_dir)).sha256
    (text_dir / "doc00.txt").write_text("changed")
    assert load_corpus(str(text_dir)).sha256 != h

def test_tokenizer_roundtrip_and_unigram(text_dir):
    docs = load_corpus(str(text_dir)).docs
    tok = train_tokenizer(docs, 300)
    s = encode_docs(tok, docs)
    assert s.dtype == np.uint16 and (s == 0).sum() == len(docs)
    assert tok.decode(tok(docs[3])["input_ids"]) == docs[3]
    # a uniform stream has unigram cross-entropy log(V)
    u = np.repeat(np.arange(300), 50)
    assert abs(unigram_cross_entropy(u, u, 300) - math.log(300)) < 1e-3

def test_schedule():
    cfg = LMConfig(steps=1000, lr=1.0)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)   # 1% warm-up = 10 steps
    assert lr_at(999, cfg) == pytest.approx(0.1, abs=1e-3)
    assert checkpoint_steps(1000, every=250) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 750, 1000]
    t = np.arange(10_000, dtype=np.uint16)
    assert np.array_equal(batch_at(t, 5, cfg), batch_at(t, 5, cfg)) and not np.array_equal(batch_at(t, 5, cfg), batch_at(t, 6, cfg))

def test_presets():
    assert get_preset("tiny").lm.d_model == 128 and get_preset("tiny", steps=7).lm.steps == 7
    with pytest.raises(SaetrackError): get_preset("tiny", d_model=130)            # not divisible by n_heads
    with pytest.raises(SaetrackError, match="unknown LM setting"): get_preset("tiny", width=3)

def test_pythia_source_offline_parts():
    p = open_source("pythia-410m-deduped")
    assert isinstance(p, PythiaHub) and p.repo == "EleutherAI/pythia-410m-deduped"
    assert len(p.steps) == 154 and p.steps[:11] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] and p.steps[-1] == 143000
    assert p.check_step(143000) == "step143000"
    with pytest.raises(SaetrackError, match="not a pythia-410m-deduped checkpoint"): p.check_step(1500)
    with pytest.raises(SaetrackError, match="neither"): open_source("gpt2")

def test_pythia_hub_loads_through_transformerlens(monkeypatch):
    "Offline: the Hub path calls TransformerLens' from_pretrained with the step and the default processing, and says so when the Hub is unreachable."
    from transformer_lens import HookedTransformer
    from saetrack.checkpoints import TL_PROCESSING
    p = open_source("pythia-410m-deduped")
    with pytest.raises(SaetrackError, match="Hub cannot be reached.*--checkpoints DIR"): p.hooked(512)   # HF_HUB_OFFLINE=1 here
    with pytest.raises(SaetrackError, match="Hub cannot be reached"): p.tokenizer()
    calls = []
    class Fake:
        def eval(self): return self
    monkeypatch.setattr(HookedTransformer, "from_pretrained", lambda *a, **k: calls.append((a, k)) or Fake())
    p.hooked(512, device="cpu")
    assert calls == [(("EleutherAI/pythia-410m-deduped",), dict(checkpoint_value=512, device="cpu", **TL_PROCESSING))]
    assert p.sae_metadata(512) == dict(model_name="EleutherAI/pythia-410m-deduped", model_class_name="HookedTransformer",
                                       model_from_pretrained_kwargs=dict(checkpoint_value=512))
    with pytest.raises(SaetrackError, match="not a pythia-410m-deduped checkpoint"): p.hooked(1500)

def test_hook_layer():
    assert hook_layer("blocks.3.hook_resid_pre", 4) == 3
    with pytest.raises(SaetrackError, match="outside"): hook_layer("blocks.4.hook_resid_pre", 4)


def test_cached_json_is_the_one_currency_check(tmp_path):
    "A JSON cache is reused only when it parses and carries the key asked for; missing, stale or damaged is None."
    from saetrack.core import atomic_write_json, cached_json
    p = tmp_path / "c.json"
    assert cached_json(p, "k1") is None
    atomic_write_json(p, dict(key="k1", x=3))
    assert cached_json(p, "k1") == dict(key="k1", x=3) and cached_json(p, "k2") is None
    p.write_text('{"key": "k1", "x"')                      # cut short
    assert cached_json(p, "k1") is None
    p.write_text('["k1"]')                                  # not an object
    assert cached_json(p, "k1") is None
