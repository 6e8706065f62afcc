"""A thinking model served by a chat-only provider (vLLM, llama-server: `reasoning_content` or
`reasoning` in its chat answer) answers a Responses request with a `reasoning` output item before
the message, as the API gives one; the translation used to drop the thinking (only its token count
was carried). Answers and events are validated against the spec and read by the official SDK."""

import openai
import pytest

from conftest import Gateway, remote_only_config
from test_responses_api import EVENT_SCHEMAS, raw_events

EVENTS = {**EVENT_SCHEMAS, "response.reasoning_text.delta": "ResponseReasoningTextDeltaEvent",
          "response.reasoning_text.done": "ResponseReasoningTextDoneEvent"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake_provider):
    gw = Gateway(tmp_path_factory.mktemp("reasoning-items"), remote_only_config(fake_provider), policy='[[rule]]\nname = "all"\nroute = "fake/reasoner"\n')
    yield gw
    gw.stop()


def test_the_thinking_is_a_reasoning_item_before_the_message(gateway, schemas):
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    raw = client.responses.with_raw_response.create(model="auto", input="think")
    schemas.validate("Response", raw.http_response.json())
    response = raw.parse()
    assert [item.type for item in response.output] == ["reasoning", "message"]
    thinking = response.output[0].content[0]
    assert thinking.type == "reasoning_text" and len(thinking.text) == 400 and "step by step" in thinking.text
    assert response.output_text == "done", "the answer alone is the output text"


def test_streamed_thinking_comes_as_reasoning_text_events_in_its_own_item(gateway, schemas):
    events = raw_events(gateway, {"model": "auto", "input": "think"})
    for name, data in events:
        schemas.validate(EVENTS[name], data)
    names = [n for n, _ in events]
    deltas = [d["delta"] for n, d in events if n == "response.reasoning_text.delta"]
    assert len(deltas) == 4, "the fake streams its thinking in four chunks"
    done = next(d for n, d in events if n == "response.reasoning_text.done")
    assert done["text"] == "".join(deltas) and len(done["text"]) == 400
    # The reasoning item is finished before the message is added.
    first_message = next(i for i, (n, d) in enumerate(events) if n == "response.output_item.added" and d["item"]["type"] == "message")
    assert names.index("response.reasoning_text.done") < first_message
    final = events[-1][1]["response"]
    assert names[-1] == "response.completed"
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["content"] == [{"type": "reasoning_text", "text": done["text"]}]


def test_the_sdk_stream_helper_reads_a_response_with_reasoning(gateway):
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    with client.responses.stream(model="auto", input="think") as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "done"
