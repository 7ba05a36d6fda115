"""The evaluation fields of the sample schema: ``answer`` and ``choices``, and answer matching."""
import json

import pytest

from anyalign.data.schema import answer_in, normalize_answer, parse_record
from modalities import BadSample


def rec(**extra) -> bytes:
    return json.dumps({"prompt": "<image>\nWhat is it?", "chosen": "It shows a cat.", "rejected": "It shows a dog.",
                       **extra}).encode()


def test_answer_and_choices_are_parsed_and_the_right_choice_found():
    out = parse_record(rec(answer="a cat", choices=["It shows a dog.", "It shows a cat.", "It shows a cup."]))
    assert out["answer"] == "a cat" and out["correct_choice"] == 1
    assert parse_record(rec(answer="Cat", choices=["cat", "a catalog"]))["correct_choice"] == 0  # equal wins
    assert "answer" not in parse_record(rec())


@pytest.mark.parametrize("extra, message", [
    ({"answer": 3}, "'answer' must be a non-empty string"),
    ({"answer": "the"}, "'answer' must be a non-empty string"),  # nothing left after normalisation
    ({"choices": ["a", "b"]}, "'choices' needs an 'answer'"),
    ({"answer": "cat", "choices": ["cat"]}, "at least two"),
    ({"answer": "cat", "choices": ["a cat sat", "the cat ran"]}, r"matches 2"),
    ({"answer": "cow", "choices": ["a cat", "a dog"]}, r"matches 0"),
])
def test_bad_evaluation_fields_make_the_sample_bad(extra, message):
    with pytest.raises(BadSample, match=message):
        parse_record(rec(**extra))


def test_answer_matching_is_by_whole_words():
    assert normalize_answer("The Cat, sat!") == ["cat", "sat"]
    assert answer_in("a tray of coins", "The video shows a tray of coins.")
    assert not answer_in("cat", "A catalog of coins.") and not answer_in("coins tray", "a tray of coins")
