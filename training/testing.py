"""Tiny random BERT checkpoints for tests and examples (no download, a few hundred KB)."""

from __future__ import annotations

import string
from pathlib import Path

_WORDS = """the of and to in a is that for it as was with be by on not he this are or his from at which
but have an they you were her she there been one all we their has would when if so no what can out up
about more other into some could them time these than first new two may only its do also after most
made over any many did very where just use well such because each how our both years those through
while during model data query document search index vector token score retrieval cell cells protein
gene genes cancer patients study results treatment disease effect risk human clinical increased
expression levels mice analysis associated found role high activity function response virus brain
blood tumor immune drug therapy dna rna age women men children health care test testing fast slow
red green blue cat dog fish bird tree water fire earth air light dark sun moon star city country""".split()


def tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[unused3]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.punctuation) + list(string.ascii_lowercase) + list(string.digits)
    subwords = ["##" + c for c in string.ascii_lowercase + string.digits] + ["##s", "##ed", "##ing", "##ly"]
    seen: list[str] = []
    for tok in specials + chars + subwords + _WORDS:
        if tok not in seen:
            seen.append(tok)
    return seen


def make_tiny_bert(path: str | Path, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """Save a randomly initialised BERT with an uncased WordPiece tokenizer to ``path``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(out)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(out)
    return out
