"""Small models trained on real English (weights cached under CARAMBA_CACHE after the first
run) and the corpus's held-out text."""

import pytest
import torch

from caramba.infer import tiny


@pytest.fixture(scope="session")
def english():
    return tiny.english()


@pytest.fixture(scope="session")
def val_tokens(english):
    return tiny.validation_tokens(english, 40_000)


@pytest.fixture(scope="session")
def standard_model(english):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return tiny.tiny_model(tiny.STANDARD, data=english)


@pytest.fixture(scope="session")
def dba_model(english):
    return tiny.tiny_model(tiny.DBA, data=english)
