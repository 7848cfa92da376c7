"""WordPiece tokenizers: trained on the corpus' own alt-texts, as the paper does (100k vocab there),
or the vocab that ships with pretrained text weights (``text.tokenizer: pretrained``).

Saved in Hugging Face's format (``tokenizer.json`` + config) so ``AutoTokenizer.from_pretrained``
loads it offline and it travels with the model artifact.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from components.config import TextTowerConfig

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(texts: Iterable[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.model = _canonical_ids(tokenizer.get_vocab())
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=max_length,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _canonical_ids(vocab: dict[str, int]) -> models.WordPiece:
    """The trained vocabulary with ids in a fixed order: special tokens, then tokens sorted.

    The trainer numbers tokens in hash-map order, which Rust randomises per process, so the same
    vocabulary got different ids on different runs. WordPiece matching depends only on the set of
    tokens, so renumbering changes no tokenization. (The set itself can still differ in a few
    tie-broken merges between fits; see ``components.train.trainer.fit_tokenizer``.)
    """
    ordered = SPECIAL_TOKENS + sorted(token for token in vocab if token not in SPECIAL_TOKENS)
    return models.WordPiece({token: i for i, token in enumerate(ordered)}, unk_token="[UNK]")


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> None:
    tokenizer.save_pretrained(str(directory))


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(directory))


def load_pretrained_tokenizer(name_or_path: str, max_length: int | None = None) -> PreTrainedTokenizerFast:
    """The fast tokenizer shipped with pretrained text weights (registered package or local folder), offline.

    Loaded with ``AutoTokenizer`` from the folder's ``tokenizer.json``: in transformers 5 building
    ``BertTokenizerFast(vocab_file=...)`` silently maps every word to [UNK], so that is checked here too.
    """
    from components.model.pretrained import resolve_text_folder

    folder = resolve_text_folder(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ValueError(f"{folder} has no fast tokenizer (tokenizer.json); it cannot travel with the artifact")
    if max_length:
        tokenizer.model_max_length = max_length
    probe = tokenizer("a photo of a dog", add_special_tokens=False)["input_ids"]
    if not probe or all(i == tokenizer.unk_token_id for i in probe):
        raise ValueError(f"the tokenizer in {folder} maps ordinary English words to {tokenizer.unk_token}")
    return tokenizer


def build_tokenizer(cfg: TextTowerConfig, texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """The tokenizer a text-tower config asks for: trained on ``texts``, or the pretrained weights' own."""
    if cfg.tokenizer == "pretrained":
        return load_pretrained_tokenizer(cfg.pretrained, cfg.max_length)
    return train_wordpiece(texts, cfg.tokenizer_vocab_size, cfg.max_length)
