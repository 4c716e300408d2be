"""Tokenizers as Hugging Face tokenizer folders: train a byte-level BPE or load a local one.

A folder holds ``tokenizer.json`` (the ``tokenizers`` model) and ``tokenizer_config.json``
(``tokenizer_class: PreTrainedTokenizerFast``, the end-of-document token), so the same folder
serves ``transformers.AutoTokenizer`` after conversion and the data/training tools here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List

EOD = "<|endoftext|>"


class TextTokenizer:
    """A ``tokenizers`` tokenizer with an end-of-document id (Megatron's ``eod``)."""

    def __init__(self, folder):
        from tokenizers import Tokenizer

        folder = Path(folder)
        model = folder / "tokenizer.json"
        if not model.exists():
            raise ValueError(f"invalid tokenizer folder {folder}: no tokenizer.json in it")
        self.folder = folder
        self._tok = Tokenizer.from_file(str(model))
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        eos = config.get("eos_token", EOD)
        eos = eos["content"] if isinstance(eos, dict) else eos
        self.eod = self._tok.token_to_id(eos)
        if self.eod is None:
            raise ValueError(f"invalid tokenizer folder {folder}: end-of-document token {eos!r} not in the vocabulary")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> List[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: List[int]) -> str:
        return self._tok.decode(ids)


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir) -> TextTokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) and save it as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = dict(
        tokenizer_class="PreTrainedTokenizerFast", bos_token=EOD, eos_token=EOD, unk_token=EOD,
        model_max_length=1_000_000, clean_up_tokenization_spaces=False,
    )
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(dict(bos_token=EOD, eos_token=EOD, unk_token=EOD)))
    return TextTokenizer(out)
