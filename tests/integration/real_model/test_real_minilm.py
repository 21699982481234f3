"""The embedded MiniLM on SST-2: the quality claims of `%probe`, checked for real."""
import pytest

from tests.helpers import sst2_sample
from llm_magics import api

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def sst2():
    return sst2_sample(4000)


def test_minilm_probe_reaches_078_on_sst2(sst2):
    train, test = sst2
    result = api.probe(model="minilm", data=train, test=test)
    assert result.metrics["test_accuracy"] >= 0.78, result.metrics
    assert result.label_names == ["0", "1"]
    assert result.predict(["a gorgeous, deeply moving film", "a tedious, lifeless mess"]) == ["1", "0"]


def test_minilm_layer_all_gives_per_layer_accuracy_and_a_plot(sst2):
    train, test = sst2
    result = api.probe(model="minilm", data=train, test=test, layer="all")
    table = result.tables["accuracy by layer"]
    assert table["layer"].tolist() == list(range(7))
    assert table["test_accuracy"].max() >= 0.78
    assert result.figures["accuracy by layer"].startswith(b"\x89PNG")
