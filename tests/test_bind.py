"""Binding: AMB quantities, the loss terms by hand, LoRA/heads, a few real steps."""

import pytest
import torch

from m3bind.config import BindConfig
from m3bind.data.datasets import StudySet
from m3bind.models.binding import BoundModality, merge_lora, parameter_report
from m3bind.models.builtin import BuiltinModelConfig, build_builtin_model, builtin_config
from m3bind.train.balance import modality_balance
from m3bind.train.bind import bind_models, cross_encoder_text_recall, text_agreement, text_space
from m3bind.train.losses import text_alignment_loss
from m3bind.train.sampling import sample_batch, sample_texts, step_generator


def test_amb_probabilities_lr_scales_and_weights_by_hand():
    sizes = {"xray": 400, "ecg": 100, "ct": 25}
    b = modality_balance(sizes, beta=0.5, normalize=False)
    raw = {"xray": 1 / 20, "ecg": 1 / 10, "ct": 1 / 5}          # (1/|D|)^0.5
    total = sum(raw.values())
    assert b.probabilities == pytest.approx({m: v / total for m, v in raw.items()})
    assert b.lr_scales == pytest.approx(raw)                   # 1/sqrt(|D|)
    assert b.loss_weights == pytest.approx(raw)
    normalised = modality_balance(sizes, beta=0.5)
    mean = total / 3
    assert normalised.loss_weights == pytest.approx({m: v / mean for m, v in raw.items()})
    assert sum(normalised.lr_scales.values()) / 3 == pytest.approx(1.0)
    # beta = 1: inversely proportional to size
    assert modality_balance(sizes, beta=1.0).probabilities["ct"] == pytest.approx((1 / 25) / (1 / 400 + 1 / 100 + 1 / 25))
    off = modality_balance(sizes, sampling=False, lr_scaling=False, loss_weights=False)
    assert list(off.probabilities.values()) == pytest.approx([1 / 3] * 3)
    assert set(off.lr_scales.values()) == {1.0} and set(off.loss_weights.values()) == {1.0}
    with pytest.raises(ValueError):
        modality_balance({"a": 0})


def test_text_alignment_loss_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    w = {"a": 0.5, "b": 1.0, "c": 2.0}
    mse = lambda x, y: ((x - y) ** 2).mean().item()   # F.mse_loss: mean over texts and dimensions
    assert mse(a, b) == pytest.approx(0.5) and mse(a, c) == pytest.approx(0.5) and mse(b, c) == pytest.approx(1.0)
    expected = 0.5 * 1.0 * 0.5 + 0.5 * 2.0 * 0.5 + 1.0 * 2.0 * 1.0   # each unordered pair once
    assert text_alignment_loss({"a": a, "b": b, "c": c}, w).item() == pytest.approx(expected)


def test_text_sampling_follows_probabilities():
    corpora = {"x": ["x"] * 10, "y": ["y"] * 10}
    texts = sample_texts(corpora, {"x": 0.8, "y": 0.2}, 4000, torch.Generator().manual_seed(0))
    assert texts.count("x") / 4000 == pytest.approx(0.8, abs=0.03)


def _tiny(modality, texts, seed):
    cfg = builtin_config(modality)
    small = BuiltinModelConfig.model_validate({**cfg.model_dump(), "width": 8, "depth": 2, "text_hidden_size": 32,
                                               "text_layers": 1, "text_heads": 2, "text_intermediate_size": 64,
                                               "native_dim": 16 if modality == "xray" else 24, "vocab_size": 200})
    return build_builtin_model(modality, texts, small, seed=seed)


CORPUS = {
    "xray": ["heart size is enlarged cardiomegaly", "no pleural effusion lungs clear", "small left pleural effusion",
             "normal chest radiograph", "moderate cardiomegaly with effusion", "lungs are clear no acute findings"],
    "ecg": ["sinus rhythm normal ecg", "left ventricular hypertrophy consistent with cardiomegaly",
            "atrial fibrillation", "low qrs voltage pericardial effusion", "normal sinus rhythm", "sinus bradycardia"],
}


def _bound(shared_dim=32):
    bound = {}
    for i, (m, texts) in enumerate(CORPUS.items()):
        module = BoundModality(_tiny(m, texts, seed=i), shared_dim, seed=i)
        module.prepare_for_binding(r=4, alpha=4, dropout=0.0)
        bound[m] = module
    return bound


def _studies(modality, n=12):
    shape = (1, 64, 64) if modality == "xray" else (12, 1000)
    g = torch.Generator().manual_seed(1)
    texts = [CORPUS[modality][i % 6] for i in range(n)]
    return StudySet(images=torch.randn(n, *shape, generator=g), texts=texts, labels=[[]] * n,
                         patient_ids=[str(i) for i in range(n)], rows=list(range(1, n + 1)))


