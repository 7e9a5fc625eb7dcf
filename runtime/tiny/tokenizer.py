"""A small synthetic Chameleon tokenizer for tests and the demo (no download needed).

It keeps the real special-id rules (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, 8192 ``IMGIMG*`` image
tokens at ids 4..8195, ``<eoss>``=8196, ``<racm3:break>``=8197, ``<reservedNNNNN>``=NNNNN+4) but assigns
image codes to ids through a seeded permutation, so code that assumes ``id = code + 4`` fails. The text part
is a byte-level BPE trained deterministically on a few robot instructions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from rynn_edge.runtime.tokens.vocab import IMAGE_END_ID, IMAGE_START_ID, IMAGE_TOKEN_PREFIX, N_IMAGE_CODES

FIRST_RESERVED = 8194  # <reserved08194> is id 8198, right after <racm3:break>
LAST_RESERVED = 16195
TEXT_ID_BASE = LAST_RESERVED + 5

_CORPUS = (
    "What action should the robot take to {}?",
    "Generate the image based on the current image and the action.",
    "Generate the next image based on the provided sequence of historical images and corresponding actions.",
    "Place the block inside the circle.",
    "Place the strawberries from the table into the cup.",
    "Pick up the holder and place it straight then pick up the pen and place it in the holder",
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "put both the alphabet soup and the tomato sauce in the basket",
    "open the top drawer and put the bowl inside",
    "turn on the stove and put the moka pot on it",
    "push the plate to the front of the stove",
    "put the cream cheese in the bowl",
    "move the red cube to the left of the green cube, then stack it",
    "Grab the screwdriver; hand it over (carefully!) and wait 2 seconds.",
)


def image_token_name(code: int) -> str:
    """Chameleon-style name: decimal digits written as letters A..J, plus one trailing character."""
    return IMAGE_TOKEN_PREFIX + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def _special_vocab(seed: int) -> dict[str, int]:
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    ids = 4 + np.random.default_rng(seed).permutation(N_IMAGE_CODES)
    vocab.update({image_token_name(code): int(ids[code]) for code in range(N_IMAGE_CODES)})
    vocab["<eoss>"] = IMAGE_END_ID
    vocab["<racm3:break>"] = IMAGE_START_ID
    vocab.update({f"<reserved{n:05d}>": n + 4 for n in range(FIRST_RESERVED, LAST_RESERVED + 1)})
    return vocab


def _train_text_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def build_tiny_tokenizer(seed: int = 0) -> tuple[Tokenizer, dict[str, int]]:
    """The synthetic tokenizer and its full name -> id map."""
    vocab = _special_vocab(seed)
    text_vocab, merges = _train_text_bpe()
    for piece, i in sorted(text_vocab.items(), key=lambda kv: kv[1]):
        vocab[piece] = TEXT_ID_BASE + i
    assert len(set(vocab.values())) == len(vocab) and max(vocab.values()) < 65536

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Like the released tokenizer, it would add BOS itself; upstream passes add_special_tokens=False.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    specials = [name for name, i in vocab.items() if name.startswith("<") and i < TEXT_ID_BASE]
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in specials])
    return tok, vocab


def _save_legacy(tok: Tokenizer, path: Path) -> None:
    """Save with merges as "a b" strings, the form older `tokenizers` (0.19, upstream's pin) can read."""
    data = json.loads(tok.to_str())
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    path.write_text(json.dumps(data, ensure_ascii=False))


def write_tiny_tokenizer(tokenizer_dir: str | Path, vq_dir: str | Path, *, seed: int = 0) -> dict[str, int]:
    """Write an HF tokenizer folder and Chameleon's ``text_tokenizer.json``; return the vocabulary map."""
    tokenizer_dir, vq_dir = Path(tokenizer_dir), Path(vq_dir)
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    vq_dir.mkdir(parents=True, exist_ok=True)
    tok, vocab = build_tiny_tokenizer(seed)
    _save_legacy(tok, tokenizer_dir / "tokenizer.json")
    # Meta's raw file has the same tokenizers-library layout; upstream reads only model.vocab from it.
    _save_legacy(tok, vq_dir / "text_tokenizer.json")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1000000000000000019884624838656,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tokenizer_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return vocab
