"""Small models trained on real English (weights cached under CARAMBA_CACHE after the first
run), the corpus's held-out text, and one intra-op thread: these models are tiny, and on a
shared machine a second OpenMP thread costs far more in synchronisation than it computes."""

import pytest
import torch

from caramba.infer import tiny


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def english():
    return tiny.english()


@pytest.fixture(scope="session")
def val_tokens(english):
    return tiny.validation_tokens(english, 40_000)


@pytest.fixture(scope="session")
def standard_model(english):
    return tiny.tiny_model(tiny.STANDARD, data=english)


@pytest.fixture(scope="session")
def dba_model(english):
    return tiny.tiny_model(tiny.DBA, data=english)