def test_only_lora_and_heads_train_and_head_preserves_cosines():
    bound = _bound()
    for m, module in bound.items():
        names = [n for n, p in module.named_parameters() if p.requires_grad]
        assert names and all("lora_" in n or n.startswith("head.") for n in names)
        report = parameter_report({m: module})[m]
        assert 0 < report["trainable"] < 0.5 * report["total"]
        module.eval()
        native = module.model.encode_texts(CORPUS[m])
        shared = module.encode_texts(CORPUS[m])
        assert torch.allclose(native @ native.T, shared @ shared.T, atol=1e-5)


def test_binding_steps_raise_text_agreement_and_keep_clip_loss_low(tmp_path):
    torch.manual_seed(0)
    bound = _bound()
    train = {m: _studies(m) for m in bound}
    heldout = CORPUS["xray"][:3] + CORPUS["ecg"][:3]
    start = text_agreement(bound, heldout)
    cfg = BindConfig(steps=40, lr=5e-3, warmup_steps=2, image_batch_size=6, text_batch_size=8, checkpoint_every=40)
    result = bind_models(bound, train, cfg, tmp_path, heldout_texts=heldout, tensorboard=False)
    end = text_agreement(bound, heldout)
    assert abs(start) < 0.4
    assert end > start + 0.3, (start, end)
    first, last = result.history[0], result.history[-1]
    assert last["text_mse"] < 0.5 * first["text_mse"]
    assert result.history[-1]["text_agreement"] == pytest.approx(end, abs=1e-5)


def test_text_space_matches_agreement_and_recall_computed_by_hand():
    torch.manual_seed(0)
    bound = _bound()
    # A repeated text counts twice in the agreement and once in the recall.
    texts = CORPUS["xray"][:3] + CORPUS["ecg"][:2] + CORPUS["xray"][:1]
    distinct = list(dict.fromkeys(texts))
    for module in bound.values():
        module.train()
    both = text_space(bound, texts)
    assert all(module.training for module in bound.values())   # modes are restored
    with torch.no_grad():
        for module in bound.values():
            module.eval()
        full = {m: b.encode_texts(texts) for m, b in bound.items()}
        once = {m: b.encode_texts(distinct) for m, b in bound.items()}
    pairs = [(a, b) for a in bound for b in bound if a != b]
    cosine = sum(float((full[a] * full[b]).sum(-1).mean()) for a, b in pairs) / len(pairs)
    recall = sum(float(((once[a] @ once[b].T).argmax(1) == torch.arange(len(distinct))).float().mean())
                 for a, b in pairs) / len(pairs)
    assert both["text_agreement"] == pytest.approx(cosine, abs=1e-5)
    assert both["text_recall"] == pytest.approx(recall, abs=1e-6)
    assert text_agreement(bound, texts) == pytest.approx(cosine, abs=1e-5)
    assert cross_encoder_text_recall(bound, texts) == pytest.approx(recall, abs=1e-6)


def test_bind_loss_is_the_weighted_sum_of_its_parts(tmp_path):
    bound = _bound()
    train = {m: _studies(m) for m in bound}
    cfg = BindConfig(steps=1, lr=1e-9, image_batch_size=6, text_batch_size=4, lambda_text=10.0)
    result = bind_models(bound, train, cfg, tmp_path, heldout_texts=["x"], tensorboard=False)
    parts = result.history[0]
    sizes = {m: len(train[m]) for m in bound}
    w = modality_balance(sizes).loss_weights  # equal sizes -> 1
    assert parts["clip"] == pytest.approx(sum(w[m] * parts[f"clip/{m}"] for m in bound), rel=1e-5)
    assert parts["loss"] == pytest.approx(parts["clip"] + 10.0 * parts["text_mse"], rel=1e-5)


