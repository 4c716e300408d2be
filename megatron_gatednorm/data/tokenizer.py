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

        from megatron_gatednorm.user_input import read_json

        folder = Path(folder)
        model = folder / "tokenizer.json"
        if not folder.is_dir():
            raise ValueError(f"invalid tokenizer folder {folder}: " + ("no such folder" if not folder.exists() else
                                                                       "it is a file; expected a folder"))
        if not model.exists():
            raise ValueError(f"invalid tokenizer folder {folder}: no tokenizer.json in it")
        self.folder = folder
        try:
            self._tok = Tokenizer.from_file(str(model))
        except Exception as e:  # noqa: BLE001  (tokenizers raises a bare Exception for a bad file)
            raise ValueError(f"invalid tokenizer folder {folder}: {model.name} cannot be read "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); it is corrupted or truncated") from None
        config_path = folder / "tokenizer_config.json"
        config = read_json(config_path, "tokenizer config") if config_path.exists() else {}
        if not isinstance(config, dict):
            raise ValueError(f"tokenizer config {config_path}: expected a JSON object")
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
