"""Fixtures the cache and inference tests share: small models trained on real English (weights
cached under CARAMBA_CACHE after the first run) and the corpus's held-out text, built only where
a test asks for them. Those two folders' modules run on one intra-op thread: the models are
tiny, and on a shared machine a second OpenMP thread costs far more in synchronisation than it
computes."""

import pytest
from intra_op import torch_threads

from caramba.infer import tiny

ONE_THREAD_FOLDERS = {"cache", "infer"}


@pytest.fixture(scope="module", autouse=True)
def tiny_models_on_one_thread(request):
    if request.path.parent.name not in ONE_THREAD_FOLDERS:
        yield
        return
    with torch_threads(1):
        yield


@pytest.fixture
def one_thread():
    """For a test of tiny models or thousands of tiny ops, where a second intra-op thread only
    adds synchronisation (and a busy machine's stalls)."""
    with torch_threads(1):
        yield


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
