"""The two paper recipes build the paper's models: embedding sizes and per-tower parameter counts.

Built on CPU from the shipped YAML recipes (config only, random init, nothing downloaded), one model
at a time (L2 + BERT-large is ~0.9B parameters, ~3.5 GB in fp32) and run once at 64 px, batch 1.
"""

import gc

import pytest
import torch

from components.config import PROJECT_ROOT, load_config
from components.model.align import AlignModel

pytestmark = pytest.mark.slow

# Published totals of the reference architectures (timm's exact counts; the papers round them).
EFFICIENTNET_B7 = 66_347_960  # Tan & Le 2019: "66M"
EFFICIENTNET_L2 = 480_309_308  # Xie et al. 2020 (Noisy Student): "480M"
BERT_BASE = 109_482_240  # HF bert-base-uncased, the BERT paper's "110M"
BERT_LARGE = 335_141_888  # HF bert-large-uncased, the BERT paper's "340M"
BERT_VOCAB, BERT_POSITIONS = 30_522, 512  # what those totals were counted with


def efficientnet_without_head(total: int, last_block: int, head: int, classes: int = 1000) -> int:
    """ALIGN pools the last block, so the 1x1 head conv (last_block -> head, no bias), its BN
    (scale + shift) and the ImageNet classifier are not part of the tower."""
    return total - (last_block * head + 2 * head) - (head * classes + classes)


def align_bert(total: int, hidden: int, vocab: int, positions: int, embed_dim: int) -> int:
    """The text tower differs from the published BERT in four places:
    - no tanh pooler (ALIGN takes [CLS] of the last hidden state): minus hidden x hidden + hidden;
    - the word-embedding table has the recipe's vocab, the paper's 100k WordPiece trained on its own
      alt-texts, not BERT's 30,522 uncased vocab: plus (100,000 - 30,522) x hidden
      (+53.4M for BERT-base, +71.1M for BERT-large);
    - position embeddings only for max_length (64 tokens, the paper's limit), not 512;
    - one linear projection (with bias) from hidden to the image embedding size.
    """
    pooler = hidden * hidden + hidden
    return total - pooler + (vocab - BERT_VOCAB) * hidden + (positions - BERT_POSITIONS) * hidden + (
        hidden * embed_dim + embed_dim
    )


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("recipe", "embed_dim", "image_params", "bert_total", "hidden"),
    [
        ("paper-b7-bert-base.yaml", 640, efficientnet_without_head(EFFICIENTNET_B7, 640, 2560), BERT_BASE, 768),
        ("paper-l2-bert-large.yaml", 1376, efficientnet_without_head(EFFICIENTNET_L2, 1376, 5504), BERT_LARGE, 1024),
    ],
)
def test_paper_recipe_builds_the_papers_model(recipe, embed_dim, image_params, bert_total, hidden):
    cfg = load_config(PROJECT_ROOT / "configs" / recipe).model
    assert not cfg.image_pretrained and not cfg.text.pretrained  # random init: nothing to download
    # The trainer sets vocab_size to the trained tokenizer's size: the recipe's 100k WordPiece.
    cfg.text.vocab_size = cfg.text.tokenizer_vocab_size
    torch.manual_seed(0)
    model = AlignModel(cfg).eval()
    try:
        assert model.embed_dim == embed_dim
        assert count(model.image_tower) == image_params
        text_params = align_bert(bert_total, hidden, cfg.text.tokenizer_vocab_size, cfg.text.max_length, embed_dim)
        assert count(model.text_tower) == text_params
        assert count(model) == image_params + text_params + 1  # + the learnable temperature
        with torch.inference_mode():
            image = model.encode_image(torch.randn(1, 3, 64, 64))
            ids = torch.tensor([[2, 10, 11, 12, 3]])
            text = model.encode_text(ids, torch.ones_like(ids))
        assert image.shape == text.shape == (1, embed_dim)
        assert torch.allclose(image.norm(dim=-1), torch.ones(1), atol=1e-5)
    finally:
        del model
        gc.collect()