def test_each_tower_encodes_its_reports_and_the_alignment_texts_in_one_pass(tmp_path):
    """One text pass per modality per step (half the kernel launches of two): the CLIP term reads
    the first rows (this modality's sampled reports) and eq. 5's alignment the rest (the shared
    alignment texts), checked against the loss recomputed from the recorded embeddings."""
    bound = _bound()
    train = {m: _studies(m) for m in bound}
    seen = {m: [] for m in bound}
    for m, module in bound.items():
        def recording(texts, original=module.encode_texts, log=seen[m]):
            embeddings = original(texts)
            log.append((list(texts), embeddings.detach().clone()))
            return embeddings
        module.encode_texts = recording
    cfg = BindConfig(steps=1, lr=1e-9, image_batch_size=6, text_batch_size=4, lambda_text=10.0)
    result = bind_models(bound, train, cfg, tmp_path, heldout_texts=["x"], tensorboard=False)
    names = list(bound)
    sizes = {m: len(train[m]) for m in names}
    balance = modality_balance(sizes)
    aligned = sample_texts({m: train[m].texts for m in names}, balance.probabilities, 4, step_generator(0, 0, 0))
    for stream, m in enumerate(names, start=1):
        index = sample_batch(sizes[m], 6, step_generator(0, 0, stream))
        texts, _ = seen[m][0]
        assert texts == [train[m].texts[i] for i in index.tolist()] + aligned
    expected = text_alignment_loss({m: seen[m][0][1][6:] for m in names}, balance.loss_weights)
    assert result.history[0]["text_mse"] == pytest.approx(float(expected), rel=1e-5)
    # the rows are not interchangeable: the report rows give another alignment value (close on
    # these tiny towers, but well outside the float tolerance the match above holds to)
    wrong = text_alignment_loss({m: seen[m][0][1][:4] for m in names}, balance.loss_weights)
    assert float(wrong) != pytest.approx(float(expected), rel=1e-5)


def test_lambda_zero_binding_skips_the_alignment_text_passes(tmp_path):
    """The lambda = 0 control encodes only each modality's own CLIP batch of reports per step:
    the alignment texts would weigh nothing. Its loss is the weighted CLIP sum alone."""
    bound = _bound()
    train = {m: _studies(m) for m in bound}
    calls = {m: [] for m in bound}
    for m, module in bound.items():
        original = module.encode_texts
        module.encode_texts = (lambda o, log: lambda texts: (log.append(len(texts)), o(texts))[1])(original, calls[m])
    cfg = BindConfig(steps=2, lr=1e-9, image_batch_size=6, text_batch_size=4, lambda_text=0.0, checkpoint_every=10)
    result = bind_models(bound, train, cfg, tmp_path, heldout_texts=["x"], tensorboard=False)
    for m in bound:
        steps = calls[m][:2]   # then the end-of-run agreement checks
        assert steps == [6, 6], calls[m]
    parts = result.history[0]
    assert "text_mse" not in parts and parts["loss"] == pytest.approx(parts["clip"], rel=1e-6)


def test_bind_resume_equals_uninterrupted_run(tmp_path):
    cfg = BindConfig(steps=6, lr=5e-3, warmup_steps=1, image_batch_size=6, text_batch_size=4, checkpoint_every=3)
    torch.manual_seed(0)
    full = _bound()
    bind_models(full, {m: _studies(m) for m in full}, cfg, tmp_path / "a", heldout_texts=["x"], tensorboard=False)
    torch.manual_seed(0)
    killed = _bound()
    bind_models(killed, {m: _studies(m) for m in killed}, cfg, tmp_path / "b", heldout_texts=["x"],
                stop_after=4, tensorboard=False)
    torch.manual_seed(0)
    resumed = _bound()
    bind_models(resumed, {m: _studies(m) for m in resumed}, cfg, tmp_path / "b", heldout_texts=["x"],
                resume=True, tensorboard=False)
    for m in full:
        a, b = full[m].state_dict(), resumed[m].state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_merge_lora_gives_the_same_embeddings_with_plain_keys():
    bound = _bound()
    module = bound["xray"]
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_()
    module.eval()
    before = module.encode_texts(CORPUS["xray"])
    merge_lora(module.model.text_tower)
    after = module.encode_texts(CORPUS["xray"])
    assert torch.allclose(before, after, atol=1e-5)
    assert not any("lora" in k for k in module.model.state_dict())


def test_label_aware_binding_uses_soft_targets(tmp_path):
    from m3bind.train.losses import same_label_targets, soft_clip_loss

    bound = _bound()
    train = {m: _studies(m) for m in bound}
    for m in train:  # two label groups per modality
        train[m].labels = [["a"] if i % 2 else [] for i in range(len(train[m]))]
    cfg = BindConfig(steps=1, lr=1e-9, image_batch_size=6, text_batch_size=4, label_aware=True)
    result = bind_models(bound, train, cfg, tmp_path, heldout_texts=["x"], tensorboard=False)
    # Recompute the first step's xray term by hand with the same batch.
    index = sample_batch(12, 6, step_generator(0, 0, 1))
    module = bound["xray"]
    module.eval()
    with torch.no_grad():
        image = module.head(module.model.encode_image(train["xray"].images[index]))
        text = module.encode_texts([train["xray"].texts[i] for i in index.tolist()])
        targets = same_label_targets([train["xray"].labels[i] for i in index.tolist()])
        expected = soft_clip_loss(image, text, module.logit_scale(), targets)
    assert result.history[0]["clip/xray"] == pytest.approx(expected.item(), rel=1e-4)
