"""`/v1/embeddings` through the official openai SDK: the local MiniLM model run in-process
(batched inputs, float and base64, `dimensions`, paraphrases closer than unrelated pairs),
passthrough to a provider, and privacy: tagged input never reaches the (recording) fake."""

import base64
import json
import struct

import httpx
import openai
import pytest

from conftest import Gateway, accounting_record, fake_provider_section, fake_requests, gateway_config, new_virtual_key


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def test_local_embeddings_match_the_spec_and_are_normalised(gateway, client, schemas):
    # The SDK asks for base64 (and decodes it); the spec's schema describes float vectors.
    wire = httpx.post(f"{gateway.v1}/embeddings", json={"model": "local-embed", "input": ["first text", "second"]}, timeout=30)
    schemas.validate("CreateEmbeddingResponse", wire.json())
    raw = client.embeddings.with_raw_response.create(model="local-embed", input=["first text", "second text", "third"])
    r = raw.parse()
    assert raw.headers["x-switchyard-target"] == "local/local-embed" and raw.headers["x-switchyard-tier"] == "local"
    assert [d.index for d in r.data] == [0, 1, 2]
    for d in r.data:
        assert len(d.embedding) == 384
        assert abs(sum(x * x for x in d.embedding) - 1.0) < 1e-3
    assert r.model == "local-embed"
    assert r.usage.prompt_tokens == r.usage.total_tokens >= 6
    record = accounting_record(gateway, raw.headers["x-request-id"])
    assert record["target"] == "local/local-embed" and int(record["prompt_tokens"]) == r.usage.prompt_tokens


def test_auto_uses_the_local_model_and_batches_equal_single_inputs(client):
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today.", "How do I bake bread?"]
    batch = client.embeddings.create(model="auto", input=texts).data
    for text, item in zip(texts, batch):
        alone = client.embeddings.create(model="auto", input=text).data[0].embedding
        assert max(abs(a - b) for a, b in zip(alone, item.embedding)) < 1e-3


def test_paraphrases_are_closer_than_unrelated_pairs(client):
    pairs = [
        ("How do I reset my password?", "I forgot my password, how can I change it?", "The tide comes in twice a day."),
        ("The weather is lovely today.", "It is a beautiful sunny day.", "Quarterly revenue grew by ten percent."),
        ("A man is playing the guitar.", "Someone strums a guitar.", "The recipe needs two eggs."),
        ("Where is the train station?", "How do I get to the railway station?", "Photosynthesis happens in leaves."),
    ]
    for anchor, paraphrase, unrelated in pairs:
        a, p, u = (d.embedding for d in client.embeddings.create(model="local-embed", input=[anchor, paraphrase, unrelated]).data)
        assert cosine(a, p) > cosine(a, u) + 0.2, (anchor, cosine(a, p), cosine(a, u))


def test_base64_encoding_decodes_to_the_float_vector(gateway):
    body = {"model": "local-embed", "input": "base64 please"}
    floats = httpx.post(f"{gateway.v1}/embeddings", json=body, timeout=30).json()["data"][0]["embedding"]
    b64 = httpx.post(f"{gateway.v1}/embeddings", json={**body, "encoding_format": "base64"}, timeout=30).json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(floats)}f", base64.b64decode(b64))
    assert max(abs(a - b) for a, b in zip(decoded, floats)) < 1e-6


def test_dimensions_only_as_the_model_has_them(client):
    assert len(client.embeddings.create(model="local-embed", input="x", dimensions=384).data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="local-embed", input="x", dimensions=64)
    assert e.value.body["param"] == "dimensions"


def test_provider_embeddings_pass_through(gateway, client, fake_provider, schemas):
    wire = httpx.post(f"{gateway.v1}/embeddings", json={"model": "fake/embed", "input": ["alpha", "beta"], "dimensions": 8}, timeout=30)
    schemas.validate("CreateEmbeddingResponse", wire.json())
    assert wire.headers["x-switchyard-target"] == "fake/embed" and wire.json()["model"] == "fake/embed"
    assert fake_requests(fake_provider)[-1] == {"model": "embed", "input": ["alpha", "beta"], "dimensions": 8}
    r = client.embeddings.create(model="fake/embed", input=["alpha", "beta"])
    assert len(r.data) == 2 and r.data[0].embedding == wire.json()["data"][0]["embedding"]
    assert fake_requests(fake_provider)[-1]["encoding_format"] == "base64"


