"""Prompt ids and VQ codes against outputs recorded from the upstream implementation.

tests/fixtures/upstream_prompts.json holds what upstream's own pipeline (its item processors,
ImageTokenizer and VocabTranslation, run in fp32 on CPU) produced for the seed-0 tiny tokenizer and
VQGAN that `make-tiny-checkpoint` writes and for the frames of conftest.py: two SO100 cases and a
four-image LIBERO case, with non-square PNG and JPEG inputs that exercise the resize.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rynn_edge.runtime.model.vqgan import VQGAN
from rynn_edge.runtime.tokens import prompt
from rynn_edge.runtime.tokens.images import load_image, to_model_input
from rynn_edge.runtime.tokens.stats import load_stats
from rynn_edge.runtime.tokens.text import TextTokenizer
from rynn_edge.runtime.tokens.vocab import ImageVocab

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "upstream_prompts.json").read_text())


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["preset"])
def test_prompt_ids_and_vq_codes_equal_upstream(case, so100_bundle, frames) -> None:
    vq_dir = so100_bundle["vq"]  # the seed-0 tokenizer and VQGAN the fixture was recorded on
    with torch.no_grad():
        pixels = to_model_input([load_image(frames[i]) for i in case["frames"]], 256)
        codes = VQGAN.from_dir(vq_dir).encode(pixels).numpy()
    assert codes.tolist() == case["vq_codes"]
    ids = prompt.vla_prompt(
        TextTokenizer.from_dir(so100_bundle["tokenizer"]),
        case["instruction"],
        np.asarray(case["state"]),
        list(codes),
        load_stats(case["preset"]),
        ImageVocab.from_file(vq_dir / "text_tokenizer.json"),
    )
    assert ids == case["prompt_ids"]
