"""The client matrix: popular OpenAI clients other than the Python SDK against the real binary.

* the official `openai` Node SDK (tests/node/client_matrix.mjs, installed by `make node-deps`),
  one node run per group of checks;
* LangChain's `ChatOpenAI` and `OpenAIEmbeddings` (langchain-openai, on the pinned openai SDK);
* curl: the examples in README.md's "Client compatibility" section, run as written.

The Rust client (async-openai) is in tests/tests/openai_rust_client.rs and async_openai_matrix.rs.
All use the session gateway: the real local model (`auto`, `local-small`), the local embedding
model (`local-embed`) and the fake provider (`fake/...`)."""

import base64
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import time

import pytest
from pydantic import BaseModel, Field

from conftest import ROOT

NODE_DIR = ROOT / "tests" / "node"
NODE_SCRIPT = NODE_DIR / "client_matrix.mjs"
EMBED_DIMENSIONS = 384


def run_node(gateway, group, timeout=240):
    node = shutil.which("node")
    assert node, "node is not installed (Node 20+ is needed for the client matrix)"
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "tests/node/node_modules is missing: run `make node-deps`"
    started = time.monotonic()
    out = subprocess.run([node, str(NODE_SCRIPT), gateway.v1, f"--only={group}"], capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    output = out.stdout + out.stderr
    assert out.returncode == 0, f"client_matrix.mjs --only={group} exited {out.returncode}:\n{output}"
    assert " 0 failed" in out.stdout, output
    print(f"{output}({time.monotonic() - started:.1f} s)")
    return output


@pytest.mark.parametrize("group", ["chat", "responses", "completions", "structured", "embeddings"])
def test_openai_node_sdk(gateway, group):
    output = run_node(gateway, group)
    assert output.startswith("openai-node "), output


def test_node_script_refuses_bad_arguments():
    env = {k: v for k, v in os.environ.items() if k != "SWITCHYARD_BASE_URL"}
    out = subprocess.run(["node", str(NODE_SCRIPT)], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL, env=env)
    assert out.returncode == 2 and "usage:" in out.stderr, out.stdout + out.stderr


# --- LangChain -------------------------------------------------------------------------------------

@pytest.fixture
def chat(gateway):
    from langchain_openai import ChatOpenAI
    return ChatOpenAI(base_url=gateway.v1, api_key="unused", model="auto", temperature=0, max_tokens=24, max_retries=0)


def test_langchain_invoke(chat):
    msg = chat.invoke("Say hi")
    assert isinstance(msg.content, str) and msg.content.strip()
    assert msg.response_metadata["finish_reason"] in ("stop", "length")
    assert msg.usage_metadata["output_tokens"] >= 1
    assert msg.usage_metadata["total_tokens"] == msg.usage_metadata["input_tokens"] + msg.usage_metadata["output_tokens"]


def test_langchain_stream_gives_the_invoke_text_in_chunks(chat):
    whole = chat.invoke("Name three colours.").content
    chunks = list(chat.stream("Name three colours."))
    text = "".join(c.content for c in chunks)
    assert len([c for c in chunks if c.content]) >= 2
    assert text == whole, "temperature 0: the same text streamed and not"
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.response_metadata.get("finish_reason") in ("stop", "length")


class Person(BaseModel):
    name: str = Field(description="The person's first name", max_length=24)
    age: int = Field(description="Age in years")
    likes_tea: bool


def test_langchain_structured_output_json_schema_on_the_local_model(gateway):
    from langchain_openai import ChatOpenAI
    llm = ChatOpenAI(base_url=gateway.v1, api_key="unused", model="auto", temperature=0, max_tokens=200, max_retries=0)
    structured = llm.with_structured_output(Person, method="json_schema", include_raw=True)
    out = structured.invoke("Describe a person who likes tea.")
    assert out["parsing_error"] is None, out
    person = out["parsed"]
    assert isinstance(person, Person) and person.name
    # The request carried the schema as strict json_schema and the answer was that JSON.
    assert json.loads(out["raw"].content) == person.model_dump()


def test_langchain_bind_tools_gets_a_tool_call(gateway):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"Sunny in {city}"

    llm = ChatOpenAI(base_url=gateway.v1, api_key="unused", model="fake/tool", max_retries=0).bind_tools([get_weather])
    msg = llm.invoke("Weather in Paris?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    assert msg.tool_calls[0]["args"] == {"city": "Paris"}
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    # Streamed, the argument pieces join into the same call.
    streamed = None
    for chunk in llm.stream("Weather in Paris?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [("get_weather", {"city": "Paris"})]
    # The tool's result goes back as a tool message: the fake then answers in text.
    result = get_weather.invoke(msg.tool_calls[0])
    assert isinstance(result, ToolMessage)
    follow = llm.invoke([HumanMessage("Weather in Paris?"), msg, result])
    assert not follow.tool_calls and follow.content


def test_langchain_embeddings(gateway):
    from langchain_openai import OpenAIEmbeddings
    emb = OpenAIEmbeddings(model="local-embed", base_url=gateway.v1, api_key="unused", check_embedding_ctx_length=False,
                           max_retries=0)
    docs = emb.embed_documents(["The quick brown fox jumps over the lazy dog.", "A gateway routes requests to models."])
    assert len(docs) == 2
    for v in docs:
        assert len(v) == EMBED_DIMENSIONS and all(isinstance(x, float) for x in v)
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-3)
    query = emb.embed_query("The quick brown fox jumps over the lazy dog.")
    assert len(query) == EMBED_DIMENSIONS
    # The same text embeds the same way alone and in a batch.
    assert max(abs(a - b) for a, b in zip(query, docs[0])) < 1e-4


# --- curl: README.md's examples ------------------------------------------------------------------

def readme_curl_examples():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Client compatibility", 1)[1].split("\n## ", 1)[0]
    return [line for block in re.findall(r"```sh\n(.*?)```", section, re.S) for line in block.splitlines()
            if line.startswith("curl ")]


def test_readme_lists_curl_examples_for_each_new_endpoint():
    paths = {re.search(r"localhost:8080(/\S+)", c).group(1) for c in readme_curl_examples()}
    assert paths >= {"/v1/responses", "/v1/completions", "/v1/embeddings"}, paths


@pytest.mark.parametrize("command", readme_curl_examples(),
                         ids=lambda c: re.search(r"localhost:8080/v1/(\S+)", c).group(1) + ("-stream" if "stream" in c else ""))
def test_readme_curl_example(gateway, command):
    args = shlex.split(command)
    assert args[0] == "curl" and not any(a in args for a in (";", "|", "&&")), command
    url = next(a for a in args if a.startswith("localhost:8080/"))
    args[args.index(url)] = url.replace("localhost:8080", gateway.base.removeprefix("http://"), 1)
    out = subprocess.run([args[0], "--fail-with-body", "--max-time", "120", *args[1:]], capture_output=True,
                         text=True, timeout=150, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{command}\nexit {out.returncode}\n{out.stdout}{out.stderr}"
    body = json.loads(out.stdout) if '"stream":true' not in command else None
    if body is None:
        events = [line[len("data: "):] for line in out.stdout.splitlines() if line.startswith("data: ")]
        kinds = [json.loads(e)["type"] for e in events]
        assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete"), kinds
        assert "response.output_text.delta" in kinds
    elif "/v1/responses" in url:
        # Sampled (no temperature 0 in the example): the answer may run into max_output_tokens.
        assert body["object"] == "response" and body["status"] in ("completed", "incomplete"), body
        assert body["output"][0]["content"][0]["text"], body
    elif "/v1/completions" in url:
        assert body["object"] == "text_completion" and body["choices"][0]["text"], body
    elif "/v1/embeddings" in url:
        assert body["object"] == "list" and body["model"] == "local-embed" and body["data"], body
        for d in body["data"]:
            e = d["embedding"]
            assert (len(e) == EMBED_DIMENSIONS if isinstance(e, list) else len(base64.b64decode(e)) == 4 * EMBED_DIMENSIONS)
    else:
        raise AssertionError(f"no check for {url}")