def test_an_answer_without_usage_shows_the_estimate_it_is_billed_for(gateway, schemas):
    r = httpx.post(f"{gateway.v1}/embeddings", json={"model": "fake/bare", "input": ["alpha beta gamma delta"]}, timeout=30)
    assert r.status_code == 200, r.text
    schemas.validate("CreateEmbeddingResponse", r.json())
    record = accounting_record(gateway, r.headers["x-request-id"])
    assert record["cost_estimated"] == "true" and int(record["prompt_tokens"]) > 0, record
    assert r.json()["usage"] == {"prompt_tokens": int(record["prompt_tokens"]), "total_tokens": int(record["prompt_tokens"])}


@pytest.mark.parametrize("headers,text", [
    ({}, "Contact jane.doe@example.com about the invoice"),
    ({"x-switchyard-tags": "confidential"}, "quarterly plan"),
    # A JSON record indexed for retrieval, as `json.dumps` writes it: the IBAN's no-break spaces
    # are `\u00a0` escapes, which the embedding model reads as spaces.
    ({}, json.dumps({"customer": 42, "iban": "FR76\u00a03000\u00a06000\u00a00112\u00a03456\u00a07890\u00a0189"})),
])
def test_privacy_tagged_input_never_reaches_an_untrusted_remote_model(gateway, fake_provider, headers, text):
    before = len(fake_requests(fake_provider))
    r = httpx.post(f"{gateway.v1}/embeddings", json={"model": "fake/embed", "input": [text]}, headers=headers, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "policy_violation"
    # PII in another field the provider would see (`user`) counts too.
    r = httpx.post(f"{gateway.v1}/embeddings", json={"model": "fake/embed", "input": ["quarterly plan"], "user": "u@example.com"},
                   timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "policy_violation"
    assert len(fake_requests(fake_provider)) == before
    # The local model embeds it.
    local = httpx.post(f"{gateway.v1}/embeddings", json={"model": "auto", "input": [text]}, headers=headers, timeout=30)
    assert local.status_code == 200 and len(local.json()["data"][0]["embedding"]) == 384
    assert len(fake_requests(fake_provider)) == before


def test_token_id_input_cannot_be_scanned_so_it_stays_home(gateway, fake_provider):
    before = len(fake_requests(fake_provider))
    r = httpx.post(f"{gateway.v1}/embeddings", json={"model": "fake/embed", "input": [[1, 2, 3]]}, timeout=30)
    assert r.status_code == 403 and "token-id input cannot be scanned" in r.json()["error"]["message"], r.text
    assert len(fake_requests(fake_provider)) == before


def test_a_trusted_provider_embeds_tagged_and_token_id_input(tmp_path, fake_provider):
    # As in chat, privacy-tagged input may go to a trusted provider (inside the residency); token
    # ids, which cannot be scanned, count as tagged (LangChain sends them by default).
    gw = Gateway(tmp_path, gateway_config(fake_provider_section(fake_provider, name="safe", trusted=True), embeddings=True))
    try:
        before = len(fake_requests(fake_provider))
        for extra, headers in [({"input": ["Contact jane.doe@example.com"]}, {}), ({"input": ["plan"]}, {"x-switchyard-tags": "confidential"}),
                               ({"input": [[1, 2, 3]]}, {})]:
            r = httpx.post(f"{gw.v1}/embeddings", json={"model": "safe/embed", **extra}, headers=headers, timeout=30)
            assert r.status_code == 200 and len(r.json()["data"]) == 1, r.text
        assert len(fake_requests(fake_provider)) == before + 3
    finally:
        gw.stop()


def test_token_ids_count_against_the_tenants_token_limit(tmp_path, fake_provider):
    # Each id is a token: 150 of them are over a 100-tokens-a-minute limit, 60 are within it.
    key, key_hash = new_virtual_key()
    tenant = f'[[tenants]]\nname = "ids"\nkeys = ["{key_hash}"]\nrate_limit = {{ tpm = 100 }}\n'
    config = f'[server]\nregion = "eu-west"\n\n{fake_provider_section(fake_provider, trusted=True)}\n{tenant}\n[policy]\nfile = "{{policy}}"\n'
    gw = Gateway(tmp_path, config, '[[rule]]\nname = "all"\nroute = "fake/echo"\n')
    try:
        headers = {"authorization": f"Bearer {key}"}
        over = httpx.post(f"{gw.v1}/embeddings", json={"model": "fake/embed", "input": [[7] * 90, [8] * 60]}, headers=headers, timeout=30)
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded", over.text
        within = httpx.post(f"{gw.v1}/embeddings", json={"model": "fake/embed", "input": [7] * 60}, headers=headers, timeout=30)
        assert within.status_code == 200, within.text
        assert within.headers["x-ratelimit-remaining-tokens"] == "40"
    finally:
        gw.stop()


@pytest.mark.parametrize("body,status,param", [
    ({"model": "local-embed"}, 400, "input"),
    ({"model": "local-embed", "input": []}, 400, "input"),
    ({"model": "local-embed", "input": ["ok", ""]}, 400, "input"),
    ({"model": "local-embed", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": "local-embed", "input": " ".join(["word"] * 2000)}, 400, "input"),
    ({"model": "nope", "input": "x"}, 404, "model"),
    ({"model": "local-embed", "input": "x", "user": {"id": 5}}, 400, "user"),
])
def test_bad_embedding_requests_get_openai_errors(gateway, body, status, param):
    r = httpx.post(f"{gateway.v1}/embeddings", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize("model", ["local-small", "local/local-small"])
def test_the_local_chat_model_is_named_as_not_an_embedding_model(gateway, model):
    # It used to be 404 "does not exist", though /v1/models lists it.
    r = httpx.post(f"{gateway.v1}/embeddings", json={"model": model, "input": "x"}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "model" and "not an embedding model" in error["message"], error


def test_models_list_the_embedding_model(client):
    assert "local-embed" in {m.id for m in client.models.list().data}


def test_embeddings_respect_the_tenants_residency_remote_and_local(tmp_path, fake_provider):
    from conftest import Gateway, fake_provider_section, gateway_config, new_virtual_key
    key, hashed = new_virtual_key()
    us_key, us_hashed = new_virtual_key()
    tenants = (f'[[tenants]]\nname = "eu-team"\nkeys = ["{hashed}"]\nresidency = ["eu"]\n\n'
               f'[[tenants]]\nname = "us-team"\nkeys = ["{us_hashed}"]\nresidency = ["us"]\n')
    policy = ('[[rule]]\nname = "us"\nwhen.tenant = ["us-team"]\nroute = "fake/echo"\n\n'
              '[[rule]]\nname = "default"\nroute = "local"\n')
    gw = Gateway(tmp_path, gateway_config(fake_provider_section(fake_provider, region="us-east") + "\n" + tenants, embeddings=True), policy)
    try:
        embed = lambda model, key: httpx.post(f"{gw.v1}/embeddings", json={"model": model, "input": "plain text"},  # noqa: E731
                                              headers={"authorization": f"Bearer {key}"}, timeout=30)
        before = len(fake_requests(fake_provider))
        r = embed("fake/embed", key)
        assert r.status_code == 403 and "residency" in r.json()["error"]["message"]
        assert len(fake_requests(fake_provider)) == before
        # The local model runs where the gateway does (eu-west): fine for eu, not for us.
        assert embed("local-embed", key).status_code == 200
        for model in ("local-embed", "auto"):
            r = embed(model, us_key)
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "policy_violation" and "eu-west" in r.json()["error"]["message"]
    finally:
        gw.stop()
