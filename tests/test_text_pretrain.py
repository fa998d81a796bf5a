import torch

from m3bind.models.builtin import BuiltinModelConfig, build_builtin_model, builtin_config
from m3bind.train.text_pretrain import mask_tokens, mlm_pretrain

CORPUS = ["moderate cardiomegaly with left ventricular hypertrophy", "no pleural effusion", "normal sinus rhythm",
          "small left pleural effusion", "lvh consistent with cardiomegaly", "lungs are clear"] * 4


def _model():
    cfg = builtin_config("ecg")
    small = BuiltinModelConfig.model_validate({**cfg.model_dump(), "text_hidden_size": 32, "text_layers": 1,
                                               "text_heads": 2, "text_intermediate_size": 64, "vocab_size": 300})
    return build_builtin_model("ecg", CORPUS, small, seed=0)


def test_masking_spares_special_and_padding_tokens():
    model = _model()
    tokens = model.tokenize(["no pleural effusion", "lungs are clear and the heart is normal"])
    masked, labels = mask_tokens(tokens["input_ids"], tokens["attention_mask"], model.tokenizer,
                                 torch.Generator().manual_seed(0), probability=1.0)
    tok = model.tokenizer
    keep = (tokens["input_ids"] == tok.cls_token_id) | (tokens["input_ids"] == tok.sep_token_id) | \
           (tokens["attention_mask"] == 0)
    assert torch.equal(masked[keep], tokens["input_ids"][keep])
    assert (masked[~keep] == tok.mask_token_id).all()
    assert torch.equal(labels[~keep], tokens["input_ids"][~keep]) and (labels[keep] == -100).all()


def test_mlm_pretraining_lowers_the_loss_and_is_deterministic():
    a = mlm_pretrain(_model(), CORPUS, steps=40, batch_size=8, lr=3e-3, seed=1)
    b = mlm_pretrain(_model(), CORPUS, steps=40, batch_size=8, lr=3e-3, seed=1)
    assert a == b
    assert sum(a[-5:]) / 5 < 0.6 * sum(a[:5]) / 5
