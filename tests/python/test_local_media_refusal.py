"""A request with an image sent to the local engine (with the shipped default policy, where media
counts as unscannable PII and stays home) is refused with a message that names the part and what
to do: it used to say only "the local model accepts text content only", naming the whole content."""

import httpx
import pytest

from conftest import ROOT, Gateway, gateway_config


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("media"), gateway_config(), policy=(ROOT / "policies" / "default.toml").read_text())
    yield gw
    gw.stop()


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
])
def test_media_for_the_local_engine_is_refused_naming_the_part_and_the_way_out(gateway, part):
    r = httpx.post(f"{gateway.v1}/chat/completions", timeout=30, json={"model": "auto", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}]})
    assert r.status_code == 400, r.text
    assert r.headers["x-switchyard-rule"] == "private-stays-home", "media is unscannable: it stays on this host"
    error = r.json()["error"]
    assert error["param"] == "messages[1].content[1]" and error["type"] == "invalid_request_error"
    assert f'"{part["type"]}" part' in error["message"] and "fallback" in error["message"], error
