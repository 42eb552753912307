"""Follow-up resolution against the conversation history, and the engine's use of it in plan."""

from __future__ import annotations

import pytest

from retriever.conversation import (
    check_history,
    concatenate,
    content_words,
    is_follow_up,
    resolve,
    rewrite,
    salient_spans,
)
from retriever.errors import InvalidInputError
from retriever.query import Mode, Query, Turn


@pytest.mark.parametrize(("text", "spans"), [
    ("Tell me about The Opening of Misty Beethoven.", ["The Opening of Misty Beethoven"]),
    ("What do you know about Don Simpson?", ["Don Simpson"]),
    ("I have a question about American Institute of Physics.", ["American Institute of Physics"]),
    ('Who wrote "The Hobbit" in 1937?', ["The Hobbit", "1937"]),
    ("In 2002, what did Bank of America do in New York?", ["2002", "Bank of America", "New York"]),
    ("The album was released by Sony Music.", ["Sony Music"]),
    ("what film did don simpson produce", []),
])
def test_salient_spans(text: str, spans: list[str]) -> None:
    assert salient_spans(text) == spans


@pytest.mark.parametrize("question", ["What film did it produce?", "Where was she born?", "and their population?",
                                      "What about the sequel?", "Which of its albums sold best?",
                                      "Did that one win?", "What is that one's ethnicity?"])
def test_follow_ups_are_detected(question: str) -> None:
    assert is_follow_up(question)


@pytest.mark.parametrize("question", ["What film did Don Simpson produce?", "who was born in winnipeg?",
                                      "Itself is not a pronoun here: Italy's capital?", "The band Theory of a Deadman"])
def test_standalone_questions_are_not_follow_ups(question: str) -> None:
    assert not is_follow_up(question)


def test_follow_up_gets_the_previous_turns_entity() -> None:
    history = (Turn("Who directed Jackie Brown?", "Quentin Tarantino"), Turn("Tell me about Don Simpson."))
    resolution = resolve("What film did it produce?", history)
    assert resolution == resolve("What film did it produce?", list(history))
    assert resolution.follow_up and resolution.carried == ("Don Simpson",)
    assert resolution.text == "What film did it produce? Don Simpson"


def test_answers_are_not_carried() -> None:
    resolution = resolve("When was he born?", [Turn("Who directed Jackie Brown?", "Quentin Tarantino")])
    assert resolution.carried == ("Jackie Brown",)
    assert resolve("When was he born?", [Turn("who directed it?", "Quentin Tarantino")]).carried == ("directed",)


def test_turns_without_spans_are_skipped_and_lowercase_history_falls_back_to_content_words() -> None:
    history = [Turn("Tell me about Uta Barth."), Turn("ok, thanks")]
    assert resolve("where was she born?", history).carried == ("Uta Barth",)
    lowercase = resolve("what genre is it?", [Turn("what film did don simpson produce")])
    assert lowercase.carried == ("film", "don", "simpson", "produce")
    assert content_words("What do you know about ska?") == ["ska"]


def test_standalone_question_is_untouched() -> None:
    history = [Turn("Tell me about Don Simpson.")]
    for question in ("What film did Quentin Tarantino direct?", "who was born in winnipeg?"):
        assert resolve(question, history) == resolve(question, []) == (resolve(question, history))
        assert resolve(question, history).text == question and not resolve(question, history).follow_up


def test_span_already_in_the_question_is_not_carried_again() -> None:
    resolution = resolve("Did Don Simpson produce it alone?", [Turn("Tell me about Don Simpson.")])
    assert resolution.follow_up and resolution.carried == () and resolution.text == "Did Don Simpson produce it alone?"


def test_concatenate_joins_questions_and_answers_then_the_question() -> None:
    history = [Turn("Who directed Jackie Brown?", "Quentin Tarantino"), Turn("And Pulp Fiction?")]
    assert concatenate("when?", history) == "Who directed Jackie Brown? Quentin Tarantino And Pulp Fiction? when?"


def test_rewrite_is_none_without_history_or_follow_up() -> None:
    assert rewrite(Query("where was she born?")) is None
    assert rewrite(Query("where was Uta Barth born?", history=(Turn("Tell me about Uta Barth."),))) is None
    assert rewrite(Query("where was she born?", history=(Turn("Tell me about Uta Barth."),))) == \
        "where was she born? Uta Barth"


@pytest.mark.parametrize(("history", "message"), [
    ((Turn(" "),), "history[0].question: must not be empty"),
    ((Turn("a"), Turn("")), "history[1].question: must not be empty"),
    (tuple(Turn("q") for _ in range(4)), "history: 4 turns exceed the limit of 3 (TURNS_VAR)"),
    ((Turn("q", "a" * 11),), "history[0].answer: 11 characters exceed the limit of 10 (CHARS_VAR)"),
    (("a question",), "history[0]: expected a Turn(question, answer), got str"),
])
def test_check_history_names_the_turn_and_limit(history: tuple, message: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        check_history(history, max_turns=3, max_chars=10, settings=("TURNS_VAR", "CHARS_VAR"))
    assert message in str(err.value)


def test_plan_resolves_a_follow_up_and_search_reports_the_searched_text(encoder, tiny_index) -> None:
    from retriever.searcher import Searcher

    searcher = Searcher(tiny_index, encoder)
    history = (Turn("Tell me about Uta Barth."),)
    planned = searcher.plan(Query("where was she born?", k=3, history=history))
    assert planned.text == "where was she born? Uta Barth" and planned.query.text == "where was she born?"
    assert searcher.plan(Query("where was she born?", k=3)).searched is None
    followed, bare, full = searcher.search([Query("where was she born?", k=3, history=history),
                                            Query("where was she born?", k=3),
                                            Query("where was she born? Uta Barth", k=3)])
    assert followed.text == "where was she born? Uta Barth" and bare.text == "where was she born?"
    assert [h.unit_id for h in followed.hits] == [h.unit_id for h in full.hits]
    assert followed.hits[0].title == "Uta Barth" and bare.hits[0].title != "Uta Barth"
    with pytest.raises(InvalidInputError, match="history\\[0\\].question"):
        searcher.plan(Query("where?", history=(Turn(""),)))
    assert Mode.DENSE in searcher.modes
